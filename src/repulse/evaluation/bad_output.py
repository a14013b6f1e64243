"""Exact probability of a bad output for one prompt, by enumeration (docs/toy.md; unlike the reference code,
nothing is scored after EOS). Bad = contains a bad word (whole-word match on the decoded text), or reward below a
threshold under a reward source (enumerates every continuation: small vocabularies only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from repulse.estimation.exact import exact_bad_probability, exact_reward_statistics


@dataclass
class BadOutputSpec:
    prompt: str
    response_len: int
    bad_words: list[str] | None = None
    reward_source: object = None
    threshold: float | None = None


def exact_bad_output(model, tokenizer, spec: BadOutputSpec) -> dict[str, float]:
    """{'log_p_bad', 'p_bad'} (+ 'expected_reward' with a reward threshold) for `model` in eval mode."""
    was_training = model.training
    model.eval()
    prompt_ids = torch.tensor(tokenizer(spec.prompt)["input_ids"], device=next(model.parameters()).device)
    eos = tokenizer.eos_token_id
    if spec.bad_words is not None:
        result = exact_bad_probability(
            model, prompt_ids, spec.response_len, bad_words=spec.bad_words, tokenizer=tokenizer, eos_token_id=eos
        )
        out = {"log_p_bad": result.log_p_bad, "p_bad": result.p_bad}
    else:

        def reward_fn(responses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            texts = tokenizer.batch_decode(
                responses.masked_fill(~mask, tokenizer.pad_token_id), skip_special_tokens=True
            )
            return spec.reward_source([spec.prompt] * len(texts), texts)

        result = exact_reward_statistics(
            model, prompt_ids, spec.response_len, reward_fn, threshold=spec.threshold, eos_token_id=eos
        )
        out = {"log_p_bad": result.log_p_bad, "p_bad": result.p_bad, "expected_reward": result.expected_reward}
    model.train(was_training)
    out["log10_p_bad"] = out["log_p_bad"] / math.log(10) if out["p_bad"] > 0 else float("-inf")
    return out
