"""estimate_rare_harmful_outputs and forecast_rare_outputs end to end via main(argv) on the embedded defaults."""

from __future__ import annotations

import json
import math

import pytest

from repulse.cli import estimate_rare_harmful_outputs as lpe_cli
from repulse.cli import forecast_rare_outputs as forecast_cli

# Tiny models: on a shared 2-core machine extra intra-op threads only add contention.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = ["--distribution_name", "english", "--sequence_length", "2", "--batch_size", "32", "--n_samples", "64"]


@pytest.mark.parametrize("method", ["itgis", "ceis", "mixture", "mhis", "bruteforce"])
def test_estimate_writes_the_result_json(method, tmp_path, capsys):
    out = tmp_path / f"{method}.json"
    argv = [*SMALL, "--method", method, "--mhis_burn_in", "2", "--compare_exact", "--output_file", str(out)]
    assert lpe_cli.main(argv) == 0
    result = json.loads(out.read_text())
    keys = {"method", "estimate", "std_err", "ci95", "ess", "pareto_k", "warnings", "n_samples", "wall_time_s"}
    assert keys | {"exact", "log10_error"} <= set(result)
    # ITGIS, CEIS, the mixture: the first of their 2 batches only adapts the proposal.
    assert result["method"] == method and result["n_samples"] == (32 if method in ("itgis", "ceis", "mixture") else 64)
    low, high = result["ci95"]
    assert low <= result["estimate"] <= high and result["ess"] > 0
    assert result["target_word"] == " fuck" and result["target_tokens"] == ["Ġfuck"]
    assert 0 < result["exact"] < 1e-2 and result["estimate"] > 0 and math.isfinite(result["std_err"])
    assert result["log10_error"] < 1.5
    assert result["distribution"]["support_sizes"] == [40, 34]
    printed = capsys.readouterr()
    assert "estimate_rare_harmful_outputs: " + method in printed.out and "95% CI" in printed.out
    assert f"ESS {result['ess']:.0f}" in printed.out
    # 32 or 64 samples are too few to trust: the warning is on stderr and in the JSON.
    assert result["warnings"] and "warning: effective sample size" in printed.err


def test_itgis_says_when_its_gradient_did_not_move_the_proposal(tmp_path, capsys):
    """A huge temperature flattens the tilt: the proposal is D, and the CLI must say that the interval knows nothing
    of rarer inputs (beside the ESS it prints)."""
    out = tmp_path / "flat.json"
    assert lpe_cli.main([*SMALL, "--temperature", "1e6", "--output_file", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["gradient_kl"] < 0.01 and any("gradient barely moved" in w for w in result["warnings"])
    printed = capsys.readouterr()
    assert f"ESS {result['ess']:.0f}" in printed.out and "warning: the gradient barely moved" in printed.err


@pytest.mark.parametrize(("method", "unit"), [("itgis", "sample"), ("mhis", "step"), ("bruteforce", "sample")])
def test_estimators_show_a_progress_bar_unless_disabled(method, unit, capsys):
    argv = [*SMALL, "--method", method, "--mhis_burn_in", "2"]
    assert lpe_cli.main(argv) == 0
    err = capsys.readouterr().err
    assert f"{method}: 100%" in err and f"{unit}/s" in err
    assert lpe_cli.main([*argv, "--disable_progress_bar"]) == 0
    assert "100%" not in capsys.readouterr().err


def test_exact_shows_a_progress_bar_in_inputs(capsys):
    assert lpe_cli.main([*SMALL, "--method", "exact"]) == 0
    err = capsys.readouterr().err
    assert "exact: 100%" in err and "1360/1360" in err and "input/s" in err


def test_exact_method_reports_the_enumerated_probability(tmp_path):
    out = tmp_path / "exact.json"
    assert lpe_cli.main([*SMALL, "--method", "exact", "--target_word", " shit", "--output_file", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "exact" and result["std_err"] == 0.0 and result["n_samples"] == 40 * 34
    assert result["exact"] == result["estimate"] and result["log10_error"] == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target_word", " zzzz"], "--target_word ' zzzz' is not in the vocabulary"),
        (["--method", "exact", "--distribution_name", "uniform", "--sequence_length", "4"], "--max_exact_inputs"),
        (["--distribution_name", "caps"], "all-caps"),
        (["--method", "nope"], "--method must be one of"),
        (["--n_samples", "32"], "--method itgis needs --n_samples >= 2 x --batch_size"),
        (["--method", "ceis", "--defensive_fraction", "1"], "--defensive_fraction must be in [0, 1), got 1.0"),
    ],
)
def test_estimate_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert lpe_cli.main([*SMALL, *argv]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]  # the other lines are [repulse] notes
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err


def test_forecast_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "fc" / "forecast.json"
    argv = [
        "--evaluation_set_size",
        "24",
        "--top_k_fit",
        "6",
        "--forecast_scales",
        "1e3,1e5",
        "--output_file",
        str(out),
    ]
    assert forecast_cli.main(argv) == 0
    payload = json.loads(out.read_text())
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and payload["plot"] == str(png)
    (res,) = payload["results"]
    assert len(res["queries"]) == 24 and all(q["log_p"] <= 0 for q in res["queries"])
    assert res["fit"]["slope"] < 0 and res["fit"]["top_k"] == 6 and res["fit"]["n_queries"] == 24
    q3, q5 = res["forecast_Q_p"]["1000"], res["forecast_Q_p"]["100000"]
    assert 0 <= q3 <= q5 <= 1
    worst = max(math.exp(q["log_p"]) for q in res["queries"])
    assert q5 > worst  # 100000 queries are forecast to do worse than the worst of 24
    assert "Q_p(1e+05)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "no/such/file.jsonl"], "no/such/file.jsonl"),
        (["--keywords", "zzzz,qqqq"], "none of the keywords"),
        (["--elicitation_method", "logprob_specific"], "--target_sequence is required"),
    ],
)
def test_forecast_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys):
    argv = [*argv, "--evaluation_set_size", "8", "--top_k_fit", "4", "--output_file", str(tmp_path / "f.json")]
    assert forecast_cli.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]  # the other lines are [repulse] notes
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not (tmp_path / "f.json").exists()
