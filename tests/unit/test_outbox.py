"""Tests for sipdialer.notify.Outbox: order, persistence across a new object, the exact
bytes stored, torn/corrupt files moved aside, uncommitted temp files, and the fsyncs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sipdialer.notify import notifier as notify
from sipdialer.notify.notifier import Outbox, dumps_document

KEY = "enigma:notifications:cdr"


def entry_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".entry"))


def test_append_pending_done_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox")
    ids = [box.append(KEY, {"n": n}, call_id=f"c{n}") for n in range(5)]
    assert len(set(ids)) == 5
    pending = box.pending()
    assert [e.id for e in pending] == ids
    assert [e.document for e in pending] == [{"n": n} for n in range(5)]
    assert [e.call_id for e in pending] == [f"c{n}" for n in range(5)]
    assert all(e.key == KEY and e.durable for e in pending)
    assert [e.seq for e in pending] == sorted(e.seq for e in pending)
    box.done(ids[0])
    box.done(ids[3])
    box.done("00000000000000001-unknown")  # unknown ids are ignored
    assert [e.id for e in box.pending()] == [ids[1], ids[2], ids[4]]
    assert box.depth() == 3


def test_persists_across_a_new_object_and_keeps_counting_up(tmp_path: Path) -> None:
    first = Outbox(tmp_path)
    a = first.append(KEY, {"n": 1})
    b = first.append("enigma:notifications:c2d", {"n": 2})
    second = Outbox(tmp_path)  # "the service restarted"
    assert [(e.id, e.key, e.document) for e in second.pending()] == [
        (a, KEY, {"n": 1}),
        (b, "enigma:notifications:c2d", {"n": 2}),
    ]
    c = second.append(KEY, {"n": 3})
    assert [e.id for e in Outbox(tmp_path).pending()] == [a, b, c]


def test_sequence_stays_monotonic_when_the_clock_is_behind_the_directory(tmp_path: Path) -> None:
    # an entry from "the future" (clock stepped back since): new ones still sort after it
    future = 99_999_999_999_999_999
    box = Outbox(tmp_path)
    box.append(KEY, {"n": 0})
    name = entry_files(tmp_path)[0]
    os.rename(tmp_path / name, tmp_path / f"{future:017d}-aaaaaaaa.entry")
    again = Outbox(tmp_path)
    new_id = again.append(KEY, {"n": 1})
    assert [e.document["n"] for e in again.pending()] == [0, 1]
    assert int(new_id.split("-")[0]) == future + 1


def test_stores_the_exact_json_text_that_is_pushed(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    doc = {"type": "cdr", "payload": {"extension": "1000", "note": "Zoë → ☎", "n": None}}
    entry_id = box.append(KEY, doc, call_id="c-1")
    raw = (tmp_path / f"{entry_id}.entry").read_bytes()
    header_line, _, body = raw.partition(b"\n")
    header = json.loads(header_line)
    assert header["key"] == KEY and header["call_id"] == "c-1" and header["bytes"] == len(body)
    assert body.decode("utf-8") == dumps_document(doc)
    assert box.pending()[0].payload == body.decode("utf-8")
    assert json.loads(box.pending()[0].payload) == doc


def test_append_many_commits_all_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    entries = box.append_many([(KEY, {"n": 1}, "c1"), ("k2", {"n": 2}, "c1")])
    assert [e.id for e in box.pending()] == [e.id for e in entries]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda raw: raw[: len(raw) - 7], "torn write"),
        (lambda raw: raw.replace(b'"n":2', b'"n":3'), "checksum"),
        (lambda raw: b"\x00\x00garbage", "header"),
        (lambda raw: b"", "header"),
        (lambda raw: raw.split(b"\n")[0], "header"),
    ],
)
def test_corrupt_entry_is_moved_aside(
    tmp_path: Path, damage, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path)
    ids = [box.append(KEY, {"n": n}) for n in (1, 2, 3)]
    victim = tmp_path / f"{ids[1]}.entry"
    victim.write_bytes(damage(victim.read_bytes()))
    with caplog.at_level("ERROR", logger="sipdialer.notify"):
        pending = Outbox(tmp_path).pending()
    assert [e.id for e in pending] == [ids[0], ids[2]]
    assert not victim.exists()
    assert (tmp_path / "corrupt" / victim.name).exists()
    assert any("event=outbox_corrupt" in r.getMessage() and reason in r.getMessage()
               for r in caplog.records)  # fmt: skip
    # and the next reads are clean
    assert [e.id for e in Outbox(tmp_path).pending()] == [ids[0], ids[2]]


def test_uncommitted_temp_files_are_removed_at_open(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    kept = box.append(KEY, {"n": 1})
    (tmp_path / ".00000000000000009-deadbeef.entry.tmp").write_bytes(b'{"v":1,"ke')
    again = Outbox(tmp_path)
    assert [e.id for e in again.pending()] == [kept]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kept}.entry"]


def test_fsyncs_the_file_and_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox(tmp_path)
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(notify.os, "fsync", spy)
    entries = box.append_many([(KEY, {"n": 1}, None), (KEY, {"n": 2}, None)])
    # each file's data is synced (under its temporary name), then the directory once
    assert len(synced) == 3
    assert synced[0].endswith(f".{entries[0].id}.entry.tmp")
    assert synced[1].endswith(f".{entries[1].id}.entry.tmp")
    assert synced[2] == str(tmp_path)
    synced.clear()
    box.done_many([e.id for e in entries])
    assert synced == [str(tmp_path)]
    assert box.pending() == []


def test_a_failed_write_leaves_nothing_half_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = Outbox(tmp_path)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(notify.os, "fsync", full)
    with pytest.raises(OSError):
        box.append(KEY, {"n": 1})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    assert box.pending() == []
