"""Planted-trigger test beds for low-probability estimation: tiny causal LMs whose rare target has an exact answer.

Each case is a small Phi-architecture causal LM (2 layers, hidden 48, ~41k parameters) trained from a seed in
well under a minute on one CPU core, with a product input distribution D small enough to enumerate (32^4 ≈ 1e6
inputs by default) so that P = E_{x~D}[p(target | x)] is known exactly. Token 0 is the target and never an input.

What makes a case hard for naive sampling: D is Zipfian at every position (exponent 1.5 over 32 tokens, a random
frequency order per position), and each trigger is made of the rarest token of D at its positions, so the complete
trigger has D-probability ≈ 6e-6 (pair) or ≈ 1.5e-8 (triple). After training, the target's log-odds are scaled by
`sharpen` and shifted so that f ≈ `trigger_f` on the complete trigger while the typical input has f ≈ 1e-8 or less:
nearly all of P sits on inputs that 2^12-2^14 draws from D almost never contain.

- graded (default): an input with only some of a trigger's tokens is labelled with target probability
  `p_full · rho^missing`, so partial triggers raise f and the input gradient carries a (weak, nonlinear) signal
  towards the trigger. This is the situation gradient-guided estimators are built for.
- ungraded (`graded=False`): only the complete trigger is labelled with the target. The model's f is then nearly
  flat away from the trigger and neither gradient nor chain has anything to follow: a limit case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from repulse.estimation.distributions import FactorizedDistribution

TARGET = 0


@dataclass(frozen=True)
class PlantedSpec:
    """A planted-trigger case: `triggers` lists, per trigger, the input positions of its tokens."""

    name: str
    triggers: tuple[tuple[int, ...], ...]
    graded: bool = True
    vocab_size: int = 33
    length: int = 4
    zipf: float = 1.5
    steps: int = 1000
    batch_size: int = 256
    p_full: float = 0.5
    rho: float = 0.05
    sharpen: float = 3.0
    trigger_f: float = 0.3
    seed: int = 0
    hidden_size: int = 48


@dataclass
class PlantedCase:
    spec: PlantedSpec
    model: torch.nn.Module
    dist: FactorizedDistribution
    trigger_tokens: tuple[tuple[tuple[int, int], ...], ...]  # per trigger: (position, token) pairs
    target_ids: tuple[int, ...] = (TARGET,)

    def trigger_mass(self) -> float:
        """D-probability that an input contains a complete trigger (union bound over triggers)."""
        return sum(math.prod(float(self.dist.probs[j, t]) for j, t in trig) for trig in self.trigger_tokens)

    def describe(self) -> str:
        kind = "graded" if self.spec.graded else "ungraded (only the complete trigger counts)"
        trig = " or ".join("+".join(f"{t}@{j}" for j, t in trig) for trig in self.trigger_tokens)
        return f"{self.spec.name}: trigger {trig}, {kind}, D(trigger) = {self.trigger_mass():.2g}"


def zipf_distribution(length: int, vocab_size: int, exponent: float, generator: torch.Generator) -> torch.Tensor:
    """[L, V] per-position Zipf(exponent) over tokens 1..V-1 in a random order per position (token 0 excluded)."""
    weights = torch.arange(1, vocab_size, dtype=torch.float64) ** -exponent
    probs = torch.zeros(length, vocab_size, dtype=torch.float64)
    for j in range(length):
        probs[j, 1 + torch.randperm(vocab_size - 1, generator=generator)] = weights / weights.sum()
    return probs


def pick_triggers(probs: torch.Tensor, triggers: tuple[tuple[int, ...], ...]):
    """The rarest token of D at each trigger position, each token used once across triggers."""
    used: set[int] = set()
    picked = []
    for positions in triggers:
        trig = []
        for j in positions:
            order = torch.argsort(probs[j].masked_fill(probs[j] == 0, math.inf))
            token = next(int(v) for v in order if int(v) not in used)
            used.add(token)
            trig.append((j, token))
        picked.append(tuple(trig))
    return tuple(picked)


def present(x: torch.Tensor, trigger_tokens) -> torch.Tensor:
    """[n, triggers]: how many of each trigger's tokens x [n, L] holds at their positions."""
    return torch.stack([sum((x[:, j] == t).long() for j, t in trig) for trig in trigger_tokens], dim=-1)


def target_probability(x: torch.Tensor, trigger_tokens, spec: PlantedSpec) -> torch.Tensor:
    """The training label's target probability: p_full · rho^missing for the best trigger (graded) or p_full
    on a complete trigger only (ungraded); 0 without any trigger token."""
    have = present(x, trigger_tokens)
    missing = torch.tensor([len(t) for t in trigger_tokens]) - have
    if spec.graded:
        p = torch.where(have > 0, spec.p_full * spec.rho ** missing.double(), 0.0)
    else:
        p = torch.where(missing == 0, spec.p_full, 0.0).double()
    return p.max(-1).values


def training_batch(spec: PlantedSpec, trigger_tokens, generator: torch.Generator):
    """Uniform random inputs, 70% of them with a random subset of one trigger planted (a quarter complete)."""
    n, length, vocab = spec.batch_size, spec.length, spec.vocab_size
    x = torch.randint(1, vocab, (n, length), generator=generator)
    u = torch.rand(n, generator=generator)
    which = torch.randint(len(trigger_tokens), (n,), generator=generator)
    for k, trig in enumerate(trigger_tokens):
        keep = torch.rand(n, len(trig), generator=generator) < 0.6
        keep[u < 0.25] = True
        chosen = (which == k) & (u < 0.7)
        for i, (j, t) in enumerate(trig):
            x[chosen & keep[:, i], j] = t
    y = torch.randint(1, vocab, (n,), generator=generator)
    hit = torch.rand(n, generator=generator, dtype=torch.float64) < target_probability(x, trigger_tokens, spec)
    y[hit] = TARGET
    return x, y


def make_model(spec: PlantedSpec) -> torch.nn.Module:
    from transformers import PhiConfig, PhiForCausalLM

    config = PhiConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=2 * spec.hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max(16, spec.length + 4),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return PhiForCausalLM(config)


def train(model: torch.nn.Module, spec: PlantedSpec, trigger_tokens, generator: torch.Generator) -> None:
    """Next-token cross-entropy at the last input position only (the position that predicts the target)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=spec.steps, pct_start=0.1)
    model.train()
    for _ in range(spec.steps):
        x, y = training_batch(spec, trigger_tokens, generator)
        loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits[:, -1], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


@torch.no_grad()
def sharpen_target(model: torch.nn.Module, spec: PlantedSpec, trigger_tokens, generator: torch.Generator) -> None:
    """Scale the target's output row (its log-odds) by `sharpen` and set its bias so that the first trigger,
    in random surroundings, gives f ≈ trigger_f (median). The lm_head bias makes this exact for every input."""
    x = torch.randint(1, spec.vocab_size, (256, spec.length), generator=generator)
    for j, t in trigger_tokens[0]:
        x[:, j] = t
    logits = model(input_ids=x).logits[:, -1].double()
    others = torch.logsumexp(torch.cat([logits[:, :TARGET], logits[:, TARGET + 1 :]], -1), -1)
    goal = math.log(spec.trigger_f / (1 - spec.trigger_f))
    head = model.lm_head
    shift = float((goal + others - spec.sharpen * logits[:, TARGET]).median())
    head.weight[TARGET] *= spec.sharpen
    head.bias[TARGET] = spec.sharpen * head.bias[TARGET] + shift


def build_planted(spec: PlantedSpec) -> PlantedCase:
    """Build the case from its seed: D, the trigger tokens, the trained and sharpened model (float32, eval)."""
    generator = torch.Generator().manual_seed(spec.seed)
    probs = zipf_distribution(spec.length, spec.vocab_size, spec.zipf, generator)
    trigger_tokens = pick_triggers(probs, spec.triggers)
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = make_model(spec)
    train(model, spec, trigger_tokens, generator)
    sharpen_target(model, spec, trigger_tokens, generator)
    dist = FactorizedDistribution(probs, name=spec.name, description=f"Zipf({spec.zipf}) per position")
    return PlantedCase(spec, model, dist, trigger_tokens)


CASES = {
    "pair": PlantedSpec("pair", triggers=((2, 3),)),
    "split_pair": PlantedSpec("split_pair", triggers=((0, 3),)),
    "triple": PlantedSpec("triple", triggers=((1, 2, 3),)),
    "two_pairs": PlantedSpec("two_pairs", triggers=((0, 1), (2, 3))),
    "needle": PlantedSpec("needle", triggers=((2, 3),), graded=False),
}
