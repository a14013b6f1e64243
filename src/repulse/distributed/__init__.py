"""Strategies: the only code that talks to torch.distributed (and, later, DeepSpeed)."""
