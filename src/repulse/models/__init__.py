"""Loading models and tokenizers, per-token log-probs, reward/value heads."""
