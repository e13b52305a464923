"""Model: what the rest of the system handles — batches in, losses, scores and caches out.

`Model` wraps one `Transformer` (transformer.py) and maps seqio
feature-converter batches to its inputs: it is the one place that turns
seqio's inverted `decoder_causal_attention` (1 = bidirectional prefix) into
the module's `prefix_indicator`. It initializes parameters and
computes the unnormalized loss sums that the trainer normalizes, per-example
scores, and the prompts / prefill / decode_step that `inference/decoding.py`
drives. It knows nothing of seqio or TensorFlow: which feature converter
produces its batches is `data/feature_converters.for_layout`'s business.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.model import features
from t5x_like.model.config import TransformerConfig
from t5x_like.model.transformer import PAD_ID, Array, Transformer


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


class Model:
    """A layout's module plus its batch mapping, initialization and loss.

    Batches are seqio feature-converter outputs (`data.feature_converters.for_layout`).
    """

    def __init__(self, config: TransformerConfig):
        self.config = config
        self.module = Transformer(config)

    # --- data interface -------------------------------------------------------
    def dummy_batch(self, batch_size: int, task_feature_lengths: dict[str, int]) -> dict[str, np.ndarray]:
        """A batch shaped like a feature-converted one (the features `features.model_feature_lengths`
        names): zeros with one real token per row, and a prefix-LM's prefix features as its
        converter lays them out (`features.prefix_indicator`, `features.prefix_loss_weights`)."""
        lengths = features.model_feature_lengths(self.config.layout, task_feature_lengths)

        def tokens(length):
            array = np.zeros((batch_size, length), np.int32)
            array[:, 0] = 1
            return array
        batch = {name: tokens(length) for name, length in lengths.items()}
        if "decoder_causal_attention" in batch:
            length, inputs = lengths["decoder_causal_attention"], task_feature_lengths["inputs"]
            for name, row in (("decoder_causal_attention", features.prefix_indicator(length, inputs)),
                              ("decoder_loss_weights", features.prefix_loss_weights(length, inputs))):
                batch[name] = np.broadcast_to(row, (batch_size, length)).copy()
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
            # positions are read off the targets, unless a batch states them
            # (a vocabulary whose id 0 is a real token: an imported GPT-2's).
            "decoder_valid": batch["decoder_valid"] if "decoder_valid" in batch
            else batch["decoder_target_tokens"] != PAD_ID,
            "decoder_segment_ids": batch.get("decoder_segment_ids"),
            "decoder_positions": batch.get("decoder_positions"),
        }
        if self.config.layout == "prefix_lm":
            # seqio's name is inverted: decoder_causal_attention == 1 marks the
            # *bidirectional* prefix. A decoder_only model ignores it (Su's
            # controlled comparison: only the mask differs).
            inputs["prefix_indicator"] = batch.get("decoder_causal_attention")
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

    def abstract_params(self, sharding: jax.sharding.Sharding | None = None) -> dict:
        """The params tree `init` makes, as ShapeDtypeStructs (nothing computed), each placed by
        `sharding` (default: the first device). Parameter shapes do not depend on the lengths."""
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            _param_shapes(self.config))

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
        token_ll, _, weights = self.score_tokens(params, batch)
        return jnp.sum(token_ll * weights, axis=-1)

    def score_tokens(self, params, batch: dict) -> tuple[Array, Array, Array]:
        """Per target token: (log-likelihood, whether it is the argmax, loss weight), each [B, L]."""
        logits = self.logits(params, batch)
        targets, weights = self.targets_and_weights(batch)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        token_ll = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        return token_ll, jnp.argmax(logits, axis=-1) == targets, weights

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


@functools.lru_cache(maxsize=64)
def _param_shapes(config: TransformerConfig) -> dict:
    """The params tree of a model of `config`, as ShapeDtypeStructs (one trace per config)."""
    model = Model(config)
    lengths = {"targets": 4} if config.layout == "decoder_only" else {"inputs": 4, "targets": 4}
    batch = model.dummy_batch(1, lengths)
    return jax.eval_shape(lambda: flax.linen.unbox(model.init(jax.random.key(0), batch))["params"])
