"""Metrics logging, checkpointing, seeding, atomic writes and user-facing errors."""
