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


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_every_file_in_an_atomic_folder_follows_the_umask(tmp_path, mask):
    """safetensors (and tempfile) create 0600 files; outputs get what the user's umask gives."""
    import torch
    from safetensors.torch import save_file

    def writer(d):
        save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
        (d / "sub").mkdir(mode=0o700)
        save_file({"w": torch.zeros(2)}, str(d / "sub" / "head.safetensors"))

    old = os.umask(mask)
    try:
        folder = write_dir_atomic(tmp_path / "final", writer)
        single = write_atomic(tmp_path / "one.safetensors", lambda t: save_file({"w": torch.zeros(1)}, str(t)))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*"), single]}
    files, dirs = 0o666 & ~mask, 0o777 & ~mask
    assert modes == {
        "final": dirs,
        "model.safetensors": files,
        "sub": dirs,
        "head.safetensors": files,
        single.name: files,
    }


def test_paths_that_cannot_be_written_are_user_errors(tmp_path):
    from repulse.infra.errors import UserError

    (tmp_path / "a_folder").mkdir()
    with pytest.raises(UserError, match=f"cannot write {tmp_path / 'a_folder'}: it is a folder"):
        write_text_atomic(tmp_path / "a_folder", "x")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="cannot write the folder .*a_file: a file of that name exists"):
        write_dir_atomic(tmp_path / "a_file", lambda d: None)
    with pytest.raises(UserError, match="cannot write .*a_file/sub/out.json"):
        write_json_atomic(tmp_path / "a_file" / "sub" / "out.json", {})
    with pytest.raises(UserError, match="cannot write /proc/repulse_test/out.json"):
        write_json_atomic("/proc/repulse_test/out.json", {})


def test_remove_stale_temporaries_touches_only_what_atomic_writes_leave(tmp_path):
    from repulse.infra.files import remove_stale_temporaries

    (tmp_path / ".metrics.jsonl.k2j3h4g5.repulse-tmp").write_text("half")
    (tmp_path / ".final.ab12cd34.repulse-tmp").mkdir()
    (tmp_path / ".final.abcd_123").mkdir()  # an older version's mkdtemp name
    (tmp_path / ".final_proposal.old").mkdir()  # swapped out, replacement never arrived: restored
    for keep in (".env", ".final.notes", "final.tmp", ".git"):
        (tmp_path / keep).write_text("user data")
    done = remove_stale_temporaries(tmp_path)
    assert len(done) == 4 and any("restored" in line for line in done)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".env",
        ".final.notes",
        ".git",
        "final.tmp",
        "final_proposal",
    ]
    assert remove_stale_temporaries(tmp_path / "missing") == []
