"""``core.files``: atomic writes get the permissions a plain ``open()`` would give."""

from __future__ import annotations

import os
import stat

import pytest

from mobilenets.core import files

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_get_the_mode_open_would_give(tmp_path, umask):
    umask(0o022)
    files.atomic_write_text(tmp_path / "report.html", "<html>")
    files.atomic_write_bytes(tmp_path / "model.safetensors", b"\0" * 8)
    files.atomic_write(tmp_path / "model.onnx", lambda temporary: temporary.write_bytes(b"onnx"))
    (tmp_path / "plain.txt").write_text("open()")
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == dict.fromkeys(
        ["report.html", "model.safetensors", "model.onnx", "plain.txt"], 0o644
    )
    umask(0o077)
    files.atomic_write_text(tmp_path / "private.json", "{}")
    assert mode(tmp_path / "private.json") == 0o600  # the umask is honoured, not a fixed 0o644


def test_replacing_keeps_the_existing_files_mode_like_open_does(tmp_path, umask):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    os.chmod(path, 0o640)
    files.atomic_write_text(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o640

    # a writer that replaces the temporary file (its own temp + rename) still ends with the right mode
    def replace(temporary):
        (tmp_path / "elsewhere").write_text("x")
        os.chmod(tmp_path / "elsewhere", 0o600)
        os.replace(tmp_path / "elsewhere", temporary)

    files.atomic_write(tmp_path / "config.json", replace)
    assert mode(tmp_path / "config.json") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.json"]  # no temporary left


def test_the_umask_is_never_touched_so_other_threads_are_safe(tmp_path, umask, monkeypatch):
    umask(0o022)

    def no_umask(value):  # os.umask(0) then back would briefly give other threads' files mode 0o666
        raise AssertionError("atomic writes must not change the process umask")

    monkeypatch.setattr(os, "umask", no_umask)
    files.atomic_write_text(tmp_path / "search.json", "{}")
    monkeypatch.undo()
    assert mode(tmp_path / "search.json") == 0o644


def test_check_writable_without_create_leaves_nothing_behind(tmp_path):
    assert files.check_writable(tmp_path / "a" / "b", create=False) == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(files.MobilenetsError, match="a file is in the way"):
        files.check_writable(tmp_path / "file" / "sub", create=False)
