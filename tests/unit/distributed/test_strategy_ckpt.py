"""SingleProcessStrategy.save_ckpt / load_ckpt store data only: a round trip, and a pickle with code is refused."""

from __future__ import annotations

import os

import pytest
import torch

from repulse.distributed.strategy import SingleProcessStrategy
from repulse.infra.state_files import CheckpointFileError


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_round_trip_and_refusal(tmp_path):
    strategy = SingleProcessStrategy(device="cpu")
    state = {"w": torch.arange(3.0), "step": 2, "betas": (0.9, 0.95)}
    strategy.save_ckpt(state, tmp_path / "ckpt")
    loaded = strategy.load_ckpt(tmp_path / "ckpt")
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 2 and loaded["betas"] == (0.9, 0.95)
    marker = tmp_path / "pwned"
    torch.save({"w": Payload(marker)}, tmp_path / "ckpt" / "state.pt")
    with pytest.raises(CheckpointFileError, match="state.pt: refused"):
        strategy.load_ckpt(tmp_path / "ckpt")
    assert not marker.exists()
