"""A reward function whose process dies on its first call (--reward_fn tests.integration.dying_reward:score): a
worker lost mid-run, as when a node fails or the OOM killer strikes."""

from __future__ import annotations

import os


def score(prompts: list[str], responses: list[str]) -> list[float]:
    os._exit(1)
