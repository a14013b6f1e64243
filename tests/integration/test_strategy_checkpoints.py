"""Sharded checkpoints (DeepSpeed's files, FSDP2's DCP files) of a real run load without running code: a crafted
file is refused with one line naming it, the file its unpickling would create never appears, and an intact
checkpoint still resumes. One process each (DeepSpeed and FSDP2 run with a group of one), so it stays fast."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch

from repulse.cli import train_sft
from tests.integration.helpers import TRAIN_FLAGS

pytest.importorskip("deepspeed")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def run(tiny_model_dir, sft_file, save, *extra) -> int:
    argv = ["--pretrain", str(tiny_model_dir), "--dataset", str(sft_file), "--save_path", str(save)]
    return train_sft.main([*argv, *TRAIN_FLAGS, "--max_samples", "16", "--save_steps", "1", *extra])


def crafted(path, marker, legacy: bool) -> None:
    if legacy:  # DeepSpeed writes torch's legacy (non-zip) format
        torch.save({"module": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


@pytest.mark.parametrize(
    ("strategy", "victim"),
    [
        (["--strategy", "deepspeed", "--zero_stage", "2"], "deepspeed/mp_rank_00_model_states.pt"),
        (["--strategy", "deepspeed", "--zero_stage", "2"], "deepspeed/zero_pp_rank_0_mp_rank_00_optim_states.pt"),
        (["--strategy", "fsdp2"], "dcp/.metadata"),
    ],
    ids=["deepspeed-model", "deepspeed-optimizer", "fsdp2-metadata"],
)
def test_crafted_shard_is_refused_and_intact_one_resumes(tmp_path, tiny_model_dir, sft_file, capsys, strategy, victim):
    save = tmp_path / "run"
    assert run(tiny_model_dir, sft_file, save, *strategy) == 0
    shutil.rmtree(save / "final")
    intact = tmp_path / "intact"
    shutil.copytree(save, intact)
    target = save / "checkpoints" / "global_step2" / victim
    assert target.is_file()
    marker = tmp_path / "pwned"
    crafted(target, marker, legacy=victim.startswith("deepspeed"))
    capsys.readouterr()
    assert run(tiny_model_dir, sft_file, save, *strategy, "--load_checkpoint") == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith("repulse train_sft: error: ")
    assert f"{target}: refused" in line
    assert not marker.exists()
    assert run(tiny_model_dir, sft_file, intact, *strategy, "--load_checkpoint", "--max_epochs", "1") == 0
    assert "resumed from" in capsys.readouterr().err
