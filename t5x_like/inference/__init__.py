"""Inference: cached decoding, checkpoint evaluation with task metrics, attention analysis.

Above model/, data/ and training/ (for checkpoints); below experiments/.
Modules:
  decoding            greedy / sampling / beam search over the model's KV cache; predict_batch
  evaluation          load a model's checkpoint, seqio.Evaluator metrics, teacher-forced loss
  prompted            rank classification of every prompt template of a task-suite family
  attention_analysis  rank, effective rank and entropy of every attention head
"""
