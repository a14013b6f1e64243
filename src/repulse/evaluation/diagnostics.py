"""Exact diagnostics of a harmlessness run on an enumerable toy (docs/toy.md): every response of up to T tokens
after one prompt is a leaf of the sampling tree, and each quantity is a finite sum over the leaves.

The leaves, their bad-word flags and their rewards do not change during training, so `build_space` computes them
once; after every fit step only the models' leaf log-probabilities are recomputed (`leaf_log_probs`: one
enumeration with the prompt's KV cache, as `estimation.exact` does for P(bad)). The rest are pure functions of
[N] float64 log-probability vectors in the space's leaf order:

- `entropy(log p)`: H(p) in nats over the continuations;
- `kl_divergence(log p, log p0)`: KL(p || p0);
- `tilted_log_target(log p, r, beta)`: log sigma with sigma ∝ p e^{beta r} (`log_partition`: log Z);
  `target_log_probs(log p, log phi)` and `log_expectation` for any potential phi;
- `kl_divergence(log sigma, log q)`: how far a proposal q is from sigma;
- `ess_fraction(log sigma, log q)`: the exact effective sample size of q's importance weights sigma/q, as a
  fraction of the number of samples: (E_q w)^2 / E_q w^2 = 1 / sum sigma^2 / q (1 iff q = sigma);
- `mass(log q, space.bad)`: q's (or p's, or sigma's) probability of a bad-word response.

q may be any causal LM, the modulated proposal (models/modulated.py) included: both are enumerated alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from repulse.estimation.exact import enumerate_response_logprobs

RewardSource = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class ContinuationSpace:
    """Every response after one prompt, in enumeration order.

    prompt_ids [P] long; responses [N, T] long (positions after an EOS hold the EOS id); mask [N, T] bool (generated
    tokens, EOS included); texts: the decoded responses (special tokens skipped, as the sampler decodes them);
    bad [N] bool: the text holds a bad word as a whole word; rewards [N] float64, or None without a reward source.
    """

    prompt_ids: torch.Tensor
    response_len: int
    eos_token_id: int | None
    responses: torch.Tensor
    mask: torch.Tensor
    texts: list[str]
    bad: torch.Tensor
    rewards: torch.Tensor | None

    def __len__(self) -> int:
        return self.responses.shape[0]


def bad_word_flags(texts: Sequence[str], bad_words: Sequence[str], case_sensitive: bool = False) -> torch.Tensor:
    """[N] bool: the text holds one of `bad_words` as a whole word (the criterion `exact_bad_probability` uses)."""
    words = sorted(set(bad_words), key=len, reverse=True)
    if not words or not all(words):
        raise ValueError("bad_words must be a non-empty list of non-empty strings")
    pattern = re.compile(rf"\b(?:{'|'.join(map(re.escape, words))})\b", 0 if case_sensitive else re.IGNORECASE)
    return torch.tensor([pattern.search(text) is not None for text in texts], dtype=torch.bool)


def decode_responses(tokenizer, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return tokenizer.batch_decode(responses.masked_fill(~mask, pad), skip_special_tokens=True)


def leaf_rewards(reward_source: RewardSource, prompt: str, texts: Sequence[str], batch_size: int = 4096):
    """[N] float64 rewards of prompt + each response text, in batches."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        out.append(torch.as_tensor(reward_source([prompt] * len(chunk), chunk)).double().cpu().flatten())
    rewards = torch.cat(out)
    if rewards.shape != (len(texts),):
        raise ValueError(f"the reward source returned {tuple(rewards.shape)} rewards for {len(texts)} responses")
    return rewards


def build_space(
    model,
    tokenizer,
    prompt: str,
    response_len: int,
    *,
    bad_words: Sequence[str],
    reward_source: RewardSource | None = None,
    batch_size: int = 512,
    max_sequences: int = 2_000_000,
) -> ContinuationSpace:
    """The leaves after `prompt` (tokenized as the trainer does), their bad flags and, with a source, rewards.

    `model` only fixes the vocabulary (any model over the tokenizer's vocabulary gives the same leaves).
    """
    prompt_ids = torch.tensor(tokenizer(prompt)["input_ids"], dtype=torch.long)
    eos = tokenizer.eos_token_id
    responses, mask, _ = enumerate_response_logprobs(
        model, prompt_ids, response_len, eos_token_id=eos, batch_size=batch_size, max_sequences=max_sequences
    )
    texts = decode_responses(tokenizer, responses, mask)
    rewards = None if reward_source is None else leaf_rewards(reward_source, prompt, texts)
    bad = bad_word_flags(texts, bad_words)
    return ContinuationSpace(prompt_ids, response_len, eos, responses, mask, texts, bad, rewards)


def leaf_log_probs(model, space: ContinuationSpace, batch_size: int = 512) -> torch.Tensor:
    """[N] float64 log-probability of every leaf under `model`, in the space's order (model in eval mode)."""
    responses, _, logps = enumerate_response_logprobs(
        model,
        space.prompt_ids.to(next(model.parameters()).device),
        space.response_len,
        eos_token_id=space.eos_token_id,
        batch_size=batch_size,
        max_sequences=len(space),
    )
    if not torch.equal(responses, space.responses):
        raise ValueError("the model's leaves differ from the space's: another vocabulary or EOS")
    return logps


# ---- pure functions of leaf log-probabilities ------------------------------------------------------------------
def _check(*vectors: torch.Tensor) -> None:
    shapes = {tuple(v.shape) for v in vectors}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"expected [N] vectors of one length, got shapes {sorted(shapes)}")


def mass(log_p: torch.Tensor, where: torch.Tensor) -> float:
    """P(where) = sum of p over the leaves where `where` is True."""
    _check(log_p, where)
    return float(log_p.double()[where.bool()].exp().sum())


def entropy(log_p: torch.Tensor) -> float:
    """H(p) = -sum p log p in nats (leaves with p = 0 contribute 0)."""
    log_p = log_p.double()
    p = log_p.exp()
    return float(-(p * log_p).masked_fill(p == 0, 0.0).sum())


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    """KL(p || q) = sum p (log p - log q) in nats; +inf if q = 0 where p > 0."""
    _check(log_p, log_q)
    log_p, log_q = log_p.double(), log_q.double()
    p = log_p.exp()
    support = p > 0
    if bool((log_q[support] == -math.inf).any()):
        return math.inf
    return float((p[support] * (log_p[support] - log_q[support])).sum())


def log_partition(log_p: torch.Tensor, rewards: torch.Tensor, beta: float) -> float:
    """log Z = log sum p e^{beta r}."""
    _check(log_p, rewards)
    return log_expectation(log_p, beta * rewards.double())


def tilted_log_target(log_p: torch.Tensor, rewards: torch.Tensor, beta: float) -> torch.Tensor:
    """[N] log sigma, sigma(s) = p(s) e^{beta r(s)} / Z (the target of the proposal; beta < 0 tilts to low r)."""
    _check(log_p, rewards)
    return target_log_probs(log_p, beta * rewards.double())


def log_expectation(log_p: torch.Tensor, log_phi: torch.Tensor) -> float:
    """log Z = log E_p[phi] = log sum p phi, for any potential (log phi = -inf where phi = 0)."""
    _check(log_p, log_phi)
    return float(torch.logsumexp(log_p.double() + log_phi.double(), dim=0))


def target_log_probs(log_p: torch.Tensor, log_phi: torch.Tensor) -> torch.Tensor:
    """[N] log sigma with sigma ∝ p phi (e^{beta r} for --rm_type rlhf, 1[r < tau] for the indicator, ...)."""
    _check(log_p, log_phi)
    unnormalised = log_p.double() + log_phi.double()
    return unnormalised - torch.logsumexp(unnormalised, dim=0)


def ess_fraction(log_target: torch.Tensor, log_proposal: torch.Tensor) -> float:
    """Exact ESS / n of self-normalised importance sampling from q for sigma, in the n -> inf sense:
    (E_q[w])^2 / E_q[w^2] with w = sigma / q, i.e. 1 / sum sigma^2 / q = exp(-D_2(sigma || q)). In (0, 1]."""
    _check(log_target, log_proposal)
    log_target, log_proposal = log_target.double(), log_proposal.double()
    support = log_target > -math.inf
    if bool((log_proposal[support] == -math.inf).any()):
        return 0.0
    log_second_moment = torch.logsumexp(2 * log_target[support] - log_proposal[support], dim=0)
    return float(torch.exp(-log_second_moment))


# ---- one call per fit step -------------------------------------------------------------------------------------
def policy_diagnostics(log_p: torch.Tensor, log_p0: torch.Tensor, space: ContinuationSpace) -> dict[str, float]:
    """Entropy, KL to the reference, P(bad) and (with rewards) E[r] of the policy."""
    out = {"entropy": entropy(log_p), "kl_to_reference": kl_divergence(log_p, log_p0), "p_bad": mass(log_p, space.bad)}
    if space.rewards is not None:
        out["expected_reward"] = float((log_p.double().exp() * space.rewards).sum())
    return out


def proposal_diagnostics(
    log_p: torch.Tensor, log_q: torch.Tensor, space: ContinuationSpace, log_phi: torch.Tensor
) -> dict[str, float]:
    """For a proposal q of sigma ∝ p phi ([N] log phi, e.g. beta r): KL(sigma || q), the exact ESS fraction, q's and
    sigma's bad mass, log Z."""
    log_sigma = target_log_probs(log_p, log_phi)
    return {
        "kl_target_to_proposal": kl_divergence(log_sigma, log_q),
        "proposal_ess_fraction": ess_fraction(log_sigma, log_q),
        "proposal_p_bad": mass(log_q, space.bad),
        "target_p_bad": mass(log_sigma, space.bad),
        "log_partition": log_expectation(log_p, log_phi),
    }
