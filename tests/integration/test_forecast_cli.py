"""forecast_rare_outputs: the figure (title, named legend, fitted points, forecast), the progress bar, and queries
that are not text."""

from __future__ import annotations

import json
import math
import re

import pytest

from repulse.assets import TINY_LM_DIR
from repulse.cli import forecast_rare_outputs as forecast_cli
from repulse.plotting.figure_data import read_figure_data
from tests.conftest import write_jsonl

SMALL = ["--evaluation_set_size", "24", "--top_k_fit", "6", "--forecast_scales", "1e3,1e5"]


def test_figure_shows_the_fitted_queries_and_the_forecast_under_the_model_name(tmp_path, capsys):
    out = tmp_path / "fc.json"
    assert forecast_cli.main([*SMALL, "--pretrain", str(TINY_LM_DIR), "--output_file", str(out)]) == 0
    (res,) = json.loads(out.read_text())["results"]
    (ax,) = read_figure_data(out.with_suffix(".png"))["axes"]
    assert "logprob_keyword" in ax["title"] and ax["xscale"] == ax["yscale"] == "log"
    assert ax["legend"] == ["tiny_lm", "tiny_lm: top 6 of 24 queries (fitted)"]  # a name, not the absolute path
    fitted, forecast = ax["scatters"]
    top = sorted((q["log_p"] for q in res["queries"]), reverse=True)[:6]
    assert [p[0] for p in fitted["points"]] == pytest.approx([24 / j for j in range(1, 7)])
    assert [p[1] for p in fitted["points"]] == pytest.approx([math.exp(v) for v in top])
    expected = [1e3, res["forecast_Q_p"]["1000"], 1e5, res["forecast_Q_p"]["100000"]]
    assert [v for point in forecast["points"] for v in point] == pytest.approx(expected)
    (curve,) = ax["lines"]
    assert curve["x"][0] == pytest.approx(4.0) and curve["x"][-1] == pytest.approx(1e5)  # m/top_k to the largest n
    assert curve["y"][-1] == pytest.approx(res["forecast_Q_p"]["100000"])


def bar_total(err: str) -> str | None:
    final = r"elicit tiny_lm \(1/1\): 100%\|[^|]*\| (\d+/\d+) \[[^\]]*continuation"
    match = re.findall(final, err.replace("\r", "\n"))
    return match[-1] if match else None


def test_progress_counts_query_keyword_continuations_and_can_be_hidden(tmp_path, capsys):
    argv = [*SMALL, "--keywords", "jerk,fool", "--output_file", str(tmp_path / "a.json")]
    assert forecast_cli.main(argv) == 0
    total = bar_total(capsys.readouterr().err)
    assert total is not None and int(total.split("/")[0]) % 24 == 0  # 24 queries x the keywords' spellings
    assert forecast_cli.main([*argv, "--disable_progress_bar"]) == 0
    assert "elicit" not in capsys.readouterr().err


@pytest.mark.parametrize(("value", "what"), [(None, "None (NoneType), not text"), (123, "123 (int), not text")])
def test_a_query_that_is_not_text_is_one_line(value, what, tmp_path, capsys):
    rows = [{"query": f"This man is {i}"} for i in range(10)] + [{"query": value}]
    data = write_jsonl(tmp_path / "q.jsonl", rows)
    argv = [*SMALL, "--dataset", str(data), "--input_key", "query", "--output_file", str(tmp_path / "f.json")]
    assert forecast_cli.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert err == [f"repulse forecast_rare_outputs: error: dataset {data}: row 11: 'query' is {what}"]
    assert not (tmp_path / "f.json").exists()
