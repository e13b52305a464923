"""The model, ground floor: configs, masks, positions, layers, every layout, sizing.

Imports nothing else of t5x_like, and neither seqio, TensorFlow nor gin (a
test holds it to that). Modules, in the order a batch flows through them:
  config       TransformerConfig: every architectural choice, typed and validated
  features     which arrays each layout's batches hold, and how long (seqio's converters' rule)
  masks        what a mask means (1 = may attend), composable builders, AttentionMask
               (one object: the structure fused kernels take, and its dense form)
  positions    learned, sinusoidal, T5 relative bias, RoPE, ALiBi
  attention    the attention kernels (einsum reference, blockwise with masked-block skipping)
               and `attend`, which decides which kernel runs and names any fallback
  layers       the one shared Flax layers module (attention + KV cache, MLP, norms, blocks)
  accelerator_attention  Pallas splash / flash (TPU) and cuDNN (GPU) attention kernels and when they fall back
  transformer  Transformer: every layout from those layers, and which mask each stack uses
  model        Model: feature-converted batch -> loss sums / scores / prompts / cache steps
  sizing       exact parameter counts, FLOPs, and the matching solver
  adaptation   which tensors of one layout's tree become which of another's (init_checkpoint)
"""
from t5x_like.model.config import TransformerConfig
from t5x_like.model.model import Model

__all__ = ["Model", "TransformerConfig"]
