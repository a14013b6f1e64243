"""A deterministic reward function for RL tests (--reward_fn tests.integration.toy_reward:score)."""

from __future__ import annotations

BAD = ("jerk", "fool")


def score(prompts: list[str], responses: list[str]) -> list[float]:
    """+1 per 'good'/'kind'/'nice' word, -10 if the response contains a bad word."""
    out = []
    for text in responses:
        words = text.split()
        value = sum(w in ("good", "kind", "nice") for w in words) - 10.0 * any(w in BAD for w in words)
        out.append(float(value))
    return out
