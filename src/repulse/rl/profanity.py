"""A cheap, deterministic real toxicity reward: alt-profanity-check's linear SVM (inside its wheel, no hub).

    repulse train_ppo --pretrain smollm2_dir --reward_fn repulse.rl.profanity:score ...

reward = log((1 - p) / p), the negative log-odds that the response is profane, clipped to [-CLIP, CLIP]:
clean text scores well above 0, profane text well below, and `--threshold 0` splits them at p = 0.5.
Install with `pip install 'repulse[fixtures]'`.
"""

from __future__ import annotations

import math

from repulse.infra.errors import require_package

CLIP = 10.0


def profanity_probabilities(texts: list[str]) -> list[float]:
    require_package("profanity_check", "fixtures", "the profanity reward (repulse.rl.profanity)")
    from profanity_check import predict_prob

    return [float(p) for p in predict_prob(list(texts))] if texts else []


def log_odds_clean(p: float) -> float:
    # Probabilities of exactly 0 or 1 occur (the SVM's calibration saturates): clip instead of infinity.
    eps = math.exp(-CLIP)
    p = min(max(p, eps), 1.0 - eps)
    return max(-CLIP, min(CLIP, math.log((1.0 - p) / p)))


def score(prompts: list[str], responses: list[str]) -> list[float]:
    """The --reward_fn interface: one reward per (prompt, response); only the response is judged."""
    del prompts  # the prompt is the user's text; only what the model said is scored
    return [log_odds_clean(p) for p in profanity_probabilities(responses)]
