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
def test_demo_runs(tmp_path, capsys):
    from repulse.cli import demo

    assert demo.main(["--save_path", str(tmp_path)]) == 0
    for name in ("frontier.png", "frontier_kl.png", "curves.png", "demo.json"):
        assert (tmp_path / name).exists()
    out = capsys.readouterr().out
    # the per-fit-step mechanism: entropy and KL to p_0 for both, q's bad mass and KL(sigma || q) for RePULSe
    assert "REINFORCE (exact, mean over 1 seed):" in out and "RePULSe (exact, mean over 1 seed):" in out
    assert out.count("KL(p||p0)") == 3 and out.count("q P(bad)") == 1
    fit_steps = METHODS["RePULSe"]["fit_steps"]
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [*range(fit_steps + 1)] * 2
