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


CALLS = {"n": 0, "bad_from": 10**9, "value": float("nan")}


def broken(prompts: list[str], responses: list[str]) -> list[float]:
    """score, except that from call number CALLS['bad_from'] on the first response gets CALLS['value'] (a NaN
    from a faulty reward function, or a finite value so large that the loss overflows)."""
    CALLS["n"] += 1
    values = score(prompts, responses)
    if CALLS["n"] >= CALLS["bad_from"]:
        values[0] = CALLS["value"]
    return values
