"""Held-out sampling (docs/toy.md): reward statistics of fresh samples and the fraction below thresholds,
with a Wilson 95% interval (the fraction is what the paper's frontier plots)."""

from __future__ import annotations

import math

import torch

from repulse.generation.generate import SamplingParams
from repulse.losses.reductions import masked_sum
from repulse.rl.rollout import response_token_logps, sample_rollout


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def heldout_statistics(rewards: torch.Tensor, threshold: float, kls: torch.Tensor | None = None) -> dict:
    rewards = rewards.double()
    bad = int((rewards < threshold).sum())
    low, high = wilson_interval(bad, len(rewards))
    out = {
        "n_samples": len(rewards),
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
        "reward_min": rewards.min().item(),
        "threshold": threshold,
        "fraction_below_threshold": bad / len(rewards),
        "fraction_below_threshold_ci95": [low, high],
        "fraction_below": {str(t): float((rewards < t).double().mean()) for t in range(-6, 1)},
    }
    if kls is not None:
        out["kl_to_reference_mean"] = kls.double().mean().item()
    return out


@torch.no_grad()
def heldout_sampling(
    model,
    reference,
    tokenizer,
    prompt_ids: list[list[int]],
    reward_source,
    *,
    group_size: int,
    params: SamplingParams,
    iters: int,
    threshold: float,
    others_running=None,
) -> dict:
    """Sample `group_size` responses per held-out prompt `iters` times; statistics plus the raw rewards.
    `others_running`: the sampler's lock-step where a forward is a collective (generation/stepwise.py)."""
    rewards, kls = [], []
    device = next(model.parameters()).device
    for _ in range(iters):
        roll = sample_rollout(model, tokenizer, prompt_ids, group_size, params, others_running=others_running)
        roll = roll.to(device)
        rewards.append(reward_source(roll.prompts, roll.responses).float().cpu())
        # The sampler's own log-probs: only the reference runs on the samples.
        logp = masked_sum(roll.logps, roll.action_mask, dim=-1)
        ref = masked_sum(response_token_logps(reference, roll), roll.action_mask, dim=-1)
        kls.append((logp - ref).cpu())
    stats = heldout_statistics(torch.cat(rewards), threshold, torch.cat(kls))
    stats["rewards"] = torch.cat(rewards).tolist()
    return stats
