"""load_source for each file format and `datasets` folders; blend_datasets; load_rows' embedded default."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import Counter

import pandas as pd
import pytest

from repulse.config.common import DataArgs
from repulse.data.loading import blend_datasets, load_rows, load_source
from repulse.infra.errors import DataError
from tests.conftest import write_jsonl

ROWS = [{"input": f"q{i}", "output": f"a{i}"} for i in range(5)]


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    """`datasets` caches what it reads; keep that cache inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def write_format(folder, ext: str):
    frame = pd.DataFrame(ROWS)
    path = folder / f"rows.{ext}"
    if ext == "json":
        path.write_text(json.dumps(ROWS))
    elif ext == "jsonl":
        write_jsonl(path, ROWS)
    elif ext == "csv":
        frame.to_csv(path, index=False)
    elif ext == "parquet":
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("ext", ["json", "jsonl", "csv", "parquet"])
def test_load_each_file_format(tmp_path, ext):
    ds = load_source(str(write_format(tmp_path, ext)))
    assert sorted(ds.column_names) == ["input", "output"]
    assert [dict(r) for r in ds] == ROWS


def test_uppercase_extension(tmp_path):
    path = tmp_path / "ROWS.JSONL"
    write_jsonl(path, ROWS)
    assert len(load_source(str(path))) == 5


def test_load_saved_dataset_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    ds = load_source(str(tmp_path / "saved"))
    assert [dict(r) for r in ds] == ROWS


def test_load_saved_dataset_dict_split(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:2])}
    ).save_to_disk(str(folder))
    assert len(load_source(str(folder))) == 5  # default split "train"
    assert [r["input"] for r in load_source(str(folder), split="test")] == ["q0", "q1"]
    with pytest.raises(DataError) as exc:
        load_source(str(folder), split="validation")
    message = str(exc.value)
    assert "validation" in message and str(folder) in message
    assert "test" in message and "train" in message  # lists the splits it has


@pytest.mark.parametrize("name", ["missing.jsonl", "sub/missing.parquet"])
def test_missing_file(tmp_path, name):
    path = str(tmp_path / name)
    with pytest.raises(DataError) as exc:
        load_source(path)
    assert path in str(exc.value)


def test_missing_relative_path():
    with pytest.raises(DataError, match="./no_such_folder_here"):
        load_source("./no_such_folder_here")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "rows.xml"
    path.write_text("<rows/>")
    with pytest.raises(DataError) as exc:
        load_source(str(path))
    assert str(path) in str(exc.value)
    assert ".xml" in str(exc.value)


def test_corrupt_file_is_a_data_error(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_text("this is not parquet")
    with pytest.raises(DataError, match=str(path)):
        load_source(str(path))


def make_sources(tmp_path, n_a: int = 20, n_b: int = 10):
    a = write_jsonl(tmp_path / "a.jsonl", [{"input": f"a{i}", "output": "A"} for i in range(n_a)])
    # b has an extra column that blending must drop.
    b = write_jsonl(tmp_path / "b.jsonl", [{"input": f"b{i}", "output": "B", "extra": i} for i in range(n_b)])
    return str(a), str(b)


def test_blend_two_files(tmp_path):
    a, b = make_sources(tmp_path)
    blended = blend_datasets([a, b], [0.7, 0.3], ["input", "output"], seed=1)
    assert blended.column_names == ["input", "output"]
    sources = Counter(r["output"] for r in blended)
    assert set(sources) == {"A", "B"}
    # "all_exhausted": every example of every source appears at least once.
    inputs = {r["input"] for r in blended}
    assert inputs == {f"a{i}" for i in range(20)} | {f"b{i}" for i in range(10)}
    assert sources["A"] > sources["B"]  # a is drawn with 0.7


def test_blend_is_deterministic_for_a_seed(tmp_path):
    a, b = make_sources(tmp_path)
    first = [r["input"] for r in blend_datasets([a, b], [0.5, 0.5], ["input"], seed=3)]
    second = [r["input"] for r in blend_datasets([a, b], [0.5, 0.5], ["input"], seed=3)]
    assert first == second


@pytest.mark.parametrize("cap", [1, 7, 29])
def test_blend_max_samples(tmp_path, cap):
    a, b = make_sources(tmp_path)
    assert len(blend_datasets([a, b], [0.7, 0.3], ["input", "output"], max_samples=cap)) == cap


def test_max_samples_above_size_keeps_everything(tmp_path):
    a, _ = make_sources(tmp_path)
    assert len(blend_datasets([a], [1.0], ["input"], max_samples=1000)) == 20


def test_blend_missing_key_names_file_and_key(tmp_path):
    a, b = make_sources(tmp_path)
    with pytest.raises(DataError) as exc:
        blend_datasets([a, b], [0.5, 0.5], ["input", "extra"])
    assert a in str(exc.value)  # a.jsonl lacks "extra"; b has it
    assert "extra" in str(exc.value)


def test_blend_probs_count_mismatch(tmp_path):
    a, b = make_sources(tmp_path)
    with pytest.raises(DataError, match="--dataset_probs"):
        blend_datasets([a, b], [1.0], ["input"])


def write_empty(folder, kind: str) -> str:
    """A data source with no rows, in one of several shapes."""
    if kind == "saved_folder":
        import datasets

        datasets.Dataset.from_dict({"input": [], "output": []}).save_to_disk(str(folder / "no_rows"))
        return str(folder / "no_rows")
    name, text = {
        "zero_byte_jsonl": ("rows.jsonl", ""),
        "header_only_csv": ("rows.csv", "input,output\n"),
        "empty_json_list": ("rows.json", "[]"),
    }[kind]
    path = folder / name
    path.write_text(text)
    return str(path)


EMPTY_KINDS = ["zero_byte_jsonl", "header_only_csv", "empty_json_list", "saved_folder"]


@pytest.mark.parametrize("kind", EMPTY_KINDS)
def test_blend_empty_source_names_it(tmp_path, kind):
    a, _ = make_sources(tmp_path)
    empty = write_empty(tmp_path, kind)
    with pytest.raises(DataError) as exc:
        blend_datasets([a, empty], [0.5, 0.5], ["input", "output"])
    assert str(exc.value).startswith(f"dataset {empty}")


@pytest.mark.parametrize("kind", EMPTY_KINDS)
def test_empty_source_says_empty(tmp_path, kind):
    empty = write_empty(tmp_path, kind)
    with pytest.raises(DataError) as exc:
        blend_datasets([empty], [1.0], ["input"])
    assert "empty" in str(exc.value).replace(empty, "")  # the path itself may contain the test's name


def fake_assets(monkeypatch, paths: dict[str, str]) -> list[str]:
    """Stand-in for repulse.assets: `default_dataset(kind)` -> the path registered for that kind."""
    asked: list[str] = []

    def default_dataset(kind: str) -> str:
        asked.append(kind)
        return paths[kind]

    monkeypatch.setitem(sys.modules, "repulse.assets", types.SimpleNamespace(default_dataset=default_dataset))
    return asked


def test_load_rows_uses_default_when_no_dataset(tmp_path, monkeypatch):
    default, other = make_sources(tmp_path)
    asked = fake_assets(monkeypatch, {"sft": default, "preference": other})
    rows = load_rows(DataArgs(), ["input", "output"], "sft", seed=0)
    assert asked == ["sft"]
    assert len(rows) == 20
    assert {r["output"] for r in rows} == {"A"}


def test_load_rows_prefers_dataset_and_applies_probs(tmp_path, monkeypatch):
    default, other = make_sources(tmp_path)
    asked = fake_assets(monkeypatch, {"sft": default})
    data = DataArgs(dataset=other, max_samples=4)
    rows = load_rows(data, ["input", "output"], "sft", seed=0)
    assert asked == []
    assert [r["output"] for r in rows] == ["B"] * 4
    with pytest.raises(Exception, match="--dataset_probs"):
        load_rows(DataArgs(dataset=f"{default},{other}", dataset_probs="0.5,0.4"), ["input"], None, seed=0)


def test_load_rows_without_any_dataset():
    with pytest.raises(DataError, match="--dataset"):
        load_rows(DataArgs(), ["input"], None, seed=0)


def test_load_rows_eval_split(tmp_path):
    a, b = make_sources(tmp_path)
    assert load_rows(DataArgs(), ["input"], "sft", seed=0, eval_split=True) is None
    rows = load_rows(DataArgs(eval_dataset=f"{a},{b}"), ["input", "output"], None, seed=0, eval_split=True)
    assert {r["output"] for r in rows} == {"A", "B"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", b'{"input": "q", "output": "a"}\n{"input": "q", "output"}\n', "line 2 is not valid JSON"),
        ("a.json", b'[{"input": "q", "output": "a"},]', "not valid JSON: Expecting value at line 1"),
        ("a.csv", "input,output\nq,caf\u00e9\n".encode("latin-1"), "line 2 is not UTF-8 text (byte 0xe9)"),
    ],
)
def test_unreadable_text_files_name_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"dataset {path}: cannot load ({message}")):
        load_source(str(path))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"input": "q", "output": "a"}, {"input": None, "output": "a"}],
            "row 2 has no value \\(null\\) for key 'input'",
        ),
        ([{"input": 12, "output": "a"}, {"input": 13, "output": "a"}], "key 'input' holds int64 values, not text"),
        ([{"input": "q", "output": 1.5}], "key 'output' holds double values, not text"),
    ],
)
def test_null_and_numeric_text_is_a_data_error(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=f"dataset {path}: {message}"):
        load_rows(DataArgs(dataset=str(path)), ["input", "output"], None, seed=0)


def test_a_latin1_jsonl_is_caught_when_loaded_not_when_read(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"input": "q", "output": "a"}\n{"input": "q", "output": "caf\u00e9"}\n'.encode("latin-1"))
    message = f"dataset {path}: key 'output': line 2 is not UTF-8 text (byte 0xe9)"
    with pytest.raises(DataError, match=re.escape(message)):
        load_rows(DataArgs(dataset=str(path)), ["input", "output"], None, seed=0)


def test_non_text_label_columns_may_be_numbers(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"input": "q", "label": 1}, {"input": "r", "label": 0}])
    assert len(load_rows(DataArgs(dataset=str(path)), ["input", "label"], None, seed=0)) == 2
