"""Attack targets from CSV (bad files give one-line errors) and the attack flag groups."""

from __future__ import annotations

from pathlib import Path

import pytest

from repulse.attacks.targets import load_targets
from repulse.cli import evaluate_gcg
from repulse.config.attack import AttackEvalArgs, BEASTArgs, GCGArgs
from repulse.config.fields import ConfigError
from repulse.infra.errors import DataError

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


def test_embedded_defaults_and_max_targets() -> None:
    rows = load_targets(None, "behaviors", max_targets=3)
    assert len(rows) == 3 and all(goal and target for goal, target in rows)
    strings = load_targets(None, "strings", max_targets=2)
    assert [goal for goal, _ in strings] == ["", ""]


@pytest.mark.parametrize(
    ("text", "match"),
    [("goal,other\na,b\n", "missing column 'target'"), ("goal,target\n", "no rows"), ("goal,target\na,\n", "empty")],
)
def test_bad_csv_errors_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        load_targets(str(path), "behaviors")
    with pytest.raises(DataError, match="no such file"):
        load_targets(str(tmp_path / "missing.csv"))


def test_a_latin1_csv_is_one_line_naming_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("goal,target\nwrite a poem,Sure\nécris,Oui\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"t.csv: not UTF-8 text \(byte 0xe9 on line 3\); save the CSV as UTF-8"):
        load_targets(str(path), "behaviors")


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("goal,target\nwrite a poem,Sure\n".encode("utf-8-sig"))
    assert load_targets(str(path), "behaviors") == [("write a poem", "Sure")]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")
def test_reads_the_shared_advbench_csvs() -> None:
    rows = load_targets(str(SHARED / "harmful_behaviors_custom.csv"), "behaviors")
    assert len(rows) >= 5 and all(goal for goal, _ in rows)
    advbench = SHARED / "advbench" / "harmful_strings.csv"
    if advbench.is_file():
        assert load_targets(str(advbench), "strings", max_targets=5)[0][0] == ""


def test_flag_validation() -> None:
    assert AttackEvalArgs(scenario="behaviours").scenario == "behaviors"
    assert AttackEvalArgs().reward_input(None) == "response"
    assert AttackEvalArgs().reward_input("rm") == "prompt_response"
    assert AttackEvalArgs(rm_input="response").reward_input("rm") == "response"
    for bad in [
        ["--atk_success_criteria", "judge"],
        ["--judge_pretrain", "j"],
        ["--scenario", "x"],
        ["--reward_pretrain", "rm"],
        ["--load_checkpoint"],
        ["--rm_exclude_adv_suffix"],
        ["--parameterization", "q_mlp"],
    ]:
        with pytest.raises(ConfigError, match=bad[0]):
            evaluate_gcg.parse_args(bad)
    with pytest.raises(ConfigError, match="--gcg_topk"):
        GCGArgs(gcg_topk=0)
    with pytest.raises(ConfigError, match="--beast_top_p"):
        BEASTArgs(beast_top_p=0.0)
