"""Atomic writes: the target is either the old content or the new, never half-written; no temp files remain."""

from __future__ import annotations

import json
import os

import pytest

from repulse.infra.files import (
    write_atomic,
    write_dir_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)


class Boom(RuntimeError):
    pass


def test_write_atomic_writes_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_atomic(target, lambda tmp: tmp.write_text("hello"))
    assert target.read_text() == "hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_write_atomic_failing_writer_keeps_old_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def writer(tmp):
        tmp.write_text("half")
        raise Boom("disk on fire")

    with pytest.raises(Boom):
        write_atomic(target, writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # temp file removed


def test_write_atomic_failing_writer_creates_nothing(tmp_path):
    with pytest.raises(Boom):
        write_atomic(tmp_path / "new.txt", lambda tmp: (_ for _ in ()).throw(Boom()))
    assert list(tmp_path.iterdir()) == []


def test_json_helpers(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1, "p": tmp_path})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1, "p": str(tmp_path)}
    write_jsonl_atomic(tmp_path / "b.jsonl", [{"i": 0}, {"i": 1}])
    assert [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()] == [{"i": 0}, {"i": 1}]
    write_text_atomic(tmp_path / "b.jsonl", "replaced")
    assert (tmp_path / "b.jsonl").read_text() == "replaced"


def test_write_dir_atomic_creates(tmp_path):
    target = tmp_path / "model"
    write_dir_atomic(target, lambda d: (d / "w.bin").write_text("1"))
    assert (target / "w.bin").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_write_dir_atomic_replaces_existing_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    (target / "keep_name.txt").write_text("old")

    def writer(d):
        (d / "keep_name.txt").write_text("new")
        (d / "sub").mkdir()
        (d / "sub" / "x").write_text("y")

    write_dir_atomic(target, writer)
    assert sorted(p.name for p in target.iterdir()) == ["keep_name.txt", "sub"]  # stale file gone
    assert (target / "keep_name.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no .old or temp folder left


def test_write_dir_atomic_failing_writer_keeps_old_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "w.bin").write_text("old")

    def writer(d):
        (d / "w.bin").write_text("half")
        raise Boom()

    with pytest.raises(Boom):
        write_dir_atomic(target, writer)
    assert (target / "w.bin").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_outputs_honour_umask(tmp_path, umask_022):
    file = write_text_atomic(tmp_path / "metrics.jsonl", "{}\n")
    folder = write_dir_atomic(tmp_path / "final", lambda d: (d / "config.json").write_text("{}"))
    assert (file.stat().st_mode & 0o777, folder.stat().st_mode & 0o777) == (0o644, 0o755)
