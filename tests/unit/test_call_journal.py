"""The journal of live calls (``sipdialer.engine.journal``): what it takes from real legs
(driven through a simulated trunk on a sans-IO user agent), its atomic and durable
writes, and reading back after a crash — a torn or corrupt file is set aside with a log
line, never a crash."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipdialer.engine import journal as journal_module
from sipdialer.engine.causes import Ending, classify
from sipdialer.engine.cdr import CallRecord
from sipdialer.engine.journal import (
    CallJournal,
    JournaledCall,
    JournaledLeg,
    decode_call,
    encode_call,
    journal_dir_for,
    leg_entry,
)
from sipdialer.engine.leg import LegState
from sipdialer.sip.message import make_response
from tests.fixtures.sans_io_sip import (
    TRUNK,
    answer,
    last_invite,
    ring,
    sans_io_user_agent,
    trunk_leg,
)

CALL_ID = "0f" * 16


def record(**changes: object) -> CallRecord:
    base = CallRecord(
        id=CALL_ID,
        call_ref="ref-1",
        agent="1000",
        callee="0820001234",
        outbound_id="0123456789",
        created_at=1_800_000_000.0,
        agent_dialed_at=1_800_000_000.1,
        agent_answered_at=1_800_000_003.0,
        agent_status=200,
        callee_dialed_at=1_800_000_003.1,
        sip_call_ids={"agent": "a-call-id", "callee": "c-call-id"},
    )
    return dataclasses.replace(base, **changes)


def bridged_call() -> JournaledCall:
    """A bridged call whose two legs went through the simulated trunk for real."""
    ua, transport = sans_io_user_agent()
    agent, callee = trunk_leg(ua, "agent", "1000"), trunk_leg(ua, "callee")
    for leg in (agent, callee):
        ring(transport, leg)
        answer(transport, leg)
    return JournaledCall(
        record=record(callee_answered_at=1_800_000_005.0, bridged_at=1_800_000_005.0),
        state="bridged",
        legs=(leg_entry(agent), leg_entry(callee)),
        recording_path="/var/lib/sipdialer/recordings/AbC.wav",
        public_url="https://dialer.example.com",
    )


# ---- what a leg's entry holds ----------------------------------------------------------------


def test_a_ringing_leg_keeps_the_invite_to_cancel_the_one_sent_after_the_challenge() -> None:
    ua, transport = sans_io_user_agent()
    leg = trunk_leg(ua)
    ring(transport, leg)
    entry = leg_entry(leg)
    invite = last_invite(transport, leg)  # the second INVITE, with credentials
    assert entry.state == "proceeding" and entry.needs_cancel and not entry.needs_bye
    assert entry.invite is not None and entry.dialog is None
    assert entry.invite.via == invite.headers.get("Via")
    assert entry.invite.cseq == 2 == invite.cseq()[0]
    assert (entry.invite.uri, entry.invite.call_id) == (invite.uri, leg.call_id)
    assert entry.invite.from_ == invite.headers.get("From")
    assert f"tag={leg.from_tag}" in entry.invite.from_
    assert (entry.dest, entry.transport, entry.auth_user) == (TRUNK, "UDP", "dialer")


def test_an_answered_leg_keeps_its_dialog_and_never_the_password() -> None:
    ua, transport = sans_io_user_agent()
    leg = trunk_leg(ua)
    ring(transport, leg)
    answer(transport, leg)
    entry = leg_entry(leg)
    assert entry.state == "confirmed" and entry.needs_bye and not entry.needs_cancel
    d = entry.dialog
    assert d is not None and entry.invite is None
    assert (d.call_id, d.local_tag, d.remote_tag) == (leg.call_id, leg.from_tag, "callee-tag")
    assert d.remote_target == "sip:callee@192.0.2.77:5070"
    # Record-Route reversed: the order a UAC sends its Route headers in
    assert d.route_set == ("<sip:192.0.2.51:5062;lr>", "<sip:192.0.2.50;lr;ftag=x>")
    assert d.local_seq == 2
    call = JournaledCall(record=record(), state="callee_ringing", legs=(entry,))
    data = encode_call(call)
    assert b"s3cret" not in data and b"dialer" in data  # the user name, not the password


def test_a_leg_that_has_ended_keeps_neither() -> None:
    ua, transport = sans_io_user_agent()
    leg = trunk_leg(ua)
    ring(transport, leg)
    transport.deliver(make_response(last_invite(transport, leg), 486, to_tag="busy"), TRUNK)
    entry = leg_entry(leg)
    assert entry.state == LegState.TERMINATED.value
    assert (entry.invite, entry.dialog, entry.needs_bye, entry.needs_cancel) == (
        None,
        None,
        False,
        False,
    )


# ---- the file ------------------------------------------------------------------------------


def test_a_call_round_trips_through_its_file(tmp_path: Path) -> None:
    call = dataclasses.replace(
        bridged_call(),
        state="ended",
        outcome=classify(Ending(kind="bye", leg="callee", bridged=True)),
    )
    journal = CallJournal(tmp_path / "j")
    assert journal.record(call) is True
    assert journal.ids() == [CALL_ID]
    [loaded] = CallJournal(tmp_path / "j").load()
    assert loaded.written_at == pytest.approx((tmp_path / "j" / f"{CALL_ID}.call").stat().st_mtime)
    assert dataclasses.replace(loaded, written_at=None) == call
    assert loaded.outcome is not None and loaded.outcome.leg == "callee"


def test_writes_are_atomic_and_durable_temp_fsync_rename_fsync_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = CallJournal(tmp_path)
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        steps.append("fsync dir" if Path(target) == tmp_path else f"fsync {Path(target).name}")
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        steps.append(f"rename {Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(journal_module.os, "fsync", fsync)
    monkeypatch.setattr(journal_module.os, "replace", replace)
    call = bridged_call()
    journal.record(call)
    name = f"{CALL_ID}.call"
    assert steps == [f"fsync .{name}.tmp", f"rename .{name}.tmp -> {name}", "fsync dir"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert decode_call((tmp_path / name).read_bytes()) == call


def test_an_unchanged_call_is_not_written_again(tmp_path: Path) -> None:
    journal = CallJournal(tmp_path)
    call = bridged_call()
    assert journal.record(call) is True
    assert journal.record(dataclasses.replace(call)) is False
    assert journal.record(dataclasses.replace(call, state="ended")) is True


def test_a_crash_before_the_rename_leaves_the_previous_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    call = bridged_call()
    CallJournal(tmp_path).record(call)
    # the process died while writing the next version: a torn temporary file
    newer = encode_call(dataclasses.replace(call, state="ended"))
    (tmp_path / f".{CALL_ID}.call.tmp").write_bytes(newer[: len(newer) // 2])
    with caplog.at_level(logging.WARNING, "sipdialer.journal"):
        journal = CallJournal(tmp_path)
    assert "event=journal_uncommitted_removed" in caplog.text
    assert [c.state for c in journal.load()] == ["bridged"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{CALL_ID}.call"]


def test_a_disk_error_is_logged_and_counted_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    journal = CallJournal(tmp_path)
    call = bridged_call()
    journal.record(call)

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "replace", full_disk)
    with caplog.at_level(logging.ERROR, "sipdialer.journal"):
        assert journal.record(dataclasses.replace(call, state="ended")) is False
    assert journal.write_errors_total == 1
    assert "event=journal_write_failed" in caplog.text and "No space left" in caplog.text
    assert [c.state for c in CallJournal(tmp_path).load()] == ["bridged"]
    assert not list(tmp_path.glob(".*.tmp"))


def _torn(data: bytes) -> bytes:
    return data[:-20]


def _flipped(data: bytes) -> bytes:
    at = len(data) - 10
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _no_header(data: bytes) -> bytes:
    return data.partition(b"\n")[2]


def _not_a_call(data: bytes) -> bytes:
    """A well-formed file (checksum and all) whose body is not a call."""
    body = b'{"state":"bridged"}'
    digest = hashlib.sha256(body).hexdigest()
    return f'{{"v":1,"bytes":{len(body)},"sha256":"{digest}"}}\n'.encode() + body


def _empty(data: bytes) -> bytes:
    return b""


@pytest.mark.parametrize("damage", [_torn, _flipped, _no_header, _not_a_call, _empty])
def test_a_torn_or_corrupt_file_is_set_aside_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[bytes], bytes]
) -> None:
    good = bridged_call()
    other_id = "1e" * 16
    journal = CallJournal(tmp_path)
    journal.record(good)
    journal.record(dataclasses.replace(good, record=record(id=other_id)))
    bad = tmp_path / f"{other_id}.call"
    bad.write_bytes(damage(bad.read_bytes()))
    with caplog.at_level(logging.ERROR, "sipdialer.journal"):
        calls = CallJournal(tmp_path).load()
    assert [c.id for c in calls] == [CALL_ID]
    assert not bad.exists() and (tmp_path / "corrupt" / bad.name).exists()
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("event=journal_corrupt file=") and "moved_to=" in line


def test_a_file_holding_another_call_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    call = bridged_call()
    (tmp_path / f"{'2d' * 16}.call").write_bytes(encode_call(call))
    with caplog.at_level(logging.ERROR, "sipdialer.journal"):
        assert CallJournal(tmp_path).load() == []
    assert "event=journal_corrupt" in caplog.text and "holds call" in caplog.text


def test_forget_deletes_the_file_and_unknown_calls_are_fine(tmp_path: Path) -> None:
    journal = CallJournal(tmp_path)
    journal.record(bridged_call())
    journal.forget(CALL_ID)
    journal.forget(CALL_ID)
    journal.forget("../../etc/passwd")  # not a call id: nothing happens outside
    assert journal.ids() == [] and journal.load() == []
    assert journal.write_errors_total == 1  # the bad id was logged, not raised


def test_loading_is_oldest_call_first(tmp_path: Path) -> None:
    journal = CallJournal(tmp_path)
    base = bridged_call()
    for n, created in enumerate((30.0, 10.0, 20.0)):
        journal.record(dataclasses.replace(base, record=record(id=f"{n:032x}", created_at=created)))
    assert [c.record.created_at for c in journal.load()] == [10.0, 20.0, 30.0]


def test_the_journal_sits_next_to_the_outbox(tmp_path: Path) -> None:
    assert journal_dir_for(tmp_path / "outbox") == tmp_path / "outbox.journal"
    assert journal_dir_for(str(tmp_path / "outbox") + "/") == tmp_path / "outbox.journal"


def test_legs_of_every_shape_survive_the_json(tmp_path: Path) -> None:
    leg = JournaledLeg(name="agent", state="idle", dest=("2001:db8::1", 5061), transport="TLS")
    call = JournaledCall(record=record(), state="created", legs=(leg,))
    assert decode_call(encode_call(call)) == call


def test_in_the_background_the_newest_state_reaches_the_disk_off_the_callers_thread(
    tmp_path: Path,
) -> None:
    journal = CallJournal(tmp_path, background=True)
    call = bridged_call()
    # the writer thread is stuck on its first write (a FIFO nobody reads yet): the
    # caller is not, and its later states replace what is queued
    fifo = tmp_path / f".{CALL_ID}.call.tmp"
    os.mkfifo(fifo)
    assert journal.record(dataclasses.replace(call, state="agent_ringing")) is True
    for _ in range(500):  # the thread took that state and is stuck opening the FIFO
        if journal._busy:
            break
        time.sleep(0.01)
    assert journal._busy
    for state in ("callee_ringing", "bridged"):
        assert journal.record(dataclasses.replace(call, state=state)) is True
    assert journal.flush(timeout=0.2) is False  # still blocked on the FIFO
    assert not (tmp_path / f"{CALL_ID}.call").exists()
    with open(fifo, "rb") as reader:  # unblock the thread: it wrote the first state there
        first = reader.read()
    assert b'"agent_ringing"' in first
    assert journal.flush(timeout=5)
    # the batch after it held only the newest state
    assert [c.state for c in CallJournal(tmp_path).load()] == ["bridged"]
    journal.forget(CALL_ID)
    journal.close()
    assert not (tmp_path / f"{CALL_ID}.call").exists()
    # closed: writes are made at once by the caller
    assert journal.record(call) is True
    assert [c.state for c in CallJournal(tmp_path).load()] == ["bridged"]


def test_in_the_background_a_disk_error_is_logged_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    journal = CallJournal(tmp_path, background=True)

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "replace", full_disk)
    with caplog.at_level(logging.ERROR, "sipdialer.journal"):
        assert journal.record(bridged_call()) is True  # queued
        assert journal.flush(timeout=5)
    journal.close()
    assert journal.write_errors_total == 1
    assert "event=journal_write_failed" in caplog.text
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.call"))


def test_the_document_is_what_dataclasses_asdict_gives_byte_for_byte() -> None:
    """The journal builds its JSON without ``asdict``'s deep copies; the bytes must not
    change (files written before still decode, and the same call writes the same file)."""
    import json

    def reference(call: JournaledCall) -> bytes:
        legs = []
        for leg in call.legs:
            doc = dataclasses.asdict(leg)
            doc["dest"] = list(leg.dest)
            legs.append(doc)
        document = {
            "record": dataclasses.asdict(call.record),
            "state": call.state,
            "legs": legs,
            "recording_path": call.recording_path,
            "public_url": call.public_url,
            "outcome": dataclasses.asdict(call.outcome) if call.outcome is not None else None,
        }
        return json.dumps(
            document, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()

    bridged = bridged_call()
    ended = dataclasses.replace(
        bridged, outcome=classify(Ending(kind="bye", leg="callee", bridged=True)), state="ended"
    )
    ua, transport = sans_io_user_agent()
    ringing_leg = trunk_leg(ua, "agent", "1000")
    ring(transport, ringing_leg)
    ringing = dataclasses.replace(bridged, legs=(leg_entry(ringing_leg),), state="agent_ringing")
    assert ringing.legs[0].invite is not None and bridged.legs[0].dialog is not None
    for call in (bridged, ended, ringing):
        body = encode_call(call).partition(b"\n")[2]
        assert body == reference(call)
        assert decode_call(encode_call(call)) == call
