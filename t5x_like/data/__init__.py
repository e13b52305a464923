"""Vocabularies, corpora, objectives, seqio tasks and training data sources (see docs/data.md).

Ground floor: imports nothing of model/, training/ or above. Importing the
package itself loads nothing heavy; `t5x_like.data.tasks` registers every
task and mixture (without reading any data) and is imported by whatever needs
the registry (`pipeline`, `sources.check_task_name`, evaluation). Modules:
  vocab              default byte vocabulary, sentinel/mode/mask ids, SentencePiece loading
  vocab_training     training a SentencePiece model on tasks' text (`t5x-like vocab`)
  corpora            Shakespeare, local files, fine-food reviews, Bible pairs, probes
  sword              SWORD zText Bible reader
  objectives         causal LM, prefix LM, span corruption, MLM, UL2; length matching
  feature_converters EncoderOnlyMLMFeatureConverter, for_layout
  tasks              task and mixture registration, TFDS / local-file sources, `configure`
  task_vocab         a task's vocabulary; the check that a model's vocab_size holds it (light import)
  task_suite         prompted multiple-choice families from held-out text; lm-eval task YAMLs
  metrics            accuracy, exact match, BLEU, rank classification
  pipeline           get_dataset: a task converted for one layout, batched and sharded
  sources            DataRequest and the training loop's data sources (seqio, synthetic)

The names below are importable from the package; each loads its module (and
so seqio and TensorFlow) on first use.
"""
import importlib

_EXPORTS = {
    "EncoderOnlyMLMFeatureConverter": "feature_converters", "for_layout": "feature_converters",
    "get_dataset": "pipeline",
    "register_text_files_task": "tasks", "default_vocabulary": "vocab", "sentencepiece_vocabulary": "vocab",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"t5x_like.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 't5x_like.data' has no attribute {name!r}")
