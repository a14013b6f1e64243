"""Evaluation passes of RL training: exact P(bad), held-out sampling, negative-data likelihood."""
