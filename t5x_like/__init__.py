"""t5x_like: decoder-only, prefix-LM and encoder-decoder Transformers, compared fairly.

The packages are the layers; imports only go down (tests/test_architecture.py
enforces it; docs/architecture.md draws it):

  cli/          the `t5x-like` command: argv and gin are read only here; nothing imports it
  experiments/  comparison grids, their reports and statistics
  inference/    cached decoding, checkpoint evaluation with task metrics, attention analysis
  interop/      Hugging Face T5 / GPT-2 import and export
  training/     meshes, optimizers, checkpoints, metrics, the train loop, TrainConfig / train()
  model/        config, masks, positions, layers, every layout, Model, sizing  (ground floor)
  data/         vocabularies, corpora, objectives, seqio tasks, data sources  (ground floor)

`python -m t5x_like.train` is `t5x-like train`, as T5X users type it.
"""

__version__ = "0.1.0"
