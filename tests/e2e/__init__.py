"""Slow end-to-end runs (marked slow): training, finetuning and scoring real tasks."""
