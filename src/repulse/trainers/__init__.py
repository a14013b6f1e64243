"""Training: the supervised loop (loop.py) with one small trainer per algorithm, train_ppo's recipe (rl/), and what
both share: the non-finite guard (guard.py) and checkpoint helpers (checkpointing.py)."""
