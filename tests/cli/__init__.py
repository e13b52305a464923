"""Tests of the command line (t5x_like.cli) and the launch scripts."""
