"""Tests of t5x_like.model."""
