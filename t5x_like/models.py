"""The Transformer for every layout, and the Model that trains and scores it.

`Transformer` (Flax) assembles the shared layers of `layers.py` into:
  decoder_only     one causal stack over inputs+targets
  prefix_lm        one stack, bidirectional over the prefix, causal after it
  encoder_only     one bidirectional (or forward/backward mixed) stack, for MLM
  encoder_decoder  a bidirectional encoder over inputs and a causal decoder with
                   cross-attention over targets; `share_encoder_decoder` makes
                   the decoder reuse the encoder's layers (T5 Table 2 "shared").
The token embedding is shared by all stacks. Each stack has its own position
parameters (learned table or relative-bias table) and its own final norm.

`Model` is what the rest of the system handles: it maps seqio feature-converter
batches to the module's inputs (the only place that reads seqio's inverted
`decoder_causal_attention` name), initializes parameters, and computes the
unnormalized loss sums that the trainer normalizes.

Generation uses a key/value cache (flax collection 'cache'): `Transformer.prefill`
runs the encoder once and the decoder over the prompts (a prefix-LM's prompt
with its bidirectional prefix mask), `Transformer.decode_step` extends by one
token per row. `Model.prompts / prefill / decode_step` wrap them for
`decoding.py`, which owns the search (greedy, sampling, beam).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import flax.struct
import gin
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like import layers
from t5x_like import masks as mask_lib
from t5x_like import positions as position_lib
from t5x_like.config import TransformerConfig

Array = jnp.ndarray
PAD_ID = 0


def _default_positions(tokens: Array) -> Array:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


def _bias_positions(tokens: Array, positions: Array | None) -> Array:
    """Positions for relative/ALiBi biases: one shared [1, L] row when every
    example uses 0..L-1, so the [B, H, L, L] bias is built once, not per example."""
    return jnp.arange(tokens.shape[1])[None] if positions is None else positions


class Transformer(nn.Module):
    """All layouts in one module; `config.layout` chooses which stacks exist."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        use_rope = cfg.position == "rope"
        self.token_embed = layers.Embed(cfg.vocab_size, cfg.d_model, init_std=cfg.embedding_init_std, dtype=cfg.dtype,
                                        param_dtype=cfg.param_dtype, name="token_embed")
        if not cfg.tie_embeddings:
            self.logits_dense = layers.dense(cfg, cfg.vocab_size, ("embed", "vocab"), "logits_dense")
        self.dropout = nn.Dropout(cfg.dropout_rate)
        if cfg.has_encoder:
            self.encoder_layers = layers.layer_stack(cfg, cfg.num_encoder_layers, "encoder_layers", use_rope)
            self.encoder_norm = layers.make_norm(cfg, "encoder_norm")
            self.encoder_positions = self._position_module("encoder", "bidirectional")
        if cfg.has_decoder:
            if cfg.share_encoder_decoder:
                self.decoder_layers = self.encoder_layers
            else:
                self.decoder_layers = layers.layer_stack(cfg, cfg.num_decoder_layers, "decoder_layers", use_rope)
            self.decoder_norm = layers.make_norm(cfg, "decoder_norm")
            mode = "prefix" if cfg.layout == "prefix_lm" else "causal"
            self.decoder_positions = self._position_module("decoder", mode)

    def _position_module(self, stack: str, mode: str):
        cfg = self.config
        if cfg.position == "learned":
            return layers.Embed(cfg.max_length, cfg.d_model, axes=("abspos", "embed"), init_std=0.02,
                                dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=f"{stack}_position_embed")
        if cfg.position == "relative":
            return layers.RelativePositionBias(cfg, mode, name=f"{stack}_relpos_bias")
        return None

    # --- stacks -------------------------------------------------------------
    def encode(self, tokens: Array, segment_ids: Array | None = None,
               positions: Array | None = None) -> Array:
        """Bidirectional (or forward/backward mixed) stack over `tokens` [B, L]."""
        cfg = self.config
        bias_positions = _bias_positions(tokens, positions)
        positions = _default_positions(tokens) if positions is None else positions
        valid = tokens != PAD_ID
        base_mask = mask_lib.combine(
            mask_lib.padding_mask(valid, valid),
            None if segment_ids is None else mask_lib.segment_mask(segment_ids, segment_ids))
        length = tokens.shape[1]

        def layer_mask(layer_index: int) -> Array:
            if cfg.encoder_mask == "forward_backward_heads":
                return base_mask & mask_lib.forward_backward_heads_mask(length, cfg.num_heads)
            if cfg.encoder_mask == "forward_backward_layers":
                return base_mask & mask_lib.forward_backward_layer_mask(length, layer_index)
            return base_mask

        bias = self._position_bias(self.encoder_positions, bias_positions, None)
        x = self._embed(tokens, positions, self.encoder_positions)
        x = self._run_layers(self.encoder_layers, x, layer_mask, bias, positions)
        return self._finish_stack(x, self.encoder_norm)

    def decode(self, tokens: Array, valid: Array, prefix_positions: Array | None = None,
               encoded: Array | None = None, encoder_valid: Array | None = None,
               segment_ids: Array | None = None, positions: Array | None = None,
               encoder_segment_ids: Array | None = None, kv_cache: str | None = None,
               cache_length: int | None = None, logit_positions: Array | None = None) -> Array:
        """Causal (or prefix-LM) stack over `tokens` [B, L]; returns logits [B, L, V].

        valid: [B, L] real (non-padding) positions. prefix_positions: [B, L], 1
        inside a prefix-LM's bidirectional prefix (required for prefix_lm).
        encoded / encoder_valid: the encoder's output and its real positions.
        kv_cache="prefill" with cache_length: also store every layer's keys and
        values for generation (see `prefill`). logit_positions [B]: logits only
        at these positions, [B, 1, V].
        """
        cfg = self.config
        bias_positions = _bias_positions(tokens, positions)
        positions = _default_positions(tokens) if positions is None else positions
        if cfg.layout == "prefix_lm":
            if prefix_positions is None:
                raise ValueError("a prefix_lm model needs prefix positions: train it on a task with "
                                 "'inputs' and 'targets' (PrefixLMFeatureConverter)")
            structure = mask_lib.prefix_lm_mask(prefix_positions)
        else:
            structure = mask_lib.causal_mask(tokens.shape[1])
        mask = mask_lib.combine(
            structure, mask_lib.padding_mask(valid, valid),
            None if segment_ids is None else mask_lib.segment_mask(segment_ids, segment_ids))
        cross_mask = None
        if encoded is not None:
            cross_mask = mask_lib.combine(
                mask_lib.padding_mask(valid, encoder_valid),
                None if segment_ids is None else mask_lib.segment_mask(segment_ids, encoder_segment_ids))
        bias = self._position_bias(self.decoder_positions, bias_positions, prefix_positions)
        x = self._embed(tokens, positions, self.decoder_positions)
        x = self._run_layers(self.decoder_layers, x, lambda _: mask, bias, positions, encoded, cross_mask,
                             kv_cache, cache_length)
        hidden = self._finish_stack(x, self.decoder_norm)
        if logit_positions is not None:
            hidden = jnp.take_along_axis(hidden, logit_positions[:, None, None], axis=1)
        return self.logits(hidden)

    # --- generation with a key/value cache (driven by decoding.py) -------------
    def prefill(self, tokens: Array, lengths: Array, cache_length: int,
                encoder_tokens: Array | None = None) -> tuple[Array, Array | None]:
        """Runs the encoder once and the decoder over the prompts, filling the cache.

        tokens [B, P]: one prompt per row, left-aligned and right-padded after
        `lengths` [B] (>= 1). Prompts start with the BOS id 0, like shifted
        decoder inputs: for inputs "ab" / "c" and P = 3,
            tokens  = [[0, a, b], [0, c, 0]]   lengths = [3, 2]
        A prefix-LM attends bidirectionally within the prompt (its prefix); an
        encoder-decoder's prompt is usually just [0], its inputs encoder_tokens.
        Padding slots are overwritten by generated tokens (slot = position).
        Returns (logits [B, V] for the token after each prompt, encoded or None).
        """
        cfg = self.config
        valid = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
        encoded = encoder_valid = None
        if cfg.layout == "encoder_decoder":
            encoded = self.encode(encoder_tokens)
            encoder_valid = encoder_tokens != PAD_ID
        prefix = valid if cfg.layout == "prefix_lm" else None
        logits = self.decode(tokens, valid, prefix, encoded, encoder_valid, kv_cache="prefill",
                             cache_length=cache_length, logit_positions=lengths - 1)
        return logits[:, 0], encoded

    def decode_step(self, tokens: Array, positions: Array, cache_length: int,
                    encoded: Array | None = None, encoder_valid: Array | None = None) -> Array:
        """Feeds one token per row (`tokens` [B] at `positions` [B]); returns next-token logits [B, V].

        Attends over cache slots 0..position (earlier tokens, and the prompt);
        the query is never in a prefix-LM's prefix, so its relative buckets are
        the causal ones, exactly as in the training forward pass.
        """
        cfg = self.config
        tokens, positions = tokens[:, None], positions[:, None]
        key_positions = jnp.broadcast_to(jnp.arange(cache_length), (tokens.shape[0], cache_length))
        mask = (key_positions <= positions)[:, None, None, :]
        cross_mask = None if encoded is None else encoder_valid.astype(bool)[:, None, None, :]
        prefix = jnp.zeros_like(positions) if cfg.layout == "prefix_lm" else None
        bias = self._position_bias(self.decoder_positions, positions, prefix, key_positions)
        x = self._embed(tokens, positions, self.decoder_positions)
        x = self._run_layers(self.decoder_layers, x, lambda _: mask, bias, positions, encoded, cross_mask,
                             "step", cache_length)
        return self.logits(self._finish_stack(x, self.decoder_norm))[:, 0]

    def logits(self, hidden: Array) -> Array:
        cfg = self.config
        if cfg.tie_embeddings:
            if cfg.rescale_tied_logits:
                hidden = hidden * cfg.d_model ** -0.5
            out = self.token_embed.attend(hidden)
        else:
            out = self.logits_dense(hidden)
        return layers.constrain(out, ("activation_batch", "activation_length", "activation_vocab"))

    # --- pieces -------------------------------------------------------------
    def _embed(self, tokens, positions, position_module) -> Array:
        cfg = self.config
        x = self.token_embed(tokens)
        if cfg.position == "learned":
            x = x + position_module(positions)
        elif cfg.position == "sinusoidal":
            x = x + position_lib.sinusoidal_embedding(positions, cfg.d_model).astype(x.dtype)
        x = self.dropout(x, deterministic=not layers.is_training(self))
        return layers.constrain(x, layers.BATCH_LENGTH_EMBED)

    def _position_bias(self, position_module, positions, prefix_positions,
                       key_positions=None) -> Array | None:
        cfg = self.config
        key_positions = positions if key_positions is None else key_positions
        if cfg.position == "relative":
            return position_module(positions, key_positions, prefix_positions)
        if cfg.position == "alibi":
            return position_lib.alibi_bias(positions, key_positions, cfg.num_heads).astype(cfg.dtype)
        return None

    def _run_layers(self, stack, x, layer_mask, bias, positions, encoded=None, cross_mask=None,
                    kv_cache=None, cache_length=None):
        if self.config.scan_layers:
            x, _ = stack(x, layer_mask(0), bias, positions, encoded, cross_mask, kv_cache, cache_length)
            return x
        for i, block in enumerate(stack):
            x = block(x, layer_mask(i), bias, positions, encoded, cross_mask, kv_cache, cache_length)
        return x

    def _finish_stack(self, x, final_norm) -> Array:
        if self.config.norm_position == "pre":
            x = final_norm(x)
        return self.dropout(x, deterministic=not layers.is_training(self))

    # --- whole model ---------------------------------------------------------
    def __call__(self, encoder_input_tokens=None, decoder_input_tokens=None, decoder_valid=None,
                 prefix_positions=None, encoder_segment_ids=None, decoder_segment_ids=None,
                 encoder_positions=None, decoder_positions=None) -> Array:
        """Logits [B, L, V] over the decoder positions (encoder positions for encoder_only)."""
        cfg = self.config
        if cfg.layout == "encoder_only":
            return self.logits(self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions))
        encoded = encoder_valid = None
        if cfg.layout == "encoder_decoder":
            encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions)
            encoder_valid = encoder_input_tokens != PAD_ID
        return self.decode(decoder_input_tokens, decoder_valid, prefix_positions, encoded, encoder_valid,
                           decoder_segment_ids, decoder_positions, encoder_segment_ids)


@flax.struct.dataclass
class Prompts:
    """What generation starts from (see `Transformer.prefill` for the layout).

    tokens [B, P]: decoder-side prompts, left-aligned, right-padded, starting with 0.
    lengths [B]: real prompt tokens per row (>= 1).
    encoder_tokens [B, Le]: an encoder-decoder's inputs (None otherwise).
    """

    tokens: Array
    lengths: Array
    encoder_tokens: Array | None = None


@flax.struct.dataclass
class DecodingState:
    """Everything a decoding step needs besides params: the KV cache and the encoding.

    cache: the flax 'cache' collection (every self-attention layer's keys and
    values in `cache_length` slots; cross-attention's encoder keys/values).
    """

    cache: dict
    encoded: Array | None
    encoder_valid: Array | None
    cache_length: int = flax.struct.field(pytree_node=False)
    # Batch axis of the cache arrays: 1 when layers are scanned (layers come first).
    cache_batch_axis: int = flax.struct.field(pytree_node=False, default=0)

    def take_rows(self, rows: Array) -> "DecodingState":
        """The state of batch rows `rows` (repeat for beams, reorder after a beam step)."""
        take = lambda axis: (lambda x: jnp.take(x, rows, axis=axis))
        return self.replace(
            cache=jax.tree.map(take(self.cache_batch_axis), self.cache),
            encoded=None if self.encoded is None else take(0)(self.encoded),
            encoder_valid=None if self.encoder_valid is None else take(0)(self.encoder_valid))


@dataclasses.dataclass
class LossSums:
    """Unnormalized sums over target tokens; the trainer divides by weight_sum."""

    objective_sum: Array
    metrics: dict


@gin.configurable
class Model:
    """A layout's module plus its batch mapping, initialization and loss.

    Batches are seqio feature-converter outputs (see `feature_converter`).
    """

    def __init__(self, config: TransformerConfig):
        self.config = config
        self.module = Transformer(config)

    # --- data interface -------------------------------------------------------
    def feature_converter(self, task_has_inputs: bool, pack: bool):
        from t5x_like.data import feature_converters  # the data package owns converters
        return feature_converters.for_layout(self.config.layout, task_has_inputs, pack)

    def dummy_batch(self, batch_size: int, task_feature_lengths: dict[str, int]) -> dict[str, np.ndarray]:
        """Zeros (with one real token per row) shaped like a feature-converted batch."""
        layout = self.config.layout
        inputs_length = task_feature_lengths.get("inputs", 0)
        targets_length = task_feature_lengths["targets"]

        def tokens(length):
            array = np.zeros((batch_size, length), np.int32)
            array[:, 0] = 1
            return array

        if layout == "encoder_only":
            length = inputs_length or targets_length
            return {"encoder_input_tokens": tokens(length), "encoder_target_tokens": tokens(length),
                    "encoder_loss_weights": tokens(length)}
        if layout == "encoder_decoder":
            return {"encoder_input_tokens": tokens(inputs_length), "decoder_input_tokens": tokens(targets_length),
                    "decoder_target_tokens": tokens(targets_length), "decoder_loss_weights": tokens(targets_length)}
        length = inputs_length + targets_length
        batch = {"decoder_input_tokens": tokens(length), "decoder_target_tokens": tokens(length),
                 "decoder_loss_weights": tokens(length)}
        if inputs_length:
            batch["decoder_causal_attention"] = tokens(length)
        return batch

    def module_inputs(self, batch: dict) -> dict:
        """Feature-converter batch -> keyword arguments of `Transformer.__call__`."""
        if self.config.layout == "encoder_only":
            return {"encoder_input_tokens": batch["encoder_input_tokens"],
                    "encoder_segment_ids": batch.get("encoder_segment_ids"),
                    "encoder_positions": batch.get("encoder_positions")}
        inputs = {
            "decoder_input_tokens": batch["decoder_input_tokens"],
            # decoder inputs are shifted right and start with id 0, so real
            # positions are read off the targets.
            "decoder_valid": batch["decoder_target_tokens"] != PAD_ID,
            "decoder_segment_ids": batch.get("decoder_segment_ids"),
            "decoder_positions": batch.get("decoder_positions"),
        }
        if self.config.layout == "prefix_lm":
            # seqio's name is inverted: decoder_causal_attention == 1 marks the
            # *bidirectional* prefix. A decoder_only model ignores it (Su's
            # controlled comparison: only the mask differs).
            inputs["prefix_positions"] = batch.get("decoder_causal_attention")
        if self.config.layout == "encoder_decoder":
            inputs.update(encoder_input_tokens=batch["encoder_input_tokens"],
                          encoder_segment_ids=batch.get("encoder_segment_ids"),
                          encoder_positions=batch.get("encoder_positions"))
        return inputs

    def targets_and_weights(self, batch: dict) -> tuple[Array, Array]:
        prefix = "encoder" if self.config.layout == "encoder_only" else "decoder"
        targets = batch[f"{prefix}_target_tokens"]
        weights = batch.get(f"{prefix}_loss_weights")
        if weights is None:
            weights = targets != PAD_ID
        return targets, weights.astype(jnp.float32)

    # --- parameters and outputs ------------------------------------------------
    def init(self, rng: jax.Array, batch: dict) -> dict:
        """Flax variables {'params': ...} with boxed logical-axis metadata."""
        return self.module.init({"params": rng}, **self.module_inputs(batch))

    def logits(self, params, batch: dict, dropout_rng: jax.Array | None = None) -> Array:
        rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
        out = self.module.apply({"params": params}, **self.module_inputs(batch), rngs=rngs)
        return out.astype(jnp.float32)

    def loss_sums(self, params, batch: dict, dropout_rng: jax.Array | None = None, *,
                  z_loss: float = 0.0, label_smoothing: float = 0.0) -> tuple[Array, dict]:
        """(objective_sum, metrics): sums over weighted target tokens, not means.

        objective = cross-entropy (with label smoothing) + z_loss * log(Z)^2.
        metrics: loss_sum (plain cross-entropy), z_loss_sum, weight_sum, correct_sum.
        """
        logits = self.logits(params, batch, dropout_rng)
        targets, weights = self.targets_and_weights(batch)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        log_probs = logits - log_z[..., None]
        target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        cross_entropy = -target_log_prob
        if label_smoothing:
            smoothed = -jnp.mean(log_probs, axis=-1)
            objective = (1.0 - label_smoothing) * cross_entropy + label_smoothing * smoothed
        else:
            objective = cross_entropy
        z_term = z_loss * jnp.square(log_z)
        metrics = {
            "loss_sum": jnp.sum(cross_entropy * weights),
            "z_loss_sum": jnp.sum(z_term * weights),
            "weight_sum": jnp.sum(weights),
            "correct_sum": jnp.sum((jnp.argmax(logits, -1) == targets) * weights),
        }
        return jnp.sum((objective + z_term) * weights), metrics

    def score(self, params, batch: dict) -> Array:
        """Per-example sum of target-token log-likelihoods (weighted), [B]."""
        logits = self.logits(params, batch)
        targets, weights = self.targets_and_weights(batch)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        token_ll = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        return jnp.sum(token_ll * weights, axis=-1)

    # --- generation (the search itself is decoding.py's) ------------------------
    @functools.cached_property
    def decoding_module(self) -> Transformer:
        """The same module without rematerialization (same params; remat is for training)."""
        return Transformer(self.config.replace(remat_policy="none"))

    def prompts(self, batch: dict, prompt_length: int | None = None) -> Prompts:
        """Prompts from a feature-converted batch (host numpy).

        Decoder-only / prefix-LM: the prompt is the inputs part of the
        decoder inputs (BOS + inputs, where seqio's `decoder_causal_attention`
        is 1), or just BOS for a task without inputs. Encoder-decoder: BOS, and
        the encoder inputs. `prompt_length` fixes a decoder-side P (default:
        the longest prompt in the batch); a fixed P avoids recompiling per batch.
        """
        layout = self.config.layout
        if layout == "encoder_only":
            raise ValueError("an encoder_only model does not generate; use score() or logits()")
        if layout == "encoder_decoder":
            encoder_tokens = np.asarray(batch["encoder_input_tokens"])
            batch_size = encoder_tokens.shape[0]
            return Prompts(np.zeros((batch_size, 1), np.int32), np.ones((batch_size,), np.int32),
                           encoder_tokens)
        decoder_inputs = np.asarray(batch["decoder_input_tokens"])
        prefix = batch.get("decoder_causal_attention")
        if prefix is None:
            lengths = np.ones((decoder_inputs.shape[0],), np.int32)
        else:
            lengths = np.asarray(prefix).astype(np.int32).sum(axis=1)
        length = prompt_length or int(lengths.max())
        if length < lengths.max():
            raise ValueError(f"prompt_length={length} is shorter than the longest prompt ({lengths.max()})")
        tokens = np.zeros((decoder_inputs.shape[0], length), np.int32)
        width = min(length, decoder_inputs.shape[1])
        tokens[:, :width] = decoder_inputs[:, :width]
        tokens *= np.arange(length)[None, :] < lengths[:, None]
        return Prompts(tokens, lengths)

    def prefill(self, params, prompts: Prompts, cache_length: int) -> tuple[Array, DecodingState]:
        """(logits [B, V] for the first new token, state) with the KV cache filled."""
        cfg = self.config
        if cfg.position == "learned" and cache_length > cfg.max_length:
            raise ValueError(f"prompt + new tokens = {cache_length} positions exceed the learned "
                             f"position table (max_length={cfg.max_length})")
        (logits, encoded), variables = self.decoding_module.apply(
            {"params": params}, prompts.tokens, prompts.lengths, cache_length, prompts.encoder_tokens,
            method=Transformer.prefill, mutable=["cache"])
        encoder_valid = None if encoded is None else prompts.encoder_tokens != PAD_ID
        state = DecodingState(variables["cache"], encoded, encoder_valid, cache_length,
                              cache_batch_axis=1 if cfg.scan_layers else 0)
        return logits.astype(jnp.float32), state

    def decode_step(self, params, state: DecodingState, tokens: Array,
                    positions: Array) -> tuple[Array, DecodingState]:
        """Feeds `tokens` [B] at `positions` [B]: (next-token logits [B, V], updated state)."""
        logits, variables = self.decoding_module.apply(
            {"params": params, "cache": state.cache}, tokens, positions, state.cache_length,
            state.encoded, state.encoder_valid, method=Transformer.decode_step, mutable=["cache"])
        return logits.astype(jnp.float32), state.replace(cache=variables["cache"])

    def predict_batch(self, params, batch: dict, decode_config=None, rng: jax.Array | None = None,
                      prompt_length: int | None = None) -> np.ndarray:
        """Generated tokens [B, max_new_tokens] for a feature-converted batch (greedy by default)."""
        from t5x_like import decoding  # decoding imports this module
        result = decoding.generate(self, params, self.prompts(batch, prompt_length),
                                   decode_config or decoding.DecodeConfig(), rng)
        return np.asarray(result.tokens)
