"""The demo's per-fit-step table: seeds averaged step by step (P(bad) in logs), the proposal's columns only for
runs that have a proposal."""

from __future__ import annotations

import json
import math

import pytest

from repulse.evaluation.run_steps import mean_by_step, steps_table


def write(folder, evaluations) -> str:
    folder.mkdir(parents=True)
    (folder / "evaluations.json").write_text(json.dumps(evaluations))
    return str(folder)


def policy(step: int, p_bad: float, entropy: float, kl: float, reward: float = 2.0) -> dict:
    return {
        "fit_step": step,
        "exact_log_p_bad": math.log(p_bad),
        "exact_entropy": entropy,
        "exact_kl_to_reference": kl,
        "exact_expected_reward": reward,
    }


def test_seeds_are_averaged_per_step_with_p_bad_in_logs() -> None:
    runs = [
        [policy(0, 1e-3, 8.0, 0.0), policy(1, 1e-4, 6.0, 1.0)],
        [policy(0, 1e-3, 8.0, 0.0), policy(1, 1e-6, 4.0, 3.0)],
    ]
    first, second = mean_by_step(runs)
    assert math.exp(second["exact_log_p_bad"]) == pytest.approx(1e-5)  # geometric mean, not 5.05e-5
    assert second["exact_entropy"] == pytest.approx(5.0) and second["exact_kl_to_reference"] == pytest.approx(2.0)
    assert first["fit_step"] == 0 and second["fit_step"] == 1


def test_table_has_a_line_per_step_and_the_proposal_columns_only_with_a_proposal(tmp_path) -> None:
    plain = write(tmp_path / "a", [policy(0, 8.7e-4, 8.64, 0.0), policy(1, 5e-4, 7.5, 0.25)])
    text = steps_table("REINFORCE", [plain])
    lines = text.splitlines()
    assert lines[0] == "REINFORCE (exact, mean over 1 seed):" and "q P(bad)" not in lines[1]
    assert lines[3].split() == ["1", "5.000e-04", "2.000", "7.50", "0.250"]
    q = {"exact_proposal_p_bad": 0.5, "exact_kl_target_to_proposal": 3.0, "exact_proposal_ess_fraction": 1e-3}
    with_q = write(tmp_path / "b", [{**policy(0, 8.7e-4, 8.64, 0.0), **q}, {**policy(1, 5e-4, 7.5, 0.25), **q}])
    lines = steps_table("RePULSe", [with_q]).splitlines()
    assert "KL(sig||q)" in lines[1] and lines[3].split()[-3:] == ["5.000e-01", "3.00", "1.0e-03"]
