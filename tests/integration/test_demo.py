"""The demo's settings and configs/toy_*.yaml stay the same; the demo runs end to end (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from repulse.cli.demo import METHODS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("name", "file"), [("RePULSe", "toy_repulse.yaml"), ("REINFORCE", "toy_reinforce.yaml")])
def test_configs_match_the_demo(name, file):
    assert yaml.safe_load((ROOT / "configs" / file).read_text()) == METHODS[name]


def test_equal_sample_budgets():
    # RePULSe samples N from p and N from q per step, so it gets half the p-steps of REINFORCE.
    repulse, reinforce = METHODS["RePULSe"], METHODS["REINFORCE"]
    assert 2 * repulse["harmlessness_training_num_episodes"] == reinforce["harmlessness_training_num_episodes"]
    assert repulse["duplicate_rollout_batch_by"] == reinforce["duplicate_rollout_batch_by"]


@pytest.mark.slow
def test_demo_runs(tmp_path):
    from repulse.cli import demo

    assert demo.main(["--save_path", str(tmp_path)]) == 0
    assert (tmp_path / "frontier.png").exists() and (tmp_path / "demo.json").exists()
