"""Checkpointer with the single-process strategy: folders, pruning, newest-by-number, RNG restore, a format that
loads as data only, and the guards that keep one run's checkpoints away from another."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from repulse.distributed.strategy import SingleProcessStrategy
from repulse.infra.checkpoint import Checkpointer, load_trainable_state, trainable_state
from repulse.infra.errors import UserError
from repulse.infra.state_files import CheckpointFileError


def make(path, max_keep=3, fingerprint=None) -> Checkpointer:
    return Checkpointer(path, max_keep=max_keep, strategy=SingleProcessStrategy(device="cpu"), fingerprint=fingerprint)


@pytest.fixture
def ckpt(tmp_path):
    return make(tmp_path / "ckpts")


def names(ckpt: Checkpointer) -> list[str]:
    return [p.name for p in ckpt.checkpoints()]


def test_save_writes_a_step_folder(ckpt):
    path = ckpt.save(5, {"global_step": 5, "w": torch.arange(3)})
    assert path == ckpt.dir / "global_step5"
    assert sorted(p.name for p in path.iterdir()) == [
        "checkpoint.json",
        "rng_rank0.pt",
        "rng_rank0.safetensors",
        "training_state.pt",
        "training_state.safetensors",
    ]
    # Nothing else next to it: no staged RNG folder, no temp folder.
    assert sorted(p.name for p in ckpt.dir.iterdir()) == ["global_step5"]
    manifest = json.loads((path / "checkpoint.json").read_text())
    assert manifest["global_step"] == 5 and manifest["world_size"] == 1
    state = ckpt.load(path)
    assert state["global_step"] == 5
    assert state["w"].tolist() == [0, 1, 2]


def trained_parts():
    """A model, optimizer and scheduler after two steps, as the supervised loop saves them."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    for _ in range(2):
        model(torch.randn(5, 3)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def assert_same(a, b, where="state"):
    """Equal structure, types (tuples stay tuples, int keys stay ints) and bitwise-equal tensors."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def test_supervised_state_round_trips_exactly(ckpt):
    model, optimizer, scheduler = trained_parts()
    state = {
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "loop": {"epoch": 1, "step_in_epoch": 0, "global_step": 2, "consumed_samples": 10},
    }
    loaded = ckpt.load(ckpt.save(2, state))
    assert_same(state, loaded)
    assert isinstance(loaded["optimizer"]["param_groups"][0]["betas"], tuple)
    assert sorted(loaded["optimizer"]["state"]) == [0, 1, 2, 3]  # int keys, not "0"
    # The loaded state drives a fresh optimizer to the same next step as the original.
    fresh_model, fresh_opt, fresh_sched = trained_parts()
    fresh_opt.load_state_dict(loaded["optimizer"])
    fresh_sched.load_state_dict(loaded["scheduler"])
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()


def test_rl_shaped_state_round_trips_exactly(ckpt):
    model, optimizer, _ = trained_parts()
    state = {
        "kind": {"models": ["actor", "initial"], "actor_loss_type": "ctl", "lora_rank": 0, "loss": None},
        "weights": {"actor": trainable_state(model), "ema": {"w": torch.ones(2, dtype=torch.bfloat16)}},
        "trainer": {"steps": 3, "kl_coef": 0.05, "ptx_used": 0, "actor_optimizer": optimizer.state_dict(), "x": None},
        "loop": {
            "global_step": 3,
            "evaluations": [{"step": 1, "exact_log_p_bad": -7.25}, {"step": 2, "exact_log_p_bad": float("-inf")}],
            "history": [{"step": 1, "reward_mean": float("nan"), "ok": True}],
            "pair": (1, "two", 3.0),
            "scalar": torch.tensor(2.5),
            "empty": torch.zeros(0, 3),
            "mask": torch.tensor([True, False]),
        },
        "negdata": [{"prompt": "This man is", "response": " a fool", "reward": -1.5}],
    }
    loaded = ckpt.load(ckpt.save(3, state))
    assert_same(state, loaded)


def test_tensors_sharing_memory_are_saved_as_copies(ckpt):
    base = torch.arange(6.0).reshape(2, 3)
    loaded = ckpt.load(ckpt.save(1, {"a": base, "same": base, "row": base[1], "tied": [base]}))
    assert (
        torch.equal(loaded["a"], base) and torch.equal(loaded["same"], base) and torch.equal(loaded["tied"][0], base)
    )
    assert torch.equal(loaded["row"], torch.tensor([3.0, 4.0, 5.0]))


def test_numpy_scalars_are_saved_as_numbers(ckpt):
    loaded = ckpt.load(ckpt.save(1, {"a": np.float64(0.25), "b": np.int64(7), "c": np.float32(1.5)}))
    assert loaded == {"a": 0.25, "b": 7, "c": 1.5}
    assert type(loaded["b"]) is int


def test_a_state_that_would_need_code_is_a_bug_caught_at_save(ckpt):
    class Custom:
        pass

    with pytest.raises(TypeError, match=r"state\['loop'\]\['obj'\] is a Custom"):
        ckpt.save(1, {"loop": {"obj": Custom()}})
    assert not ckpt.dir.exists()  # nothing written at all, not even a temp folder


class Payload:
    """What a hostile checkpoint holds: unpickling it would create `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
@pytest.mark.parametrize("victim", ["training_state.pt", "rng_rank0.pt"])
def test_a_crafted_pickle_is_refused_and_never_runs(ckpt, tmp_path, capsys, fmt, victim):
    import pickle

    path = ckpt.save(1, {"x": 1})
    marker = tmp_path / "pwned"
    payload = {"x": Payload(marker)}
    if fmt == "torch.save":
        torch.save(payload, path / victim)
    else:
        (path / victim).write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointFileError) as err:
        ckpt.load(path)
    message = str(err.value)
    assert str(path / victim) in message
    assert "\n" not in message
    assert "refused" in message
    if fmt == "torch.save":
        assert "GLOBAL posix.system" in message  # what was refused, not torch's advice to load it unsafely
    assert not marker.exists()


def test_corrupt_and_missing_files_name_the_file(ckpt):
    path = ckpt.save(1, {"w": torch.arange(4)})
    tensors = path / "training_state.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:20])
    with pytest.raises(CheckpointFileError, match=f"{tensors}: not a readable safetensors file"):
        ckpt.load(path)
    tensors.unlink()
    with pytest.raises(CheckpointFileError, match=f"{tensors}: missing"):
        ckpt.load(path)
    (path / "training_state.pt").write_bytes(b"")
    ckpt.save(2, {"w": torch.arange(4)})
    (ckpt.dir / "global_step2" / "training_state.pt").write_bytes(b"")
    with pytest.raises(CheckpointFileError, match="training_state.pt: not a readable checkpoint file"):
        ckpt.load(ckpt.dir / "global_step2")


def test_empty_folder_and_older_format_are_refused(ckpt):
    empty = ckpt.dir / "global_step3"
    empty.mkdir(parents=True)
    with pytest.raises(CheckpointFileError, match=f"{empty}: not a checkpoint this version can load"):
        ckpt.load(empty)
    older = ckpt.dir / "global_step4"
    older.mkdir()
    torch.save({"model": {}}, older / "training_state.pt")
    with pytest.raises(CheckpointFileError, match="no checkpoint.json"):
        ckpt.load(older)


def test_other_format_version_is_refused(ckpt):
    path = ckpt.save(1, {})
    manifest = json.loads((path / "checkpoint.json").read_text())
    (path / "checkpoint.json").write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(CheckpointFileError, match="format version 1"):
        ckpt.load(path)


def test_empty_dir_has_no_latest(ckpt):
    assert ckpt.latest() is None
    assert ckpt.checkpoints() == []


def test_keeps_only_max_keep_newest(ckpt):
    for step in (1, 2, 3, 4, 5):
        ckpt.save(step, {"global_step": step})
    assert names(ckpt) == ["global_step3", "global_step4", "global_step5"]


def test_max_keep_one(tmp_path):
    ckpt = make(tmp_path, max_keep=1)
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


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    first = make(tmp_path, max_keep=1)
    first.save(9, {})
    again = make(tmp_path, max_keep=1)
    again.start(resume=True)
    again.save(5, {})
    assert "global_step5" in names(again)


def test_a_new_run_refuses_a_folder_with_another_runs_checkpoints(tmp_path):
    make(tmp_path).save(111, {"old": True})
    new = make(tmp_path)
    with pytest.raises(UserError) as err:
        new.start(resume=False)
    message = str(err.value)
    assert str(tmp_path) in message and "global_step111" in message and "--load_checkpoint" in message
    new.start(resume=True)  # resuming it is fine


def test_a_caller_that_never_calls_start_is_guarded_at_its_first_save(tmp_path):
    make(tmp_path).save(111, {"old": True})
    new = make(tmp_path, max_keep=1)
    with pytest.raises(UserError, match="already holds checkpoints of an earlier run"):
        new.save(5, {"new": True})
    assert names(new) == ["global_step111"]  # nothing written, nothing deleted


def test_a_caller_that_resumed_keeps_saving_in_its_folder(tmp_path):
    make(tmp_path).save(4, {"v": 4})
    resumed = make(tmp_path, max_keep=2)
    resumed.load(resumed.latest())
    resumed.save(6, {"v": 6})
    resumed.save(8, {"v": 8})
    assert names(resumed) == ["global_step6", "global_step8"]


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    make(tmp_path, fingerprint={"command": "train_sft", "learning_rate": 0.001}).save(2, {})
    other = make(tmp_path, fingerprint={"command": "train_sft", "learning_rate": 0.01})
    with pytest.raises(UserError, match=r"written with --learning_rate 0.001, this run has 0.01"):
        other.load(other.latest())
    command = make(tmp_path, fingerprint={"command": "train_dpo", "learning_rate": 0.001})
    with pytest.raises(UserError, match="written by the command 'train_sft', this run has 'train_dpo'"):
        command.load(command.latest())
    same = make(tmp_path, fingerprint={"command": "train_sft", "learning_rate": 0.001})
    assert same.load(same.latest()) == {}


def test_ignores_unrelated_and_unfinished_entries(ckpt):
    ckpt.save(3, {})
    (ckpt.dir / ".global_step7.abc123").mkdir()  # not a name this code writes: left alone
    (ckpt.dir / "global_step8").write_text("a file, not a folder")
    (ckpt.dir / "global_step_final").mkdir()
    (ckpt.dir / "notes").mkdir()
    assert names(ckpt) == ["global_step3"]
    assert ckpt.latest().name == "global_step3"


def test_leftovers_of_a_killed_run_are_cleaned_at_the_next_start(tmp_path):
    (tmp_path / ".global_step7.ab_c12de").mkdir()  # mkdtemp folder of an older version
    (tmp_path / ".global_step8.x1y2z3w4.repulse-tmp").mkdir()
    (tmp_path / ".rng_step3_rank0.pt").write_bytes(b"x")
    (tmp_path / ".rng_step5_rank1.repulse-tmp").mkdir()
    (tmp_path / ".global_step2.repulse-old").mkdir()  # swapped out while global_step2 was replaced...
    (tmp_path / "global_step2").mkdir()  # ...and the replacement arrived: the old one goes
    (tmp_path / ".global_step4.repulse-old").mkdir()  # the replacement never arrived: put back
    for keep in (".gitignore", "notes", ".global_step9.abc"):
        (tmp_path / keep).write_text("mine")
    make(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".gitignore",
        ".global_step9.abc",
        "global_step2",
        "global_step4",
        "notes",
    ]


def test_saving_the_same_step_again_replaces_it(ckpt):
    ckpt.save(4, {"v": 1})
    ckpt.save(4, {"v": 2})
    assert names(ckpt) == ["global_step4"]
    assert ckpt.load(ckpt.latest())["v"] == 2


def test_load_restores_rng_streams(ckpt):
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    path = ckpt.save(1, {})
    after_save = (torch.rand(4), random.random(), np.random.standard_normal(), np.random.rand())
    # Consume more randomness, as training would, then resume.
    torch.rand(100)
    random.random()
    np.random.rand(7)
    ckpt.load(path)
    after_load = (torch.rand(4), random.random(), np.random.standard_normal(), np.random.rand())
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


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"bias": torch.zeros(2)}, r"lacks \['weight'\]"),
        ({"weight": torch.zeros(2, 2), "bias": torch.zeros(2), "lora_A": torch.zeros(1)}, "lacks: \\['lora_A'\\]"),
        ({"weight": torch.zeros(3, 2), "bias": torch.zeros(2)}, r"weight has shape \(3, 2\) there, \(2, 2\) here"),
    ],
)
def test_load_trainable_state_that_does_not_fit(state, message):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(UserError, match=message):
        load_trainable_state(model, state, source="ckpt/global_step2")
