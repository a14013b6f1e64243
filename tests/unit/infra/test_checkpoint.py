"""Checkpointer with the single-process strategy: folders, pruning, newest-by-number and RNG restore."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from repulse.distributed.strategy import SingleProcessStrategy
from repulse.infra.checkpoint import Checkpointer, load_trainable_state, trainable_state


@pytest.fixture
def ckpt(tmp_path):
    return Checkpointer(tmp_path / "ckpts", max_keep=3, strategy=SingleProcessStrategy(device="cpu"))


def names(ckpt: Checkpointer) -> list[str]:
    return [p.name for p in ckpt.checkpoints()]


def test_save_writes_a_step_folder(ckpt):
    path = ckpt.save(5, {"global_step": 5, "w": torch.arange(3)})
    assert path == ckpt.dir / "global_step5"
    assert sorted(p.name for p in path.iterdir()) == ["rng_rank0.pt", "training_state.pt"]
    # Nothing else next to it: no staged RNG file, no temp folder.
    assert sorted(p.name for p in ckpt.dir.iterdir()) == ["global_step5"]
    state = ckpt.load(path)
    assert state["global_step"] == 5
    assert state["w"].tolist() == [0, 1, 2]


def test_empty_dir_has_no_latest(ckpt):
    assert ckpt.latest() is None
    assert ckpt.checkpoints() == []


def test_keeps_only_max_keep_newest(ckpt):
    for step in (1, 2, 3, 4, 5):
        ckpt.save(step, {"global_step": step})
    assert names(ckpt) == ["global_step3", "global_step4", "global_step5"]


def test_max_keep_one(tmp_path):
    ckpt = Checkpointer(tmp_path, max_keep=1, strategy=SingleProcessStrategy(device="cpu"))
    ckpt.save(1, {})
    ckpt.save(2, {})
    assert names(ckpt) == ["global_step2"]


def test_latest_is_by_step_number_not_name(ckpt):
    for step in (9, 10, 2):
        ckpt.save(step, {"global_step": step})
    # As strings "global_step9" > "global_step10"; by number 10 is newest.
    assert ckpt.latest().name == "global_step10"
    assert names(ckpt) == ["global_step2", "global_step9", "global_step10"]
    assert ckpt.load(ckpt.latest())["global_step"] == 10


def test_pruning_is_by_step_number(ckpt):
    for step in (8, 9, 10, 11):
        ckpt.save(step, {})
    assert names(ckpt) == ["global_step9", "global_step10", "global_step11"]


def test_ignores_unrelated_and_unfinished_entries(ckpt):
    ckpt.save(3, {})
    (ckpt.dir / ".global_step7.abc123").mkdir()  # an interrupted write_dir_atomic temp folder
    (ckpt.dir / "global_step8").write_text("a file, not a folder")
    (ckpt.dir / "global_step_final").mkdir()
    (ckpt.dir / "notes").mkdir()
    assert names(ckpt) == ["global_step3"]
    assert ckpt.latest().name == "global_step3"


def test_saving_the_same_step_again_replaces_it(ckpt):
    ckpt.save(4, {"v": 1})
    ckpt.save(4, {"v": 2})
    assert names(ckpt) == ["global_step4"]
    assert ckpt.load(ckpt.latest())["v"] == 2


def test_load_restores_rng_streams(ckpt):
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    path = ckpt.save(1, {})
    after_save = (torch.rand(4), random.random(), np.random.rand())
    # Consume more randomness, as training would, then resume.
    torch.rand(100)
    random.random()
    np.random.rand(7)
    ckpt.load(path)
    after_load = (torch.rand(4), random.random(), np.random.rand())
    assert torch.equal(after_save[0], after_load[0])
    assert after_save[1:] == after_load[1:]


def test_load_without_rng_file_still_returns_state(ckpt, caplog):
    caplog.set_level("WARNING", logger="repulse")
    path = ckpt.save(1, {"x": 1})
    (path / "rng_rank0.pt").unlink()
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    assert ckpt.load(path) == {"x": 1}
    assert torch.equal(torch.rand(2), expected)  # RNG left alone
    assert "no RNG state" in caplog.text


def test_trainable_state_round_trip():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].requires_grad_(False)  # frozen: not saved
    state = trainable_state(model)
    assert sorted(state) == ["1.bias", "1.weight"]
    with torch.no_grad():
        model[1].weight.add_(1.0)
    assert not torch.equal(model[1].weight, state["1.weight"])  # the saved copy is detached
    load_trainable_state(model, state)
    assert torch.equal(model[1].weight, state["1.weight"])


def test_load_trainable_state_missing_parameter():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="weight"):
        load_trainable_state(model, {"bias": torch.zeros(2)})
