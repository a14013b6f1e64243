"""The sharded strategies' checkpoint files are read as data: DeepSpeed's own files through a weights-only loader
that knows only DeepSpeed's plain-data classes, DCP's metadata and entries likewise. A crafted file whose
unpickling would create a file is refused with one line naming it, and the file is never created."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from repulse.infra.state_files import CheckpointFileError


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("zipfile", [True, False])  # DeepSpeed writes the legacy (non-zip) format
def test_deepspeed_files_with_code_are_refused(tmp_path, zipfile):
    pytest.importorskip("deepspeed")
    from repulse.distributed.deepspeed_checkpoint import safe_checkpoint_engine, safe_load

    marker = tmp_path / "pwned"
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": Payload(marker)}, path, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(CheckpointFileError, match=f"{path}: refused, it holds more than plain data"):
        safe_load(path)
    with pytest.raises(CheckpointFileError, match="refused"):
        safe_checkpoint_engine().load(str(path), map_location=lambda storage, loc: storage)
    assert not marker.exists()


def test_deepspeed_plain_data_classes_load(tmp_path):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from repulse.distributed.deepspeed_checkpoint import safe_load

    path = tmp_path / "ok.pt"
    state = {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients, "w": torch.ones(2)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loaded = safe_load(path)
    assert loaded["zero_stage"] == ZeroStageEnum.gradients and loaded["loss_scaler"].cur_scale == 1.0


def dcp_folder(tmp_path):
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    dcp.save(
        {"w": torch.arange(4.0), "opt": {"lr": 0.1, "betas": (0.9, 0.95)}}, checkpoint_id=str(folder), no_dist=True
    )
    return folder


def dcp_load(folder):
    import torch.distributed.checkpoint as dcp

    from repulse.distributed.dcp_checkpoint import safe_planner, safe_reader

    state = {"w": torch.zeros(4), "opt": {"lr": 0.0, "betas": (0.0, 0.0)}}
    reader, planner = safe_reader(folder), safe_planner(folder)
    try:
        dcp.load(state, storage_reader=reader, planner=planner, no_dist=True)
    except BaseException as err:  # DCP re-raises as text; the reader and planner keep the refusal
        refusal = reader.refusal or planner.refusal
        if refusal is None:
            raise
        raise CheckpointFileError(refusal) from err
    return state


def test_dcp_round_trip_through_the_safe_reader(tmp_path):
    state = dcp_load(dcp_folder(tmp_path))
    assert torch.equal(state["w"], torch.arange(4.0)) and state["opt"] == {"lr": 0.1, "betas": (0.9, 0.95)}


def test_dcp_metadata_with_code_is_refused(tmp_path):
    folder = dcp_folder(tmp_path)
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointFileError, match=r"\.metadata: refused, it holds more than checkpoint metadata"):
        dcp_load(folder)
    assert not marker.exists()


def test_dcp_entry_with_code_is_refused(tmp_path):
    """A non-tensor entry (DCP stores them as torch.save bytes in the .distcp file) that carries code."""
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    marker = tmp_path / "pwned"
    state = {"w": torch.arange(4.0), "opt": {"lr": Payload(marker), "betas": (0.9, 0.95)}}
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    assert not marker.exists()  # saving pickles, it runs nothing
    with pytest.raises(CheckpointFileError, match="refused, an entry holds more than plain data"):
        dcp_load(folder)
    assert not marker.exists()
