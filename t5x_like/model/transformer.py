"""The Transformer module: every layout assembled from the shared layers.

`Transformer` (Flax) builds, from `layers.py`:
  decoder_only     one causal stack over inputs+targets
  prefix_lm        one stack, bidirectional over the prefix, causal after it
  encoder_only     one bidirectional (or forward/backward mixed) stack, for MLM
  encoder_decoder  a bidirectional encoder over inputs and a causal decoder with
                   cross-attention over targets; `share_encoder_decoder` makes
                   the decoder reuse the encoder's layers (T5 Table 2 "shared").
The token embedding is shared by all stacks. Each stack has its own position
parameters (learned table or relative-bias table) and its own final norm.
Which mask each stack uses is decided here (`encode`, `decode`, `decode_step`):
one `masks.AttentionMask` per stack (per layer for forward_backward_layers),
built by `masks.py`'s constructors; which kernel it reaches and what it does
to the logits is `attention.py`'s.

Generation uses a key/value cache (flax collection 'cache'): `prefill` runs
the encoder once and the decoder over the prompts (a prefix-LM's prompt with
its bidirectional prefix mask), `decode_step` extends by one token per row.
Does not own batches, losses or the search: that is `model.py` and
`inference/decoding.py`.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from t5x_like.model import layers
from t5x_like.model import masks as mask_lib
from t5x_like.model import positions as position_lib
from t5x_like.model.config import TransformerConfig

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
            # The same scale as the token embeddings it is added to: a table started 50x smaller
            # (0.02 against T5's 1.0) stays negligible under Adafactor's parameter-scaled steps.
            return layers.Embed(cfg.max_length, cfg.d_model, axes=("abspos", "embed"), init_std=cfg.embedding_init_std,
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

        def layer_mask(layer_index: int) -> mask_lib.AttentionMask:
            heads = mask_lib.encoder_head_structures(cfg.encoder_mask, cfg.num_heads, layer_index)
            return mask_lib.self_attention_mask(heads, valid, segment_ids)

        bias = self._position_bias(self.encoder_positions, bias_positions, None)
        x = self._embed(tokens, positions, self.encoder_positions)
        x = self._run_layers(self.encoder_layers, x, layer_mask, bias, positions)
        return self._finish_stack(x, self.encoder_norm)

    def decode(self, tokens: Array, valid: Array, prefix_indicator: Array | None = None,
               encoded: Array | None = None, encoder_valid: Array | None = None,
               segment_ids: Array | None = None, positions: Array | None = None,
               encoder_segment_ids: Array | None = None, cache_mode: str | None = None,
               cache_length: int | None = None, logit_positions: Array | None = None) -> Array:
        """Causal (or prefix-LM) stack over `tokens` [B, L]; returns logits [B, L, V].

        valid: [B, L] real (non-padding) positions. prefix_indicator: [B, L], 1
        inside a prefix-LM's bidirectional prefix (required for prefix_lm).
        encoded / encoder_valid: the encoder's output and its real positions.
        cache_mode="prefill" with cache_length: also store every layer's keys and
        values for generation (see `prefill`). logit_positions [B]: logits only
        at these positions, [B, 1, V].
        """
        cfg = self.config
        bias_positions = _bias_positions(tokens, positions)
        positions = _default_positions(tokens) if positions is None else positions
        if cfg.layout == "prefix_lm" and prefix_indicator is None:
            raise ValueError("a prefix_lm model needs prefix positions: train it on a task with "
                             "'inputs' and 'targets' (PrefixLMFeatureConverter)")
        mask = mask_lib.self_attention_mask(("causal",), valid, segment_ids,
                                            prefix_indicator if cfg.layout == "prefix_lm" else None)
        cross_mask = None if encoded is None else mask_lib.cross_attention_mask(
            valid, encoder_valid, segment_ids, encoder_segment_ids)
        bias = self._position_bias(self.decoder_positions, bias_positions, prefix_indicator)
        x = self._embed(tokens, positions, self.decoder_positions)
        x = self._run_layers(self.decoder_layers, x, lambda _: mask, bias, positions, encoded, cross_mask,
                             cache_mode, cache_length)
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
        logits = self.decode(tokens, valid, prefix, encoded, encoder_valid, cache_mode="prefill",
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
        mask = mask_lib.decoding_step_mask(positions, cache_length)
        cross_mask = None if encoded is None else mask_lib.decoding_step_cross_mask(encoder_valid)
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

    def _position_bias(self, position_module, positions, prefix_indicator,
                       key_positions=None) -> Array | None:
        cfg = self.config
        key_positions = positions if key_positions is None else key_positions
        if cfg.position == "relative":
            return position_module(positions, key_positions, prefix_indicator)
        if cfg.position == "alibi":
            return position_lib.alibi_bias(positions, key_positions, cfg.num_heads).astype(cfg.dtype)
        return None

    def _run_layers(self, stack, x, layer_mask, bias, positions, encoded=None, cross_mask=None,
                    cache_mode=None, cache_length=None):
        """x through every layer; layer_mask(i): layer i's self-attention AttentionMask."""
        if self.config.scan_layers:
            x, _ = stack(x, layer_mask(0), bias, positions, encoded, cross_mask, cache_mode, cache_length)
            return x
        for i, block in enumerate(stack):
            x = block(x, layer_mask(i), bias, positions, encoded, cross_mask, cache_mode, cache_length)
        return x

    def _finish_stack(self, x, final_norm) -> Array:
        if self.config.norm_position == "pre":
            x = final_norm(x)
        return self.dropout(x, deterministic=not layers.is_training(self))

    # --- whole model ---------------------------------------------------------
    def __call__(self, encoder_input_tokens=None, decoder_input_tokens=None, decoder_valid=None,
                 prefix_indicator=None, encoder_segment_ids=None, decoder_segment_ids=None,
                 encoder_positions=None, decoder_positions=None) -> Array:
        """Logits [B, L, V] over the decoder positions (encoder positions for encoder_only)."""
        cfg = self.config
        if cfg.layout == "encoder_only":
            return self.logits(self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions))
        encoded = encoder_valid = None
        if cfg.layout == "encoder_decoder":
            encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions)
            encoder_valid = encoder_input_tokens != PAD_ID
        return self.decode(decoder_input_tokens, decoder_valid, prefix_indicator, encoded, encoder_valid,
                           decoder_segment_ids, decoder_positions, encoder_segment_ids)
