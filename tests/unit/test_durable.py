"""The one durable write (:mod:`sipdialer.durable`): files land whole under their names,
a batch costs one directory sync, and a failure leaves no temporary file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sipdialer import durable
from sipdialer.durable import durable_write, temp_path


def test_a_batch_is_written_synced_renamed_and_the_directory_synced_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", spy)
    (tmp_path / "a").write_bytes(b"old")
    durable_write([(tmp_path / "a", b"new a"), (tmp_path / "b", b"b")], mode=0o640)
    assert synced == [str(tmp_path / ".a.tmp"), str(tmp_path / ".b.tmp"), str(tmp_path)]
    assert (tmp_path / "a").read_bytes() == b"new a" and (tmp_path / "b").read_bytes() == b"b"
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o640 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_a_failure_removes_the_temporary_files_and_keeps_the_old_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "fsync", full)
    with pytest.raises(OSError):
        durable_write([(tmp_path / "a", b"new")])
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert (tmp_path / "a").read_bytes() == b"old"


def test_exclusive_refuses_a_temporary_file_already_there(tmp_path: Path) -> None:
    temp_path(tmp_path / "a").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        durable_write([(tmp_path / "a", b"x")], exclusive=True)
    durable_write([(tmp_path / "a", b"x")])  # not exclusive: overwritten
    assert (tmp_path / "a").read_bytes() == b"x"


def test_one_directory_per_batch(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError):
        durable_write([(tmp_path / "a", b""), (tmp_path / "sub" / "b", b"")])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
