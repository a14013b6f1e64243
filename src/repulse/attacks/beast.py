"""BEAST (Sadasivan et al. 2024): a gradient-free beam search whose candidate tokens come from the target LM.

The suffix grows by one scored token per iteration. Each of the `k1` beam elements proposes `k2` distinct next
tokens sampled (without replacement, with temperature and top-p) from the attacked model's own next-token
distribution after [prompt; suffix], which keeps the suffix readable. The `k1 * k2` candidates are scored by
the target's mean NLL given [prompt; suffix; assistant tag] (the same objective as GCG, batched; with the prefix
cache the beam rows run once and each candidate feeds only its new tokens) and the best `k1` form the next
beam. With `ngram > 1` each scored token is followed by `ngram - 1` tokens that are only sampled, not chosen.
The best suffix over all iterations is returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from repulse.attacks.batching import BackoffBatcher
from repulse.attacks.gcg_tokens import disallowed_token_ids, make_generator
from repulse.attacks.objective import AttackPrompt, TargetObjective
from repulse.attacks.prefix_cache import PrefixCache
from repulse.models.logprobs import logits_kwarg


@dataclass
class BEASTConfig:
    k1: int = 15
    k2: int = 15
    length: int = 40
    ngram: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int | None = None
    use_prefix_cache: bool = True
    add_space_before_target: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("k1", "k2", "length", "ngram"):
            if getattr(self, name) < 1:
                raise ValueError(f"BEASTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"BEAST needs temperature > 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")


@dataclass
class BEASTResult:
    best_loss: float
    best_string: str
    best_ids: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # best loss of each iteration's beam
    strings: list[str] = field(default_factory=list)  # the corresponding suffixes


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p` (renormalised) -> [B, V]."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def sample_distinct(probs: torch.Tensor, k: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Per row, up to `k` distinct tokens drawn without replacement (fewer when fewer have mass)."""
    out = []
    for row in probs:
        n = min(k, int((row > 0).sum()))
        out.append(torch.multinomial(row, n, replacement=False, generator=generator))
    return out


class NextTokenSampler:
    """The attacked model's next-token distribution after [before; suffix], special tokens removed."""

    def __init__(
        self,
        model,
        prompt: AttackPrompt,
        tokenizer,
        config: BEASTConfig,
        cache: PrefixCache | None = None,
        batcher: BackoffBatcher | None = None,
    ) -> None:
        self.model, self.config, self.cache = model, config, cache
        self.device = model.get_input_embeddings().weight.device
        self.before = prompt.before_ids[0]
        vocab = model.get_input_embeddings().weight.shape[0]
        self.banned = disallowed_token_ids(tokenizer, allow_non_ascii=True)
        self.banned = self.banned[self.banned < vocab]
        self.batcher = batcher or BackoffBatcher(config.batch_size)
        self.keep = logits_kwarg(model)(1)

    def last_logits(self, suffixes: torch.Tensor) -> torch.Tensor:
        """Next-token logits [B, V] after [before; suffix], reusing the prefix cache when there is a suffix."""
        b = suffixes.shape[0]
        if self.cache is not None and suffixes.shape[1] > 0:
            out = self.model(
                input_ids=suffixes.to(self.device), past_key_values=self.cache.expand(b), use_cache=True, **self.keep
            )
        else:
            rows = torch.cat([self.before.unsqueeze(0).expand(b, -1), suffixes], dim=1).to(self.device)
            out = self.model(input_ids=rows, attention_mask=torch.ones_like(rows), use_cache=False, **self.keep)
        return out.logits[:, -1].float().cpu()

    @torch.no_grad()
    def probs(self, suffixes: torch.Tensor) -> torch.Tensor:
        """[B, V] sampling distribution (temperature, top-p) for the token after each suffix [B, l]."""
        suffixes = suffixes.cpu()
        logits = self.batcher.map(lambda start, end: self.last_logits(suffixes[start:end]), suffixes.shape[0])
        logits = logits / self.config.temperature
        logits[:, self.banned] = -math.inf
        return top_p_filter(torch.softmax(logits, dim=-1), self.config.top_p)

    def extend(self, suffixes: torch.Tensor, steps: int, generator: torch.Generator) -> torch.Tensor:
        """Append `steps` tokens, each one sample from the model (the unscored tokens of an n-gram)."""
        for _ in range(steps):
            nxt = torch.multinomial(self.probs(suffixes), 1, generator=generator)
            suffixes = torch.cat([suffixes, nxt], dim=1)
        return suffixes


def expand_beam(sampler: NextTokenSampler, beam: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Every beam row [B, l] followed by each of its up to `k` sampled distinct next tokens -> [N, l + 1]."""
    picks = sample_distinct(sampler.probs(beam), k, generator)
    rows = [torch.cat([beam[i].expand(len(p), -1), p.unsqueeze(1)], dim=1) for i, p in enumerate(picks)]
    return torch.unique(torch.cat(rows), dim=0)  # the same suffix reached from two beams is scored once


def run_beast(model, tokenizer, goal: str, target: str, config: BEASTConfig | None = None) -> BEASTResult:
    return run_beast_universal(model, tokenizer, [(goal, target)], config)


def run_beast_universal(
    model, tokenizer, pairs: Sequence[tuple[str, str]], config: BEASTConfig | None = None
) -> BEASTResult:
    """One suffix for all pairs (losses summed); candidates are sampled after the first pair's goal."""
    config = config or BEASTConfig()
    generator = make_generator(config.seed)
    prompts = [AttackPrompt.build(tokenizer, g, t, config.add_space_before_target) for g, t in pairs]
    objective = TargetObjective(model, prompts, use_prefix_cache=config.use_prefix_cache, batch_size=config.batch_size)
    cache = objective.caches[0] if objective.caches else None  # the same prefix: computed once for both uses
    sampler = NextTokenSampler(model, prompts[0], tokenizer, config, cache, objective.batcher)
    beam = torch.zeros(1, 0, dtype=torch.long)
    result = BEASTResult(best_loss=math.inf, best_string="")
    while beam.shape[1] < config.length:
        candidates = expand_beam(sampler, beam, config.k1 if beam.shape[1] == 0 else config.k2, generator)
        extra = min(config.ngram - 1, config.length - candidates.shape[1])
        candidates = sampler.extend(candidates, extra, generator)
        losses, _ = objective.losses_extending(beam, candidates)  # every candidate extends a beam row
        order = losses.argsort()[: config.k1]
        beam = candidates[order]
        loss, ids = float(losses[order[0]]), beam[0]
        result.losses.append(loss)
        result.strings.append(tokenizer.decode(ids))
        if loss < result.best_loss:
            result.best_loss, result.best_ids, result.best_string = loss, ids.tolist(), result.strings[-1]
    return result
