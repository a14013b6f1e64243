"""build_optimizer's weight-decay groups and build_scheduler's learning-rate curves."""

from __future__ import annotations

import math

import pytest
import torch

from repulse.config.common import OptimArgs
from repulse.trainers.optim import build_optimizer, build_scheduler
from tests.conftest import make_gpt2


def test_no_decay_group_is_biases_and_norms():
    model = make_gpt2(40, n_layer=1, n_embd=8)
    model.transformer.wpe.requires_grad_(False)  # frozen parameters are left out
    optimizer = build_optimizer(model, OptimArgs(l2=0.1, learning_rate=1e-3, adam_betas=[0.8, 0.9]))
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert set(groups) == {0.1, 0.0}
    # Expected from the module types, not from parameter names.
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    biases = {id(p) for n, p in model.named_parameters() if n.endswith(".bias")}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert groups[0.0] == (norms | biases) & trainable
    assert groups[0.1] == trainable - norms - biases
    assert id(model.transformer.wpe.weight) not in groups[0.0] | groups[0.1]
    assert id(model.transformer.h[0].attn.c_attn.weight) in groups[0.1]
    for group in optimizer.param_groups:
        assert group["lr"] == 1e-3
        assert group["betas"] == (0.8, 0.9)


def test_llama_style_names():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(4, 4, bias=True)
            self.input_layernorm = torch.nn.LayerNorm(4)
            self.norm = torch.nn.LayerNorm(4, bias=False)

    block = Block()
    optimizer = build_optimizer(block, OptimArgs(l2=0.01))
    decay = next(g for g in optimizer.param_groups if g["weight_decay"] == 0.01)
    no_decay = next(g for g in optimizer.param_groups if g["weight_decay"] == 0.0)
    assert [id(p) for p in decay["params"]] == [id(block.q_proj.weight)]
    expected = {id(block.q_proj.bias), id(block.input_layernorm.weight), id(block.input_layernorm.bias)}
    assert {id(p) for p in no_decay["params"]} == expected | {id(block.norm.weight)}


def lrs(scheduler_name: str, total: int, warmup_ratio: float, min_lr_ratio: float = 0.1) -> list[float]:
    """Learning rate before step 0, after step 1, ..., after step `total`."""
    param = torch.nn.Parameter(torch.zeros(1))
    args = OptimArgs(
        learning_rate=1.0, lr_scheduler=scheduler_name, lr_warmup_ratio=warmup_ratio, min_lr_ratio=min_lr_ratio
    )
    optimizer = torch.optim.SGD([param], lr=args.learning_rate)
    scheduler = build_scheduler(optimizer, args, total)
    out = [optimizer.param_groups[0]["lr"]]
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_cosine_with_min_lr():
    # 10 steps, warm-up ceil(10 x 0.2) = 2: 0, 1/2, 1, then 0.1 + 0.9 x (1 + cos(pi x (k - 2) / 8)) / 2.
    got = lrs("cosine_with_min_lr", 10, 0.2, min_lr_ratio=0.1)
    expected = [0.0, 0.5] + [0.1 + 0.9 * (1 + math.cos(math.pi * (k - 2) / 8)) / 2 for k in range(2, 11)]
    assert got == pytest.approx(expected, abs=1e-9)
    assert got[-1] == pytest.approx(0.1)  # ends at min_lr_ratio x learning_rate
    assert got[6] == pytest.approx(0.55)  # half-way through the decay


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_cosine_with_min_lr_end_value(ratio):
    assert lrs("cosine_with_min_lr", 7, 0.0, min_lr_ratio=ratio)[-1] == pytest.approx(ratio)


def test_warmup_steps_round_up():
    # 10 x 0.03 = 0.3 -> one warm-up step: lr 0 before it, full lr after it.
    got = lrs("constant_with_warmup", 10, 0.03)
    assert got[:3] == [0.0, 1.0, 1.0]


def test_linear_and_constant():
    assert lrs("linear", 4, 0.0) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert lrs("constant", 3, 0.5) == [1.0, 1.0, 1.0, 1.0]


def test_zero_total_steps_does_not_crash():
    # No steps: no warm-up (ceil(0) = 0) and a 1-step schedule at progress 0, i.e. the full learning rate.
    assert lrs("cosine_with_min_lr", 0, 0.03) == [1.0]
