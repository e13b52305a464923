"""t5x_like: decoder-only, prefix-LM and encoder-decoder Transformers, compared fairly.

Subpackages and modules (each owns one concept; see its docstring):
  config      -- TransformerConfig, the one typed description of every layout.
  masks       -- attention masks (1 = may attend), composable.
  positions   -- position encodings (absolute, sinusoidal, relative bias, RoPE, ALiBi).
  layers      -- the shared Flax layers every layout is built from.
  models      -- the Transformer module and the per-layout loss / feature converter.
  sizing      -- exact parameter counts, FLOPs, and the matching solver.
  data        -- vocabularies, corpora, objectives and seqio tasks.
  cli         -- the `t5x-like` command.
"""

__version__ = "0.1.0"
