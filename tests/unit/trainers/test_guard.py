"""The non-finite guard: a NaN or infinite loss, reward or gradient norm stops the run before the update, in one
line that names it, the step and the last checkpoint; a finite one passes through to the optimizer step."""

from __future__ import annotations

import pytest
import torch

from repulse.distributed.strategy import SingleProcessStrategy
from repulse.infra.errors import TrainingDivergedError
from repulse.trainers.guard import Guard, check_finite, guarded_optimizer_step


def model_with_grad(value: float) -> torch.nn.Linear:
    model = torch.nn.Linear(2, 1)
    for p in model.parameters():
        p.grad = torch.full_like(p, value)
    return model


def test_a_finite_value_passes_and_a_non_finite_one_is_named():
    strategy = SingleProcessStrategy("cpu")
    check_finite(strategy, torch.tensor(1.5), what="loss", where="step 1", last_checkpoint=None)
    with pytest.raises(TrainingDivergedError) as err:
        check_finite(strategy, torch.tensor(float("nan")), what="p_theta loss", where="step 4", last_checkpoint="c/s3")
    assert str(err.value) == "p_theta loss is nan at step 4; stopped before applying it. Last checkpoint: c/s3"
    with pytest.raises(TrainingDivergedError, match=r"reward is inf/nan for 2 of 3 entries at step 2.*none saved"):
        Guard(strategy, step=2).check(torch.tensor([1.0, float("nan"), float("inf")]), "reward")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_gradient_is_never_applied(bad):
    model = model_with_grad(bad)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDivergedError, match="proposal q gradient norm is"):
        guarded_optimizer_step(
            SingleProcessStrategy("cpu"),
            optimizer,
            model,
            None,
            1.0,
            what="proposal q",
            where="step 1",
            last_checkpoint=None,
        )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_finite_gradient_steps_and_returns_its_norm():
    model = model_with_grad(1.0)
    before = [p.detach().clone() for p in model.parameters()]
    norm = Guard(SingleProcessStrategy("cpu")).optimizer_step(
        torch.optim.SGD(model.parameters(), lr=0.1), model, None, 0.0, "actor"
    )
    assert norm == pytest.approx(3**0.5)  # three gradient entries of 1
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
