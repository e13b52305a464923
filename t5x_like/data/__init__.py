"""Vocabularies, corpora, objectives and seqio tasks (see docs/data.md).

Importing this package registers every task and mixture (tasks.py) without
reading any data. Modules:
  vocab              default byte vocabulary, sentinel/mode/mask ids, SentencePiece loading
  vocab_cli          `t5x-like vocab`: train a SentencePiece model on a task
  corpora            Shakespeare, local files, fine-food reviews, Bible pairs, probes
  sword              SWORD zText Bible reader
  objectives         causal LM, prefix LM, span corruption, MLM, UL2; length matching
  feature_converters EncoderOnlyMLMFeatureConverter, for_layout
  tasks              task and mixture registration, data sources
  metrics            accuracy, exact match, BLEU, rank classification
  pipeline           get_dataset
"""
from t5x_like.data import tasks  # noqa: F401  (registers the tasks)
from t5x_like.data.feature_converters import EncoderOnlyMLMFeatureConverter, for_layout
from t5x_like.data.objectives import matched_feature_lengths
from t5x_like.data.pipeline import get_dataset
from t5x_like.data.tasks import register_text_files_task
from t5x_like.data.vocab import default_vocabulary, sentencepiece_vocabulary

__all__ = ["EncoderOnlyMLMFeatureConverter", "default_vocabulary", "for_layout", "get_dataset",
           "matched_feature_lengths", "register_text_files_task", "sentencepiece_vocabulary"]
