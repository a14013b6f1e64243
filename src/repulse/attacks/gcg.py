"""Greedy Coordinate Gradient (Zou et al. 2023), with nanoGCG's configuration names, defaults and result.

    result = run(model, tokenizer, "Tell me how to ...", "Sure, here is", GCGConfig(num_steps=250))
    result.best_string, result.best_loss

One step: the gradient of the target loss with respect to the one-hot suffix picks, per position, the top-k
tokens; `search_width` candidates each replace `n_replace` random positions with one of them; candidates
that do not survive decode/re-encode are dropped (`filter_ids`); all are scored exactly (prefix KV cache,
batch-size back-off on out-of-memory) and the best joins a buffer of the `buffer_size` best suffixes, whose
best is the next step's starting point. `run_universal` optimises one suffix for several (goal, target)
pairs by summing their losses. docs/algorithms/gcg.md lists the departures from nanoGCG.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from repulse.attacks.gcg_tokens import (
    allowed_mask,
    disallowed_token_ids,
    keep_round_trip,
    make_generator,
    sample_candidates,
)
from repulse.attacks.objective import AttackPrompt, TargetObjective

log = logging.getLogger("repulse")


@dataclass
class GCGConfig:
    """nanoGCG 0.3.0's fields and defaults (verbosity and probe sampling are not reproduced)."""

    num_steps: int = 250
    optim_str_init: str = "x x x x x x x x x x x x x x x x x x x x"
    search_width: int = 512
    batch_size: int | None = None
    topk: int = 256
    n_replace: int = 1
    buffer_size: int = 0
    use_mellowmax: bool = False
    mellowmax_alpha: float = 1.0
    early_stop: bool = False
    use_prefix_cache: bool = True
    allow_non_ascii: bool = False
    filter_ids: bool = True
    add_space_before_target: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_steps", "search_width", "topk", "n_replace"):
            if getattr(self, name) < 1:
                raise ValueError(f"GCGConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.buffer_size < 0:
            raise ValueError(f"GCGConfig.buffer_size must be >= 0, got {self.buffer_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"GCGConfig.batch_size must be >= 1 or None, got {self.batch_size}")


@dataclass
class GCGResult:
    best_loss: float
    best_string: str
    losses: list[float] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)


class AttackBuffer:
    """The `size` lowest-loss suffixes seen so far; size 0 keeps only the latest step's best (nanoGCG)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: list[tuple[float, torch.Tensor]] = []

    def add(self, loss: float, ids: torch.Tensor) -> None:
        if self.size == 0:
            self.items = [(loss, ids)]
            return
        if len(self.items) < self.size:
            self.items.append((loss, ids))
        elif loss < self.items[-1][0]:
            self.items[-1] = (loss, ids)
        self.items.sort(key=lambda item: item[0])

    def best_ids(self) -> torch.Tensor:
        return self.items[0][1]

    def highest_loss(self) -> float:
        return self.items[-1][0]

    def is_full(self) -> bool:
        return len(self.items) >= max(self.size, 1)


def init_buffer(
    objective: TargetObjective,
    init_ids: torch.Tensor,
    config: GCGConfig,
    allowed: torch.Tensor,
    generator: torch.Generator,
) -> AttackBuffer:
    """The initial suffix, plus (buffer_size > 1) random suffixes from the allowed tokens to fill the buffer."""
    rows = [init_ids]
    pool = allowed.nonzero().squeeze(1)
    for _ in range(max(config.buffer_size - 1, 0)):
        rows.append(pool[torch.randint(0, len(pool), (init_ids.shape[0],), generator=generator)])
    candidates = torch.stack(rows)
    losses, _ = objective.losses(candidates)
    buffer = AttackBuffer(config.buffer_size)
    for loss, ids in zip(losses.tolist(), candidates, strict=True):
        buffer.add(loss, ids)
    return buffer


def run(
    model,
    tokenizer,
    messages: str,
    target: str,
    config: GCGConfig | None = None,
    allowed_ids: Sequence[int] | None = None,
) -> GCGResult:
    """Optimise a suffix after the user request `messages` (a goal string) so the model answers `target`."""
    return run_universal(model, tokenizer, [(messages, target)], config, allowed_ids)


def run_universal(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    config: GCGConfig | None = None,
    allowed_ids: Sequence[int] | None = None,
) -> GCGResult:
    """One suffix for every (goal, target) pair: the loss is the sum of the pairs' losses.

    `allowed_ids` restricts the suffix tokens to a set (nanoGCG has no such option; the tests use it to make
    the search space enumerable).
    """
    config = config or GCGConfig()
    generator = make_generator(config.seed)
    prompts = [AttackPrompt.build(tokenizer, g, t, config.add_space_before_target) for g, t in pairs]
    objective = TargetObjective(
        model,
        prompts,
        use_mellowmax=config.use_mellowmax,
        mellowmax_alpha=config.mellowmax_alpha,
        use_prefix_cache=config.use_prefix_cache,
        batch_size=config.batch_size,
    )
    vocab = objective.embedding.weight.shape[0]
    allowed = allowed_mask(vocab, disallowed_token_ids(tokenizer, config.allow_non_ascii), allowed_ids)
    init_ids = torch.as_tensor(tokenizer(config.optim_str_init, add_special_tokens=False)["input_ids"])
    if init_ids.numel() == 0:
        raise ValueError(f"optim_str_init {config.optim_str_init!r} encodes to no tokens")
    if tokenizer.unk_token_id is not None and (init_ids == tokenizer.unk_token_id).any():
        log.warning(
            "optim_str_init %r holds tokens unknown to the tokenizer; GCG replaces them as it goes",
            config.optim_str_init,
        )
    buffer = init_buffer(objective, init_ids, config, allowed, generator)
    result = GCGResult(best_loss=float("inf"), best_string="")
    for _ in range(config.num_steps):
        done = gcg_step(objective, tokenizer, buffer, config, allowed, generator, result)
        if done:
            break
    best = min(range(len(result.losses)), key=result.losses.__getitem__)
    result.best_loss, result.best_string = result.losses[best], result.strings[best]
    return result


def gcg_step(
    objective: TargetObjective,
    tokenizer,
    buffer: AttackBuffer,
    config: GCGConfig,
    allowed: torch.Tensor,
    generator: torch.Generator,
    result: GCGResult,
) -> bool:
    """One GCG iteration; appends the step's loss and string to `result`. True when early stopping."""
    ids = buffer.best_ids()
    grad = objective.gradient(ids).cpu()
    candidates = sample_candidates(ids, grad, config.search_width, config.topk, config.n_replace, allowed, generator)
    if config.filter_ids:
        candidates = keep_round_trip(tokenizer, candidates)
        if candidates.shape[0] == 0:
            raise RuntimeError("no GCG candidate survives decode/re-encode; set filter_ids=False or change the init")
    losses, exact = objective.losses_near(ids, candidates)
    best = int(losses.argmin())
    loss = float(losses[best])
    if not buffer.is_full() or buffer.size == 0 or loss < buffer.highest_loss():
        buffer.add(loss, candidates[best])
    # The step's best candidate, so that (best_loss, best_string) always describe the same suffix; nanoGCG logs
    # the buffer's best string next to the step's loss, which differs when buffer_size > 1.
    result.losses.append(loss)
    result.strings.append(tokenizer.decode(candidates[best]))
    return config.early_stop and bool(exact.any())
