"""Recovery after a crash (``sipdialer.engine.recovery``): the requests it builds from a
journal — checked against what the live leg and endpoint would have sent — the calls of
each state replayed on a sans-IO user agent, digest on a challenged BYE, a late answer to
a cancelled INVITE, and the WAV repair. No sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from sipdialer.engine import recovery as recovery_module
from sipdialer.engine.causes import Ending, classify
from sipdialer.engine.cdr import CallRecord, Cdr, MemorySink
from sipdialer.engine.journal import CallJournal, JournaledCall, JournaledDialog, leg_entry
from sipdialer.engine.leg import Leg
from sipdialer.engine.recovery import (
    CallRecovery,
    bye_request,
    cancel_request,
    next_hop,
    recovered_cdr,
    repair_wav_sizes,
)
from sipdialer.sip.address import parse_address
from sipdialer.sip.message import Headers, Request, make_response, parse_message
from sipdialer.sip.timers import TimerConfig
from tests.fixtures.sans_io_sip import (
    CHALLENGE,
    OUR_HOST,
    OUR_PORT,
    TRUNK,
    SansIoTransport,
    answer,
    last_invite,
    ring,
    sans_io_user_agent,
    trunk_leg,
)

CALL_ID = "5a" * 16
T0 = 1_800_000_000.0
PHONE = ("192.0.2.77", 5070)


def record(**changes: object) -> CallRecord:
    return dataclasses.replace(
        CallRecord(
            id=CALL_ID,
            call_ref="ref-9",
            agent="1000",
            callee="0820001234",
            outbound_id="0123456789",
            created_at=T0,
            agent_dialed_at=T0 + 0.1,
        ),
        **changes,
    )


def tags(request: Request) -> tuple[str | None, str | None]:
    return request.from_addr().tag, request.to_addr().tag


# ---- the requests ----------------------------------------------------------------------------


def test_bye_from_a_journaled_dialog() -> None:
    journaled = JournaledDialog(
        call_id="c1",
        local_tag="ours",
        remote_tag="theirs",
        local_address='"0123456789" <sip:0123456789@trunk.test>',
        remote_address="<sip:0820001234@trunk.test>",
        local_seq=7,
        remote_seq=3,
        remote_target="sip:callee@192.0.2.77:5070;transport=udp",
        route_set=("<sip:192.0.2.50;lr;ftag=x>", "<sip:192.0.2.51:5062;lr>"),
    )
    dialog = journaled.dialog()
    bye = bye_request(dialog)
    assert bye.method == "BYE"
    assert bye.uri == "sip:callee@192.0.2.77:5070;transport=udp"  # the remote target
    assert bye.headers.get_all("Route") == list(journaled.route_set)  # in order
    assert bye.cseq() == (8, "BYE")  # the last CSeq + 1
    assert tags(bye) == ("ours", "theirs")
    assert bye.call_id == "c1"
    assert parse_address(bye.headers.get("From") or "").uri == "sip:0123456789@trunk.test"
    assert bye.headers.get("Reason") == 'Q.850;cause=41;text="NORMAL_TEMPORARY_FAILURE"'
    assert next_hop(dialog, fallback=TRUNK) == ("192.0.2.50", 5060)  # the first route
    # without a route set, straight to the remote target; a name: the leg's destination
    alone = dataclasses.replace(journaled, route_set=()).dialog()
    assert next_hop(alone, fallback=TRUNK) == ("192.0.2.77", 5070)
    named = dataclasses.replace(journaled, route_set=("<sip:proxy.example;lr>",)).dialog()
    assert next_hop(named, fallback=TRUNK) == TRUNK


def test_the_recovered_bye_is_the_one_the_live_leg_would_have_sent() -> None:
    ua, transport = sans_io_user_agent()
    leg = trunk_leg(ua)
    ring(transport, leg)
    answer(transport, leg)
    entry = leg_entry(leg)
    assert entry.dialog is not None
    recovered = bye_request(entry.dialog.dialog())
    recovered_hop = next_hop(entry.dialog.dialog(), entry.dest)
    leg.hangup()  # the live leg's own BYE, through the endpoint
    [(live, live_hop)] = transport.sent_requests("BYE")
    assert (recovered.uri, recovered_hop) == (live.uri, live_hop)
    for name in ("Route", "From", "To", "Call-ID", "CSeq"):
        assert recovered.headers.get_all(name) == live.headers.get_all(name), name


def test_the_recovered_cancel_is_the_one_the_endpoint_would_have_sent() -> None:
    ua, transport = sans_io_user_agent()
    leg = trunk_leg(ua)
    ring(transport, leg)  # challenged, sent again with credentials, ringing
    entry = leg_entry(leg)
    assert entry.invite is not None
    recovered = cancel_request(entry.invite)
    leg.hangup()  # the live leg's CANCEL, built by the endpoint from its transaction
    [(live, live_dest)] = transport.sent_requests("CANCEL")
    assert live_dest == entry.dest == TRUNK
    assert recovered.uri == live.uri == last_invite(transport, leg).uri
    for name in ("Via", "Route", "From", "To", "Call-ID", "CSeq"):
        assert recovered.headers.get_all(name) == live.headers.get_all(name), name
    assert recovered.cseq() == (2, "CANCEL")  # the second INVITE's, not the challenged one's
    assert "branch=z9hG4bK" in (recovered.headers.get("Via") or "")


# ---- replaying the journal of each call state -------------------------------------------------


def journaled(state: str, legs: list[Leg], **record_changes: object) -> JournaledCall:
    return JournaledCall(
        record=record(**record_changes),
        state=state,
        legs=tuple(leg_entry(leg) for leg in legs),
        public_url="https://dialer.example.com",
    )


def peer_hangs_up(transport: SansIoTransport, leg: Leg) -> None:
    """The phone behind ``leg`` sends BYE through the trunk."""
    d = leg.dialog
    assert d is not None
    bye = Request(
        "BYE",
        f"sip:dialer@{OUR_HOST}:{OUR_PORT}",
        Headers(
            [
                ("Via", "SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKpeerbye1"),
                ("Max-Forwards", "70"),
                ("From", f"{d.remote_address};tag={d.remote_tag}"),
                ("To", f"{d.local_address};tag={d.local_tag}"),
                ("Call-ID", d.call_id),
                ("CSeq", "1 BYE"),
            ]
        ),
    )
    transport.deliver(bye, TRUNK)


def call_in_state(state: str) -> JournaledCall:
    """A journaled call in ``state`` whose legs really went through those steps, in a
    process of their own (the one that crashes: recovery runs on a fresh user agent)."""
    ua, transport = sans_io_user_agent()
    agent = trunk_leg(ua, "agent", "1000")
    ring(transport, agent)
    if state == "agent_ringing":
        return journaled(state, [agent])
    answer(transport, agent)
    callee = trunk_leg(ua)
    ring(transport, callee)
    answered = {"agent_answered_at": T0 + 3, "agent_status": 200, "callee_dialed_at": T0 + 3.1}
    if state == "callee_ringing":
        return journaled(state, [agent, callee], callee_ringing_at=T0 + 3.5, **answered)
    answer(transport, callee)
    bridged = {**answered, "callee_answered_at": T0 + 6, "callee_status": 200, "bridged_at": T0 + 6}
    if state == "bridged":
        return journaled(state, [agent, callee], **bridged)
    # ended: the callee hung up, our BYE to the agent was on its way, the CDR was not out
    peer_hangs_up(transport, callee)
    agent.hangup()
    call = journaled(state, [agent, callee], ended_at=T0 + 20, **bridged)
    outcome = classify(Ending(kind="bye", leg="callee", bridged=True))
    return dataclasses.replace(call, outcome=outcome)


# state → (requests to (leg, method)), disposition, end_code, end_reason
REPLAYS = {
    "agent_ringing": ([("agent", "CANCEL")], "FAILED", 41, "crashed"),
    "callee_ringing": ([("agent", "BYE"), ("callee", "CANCEL")], "FAILED", 41, "crashed"),
    "bridged": ([("agent", "BYE"), ("callee", "BYE")], "ANSWERED", 41, "crashed"),
    "ended": ([("agent", "BYE")], "ANSWERED", 16, "callee_hungup"),
}


@pytest.mark.parametrize("state", list(REPLAYS))
async def test_replay_of_each_call_state(state: str, tmp_path: Path) -> None:
    call = call_in_state(state)
    ua, transport = sans_io_user_agent()
    journal = CallJournal(tmp_path)
    journal.record(call)
    sink = MemorySink()
    recovery = CallRecovery(journal, ua, sink, passwords={"dialer": "s3cret"})
    [cdr] = await recovery.run(wait=0)
    await recovery.close()

    requests, disposition, end_code, end_reason = REPLAYS[state]
    by_call_id = {}
    for entry in call.legs:
        held = entry.dialog or entry.invite
        if held is not None:
            by_call_id[held.call_id] = entry
    seen = []
    for out in transport.sent:
        msg = parse_message(out.data)
        assert isinstance(msg, Request)
        entry = by_call_id[msg.call_id]
        seen.append((entry.name, msg.method))
        if msg.method == "BYE":
            assert entry.dialog is not None
            assert msg.uri == entry.dialog.remote_target
            assert out.addr == ("192.0.2.51", 5062)  # the first route: the last Record-Route
            assert msg.cseq()[0] == (entry.dialog.local_seq or 0) + 1
        else:
            assert out.addr == TRUNK
    assert sorted(seen) == sorted(requests)

    assert sink.cdrs == [cdr]
    p = cdr.cdr_payload()
    assert (p["disposition"], p["end_code"], p["end_reason"]) == (disposition, end_code, end_reason)
    assert p["call_id"] == CALL_ID and p["call_ref"] == "ref-9"
    assert p["created_at"] == "2027-01-15T08:00:00.000Z"  # the journaled times, kept
    if state == "ended":
        assert p["ended_at"] == "2027-01-15T08:00:20.000Z" and p["call_time"] == 14
    else:
        assert p["ended_by"] == "system" and p["cause_name"] == "NORMAL_TEMPORARY_FAILURE"
    assert journal.ids() == []  # forgotten once the CDR is in the sink


async def test_a_challenged_bye_is_answered_once_with_the_configured_password(
    tmp_path: Path,
) -> None:
    call = call_in_state("bridged")
    ua, transport = sans_io_user_agent()
    journal = CallJournal(tmp_path)
    journal.record(call)
    recovery = CallRecovery(journal, ua, MemorySink(), passwords={"dialer": "s3cret"})
    await recovery.run(wait=0)
    first = transport.sent_requests("BYE")
    assert len(first) == 2
    bye, hop = first[0]
    transport.deliver(make_response(bye, 407, extra=[("Proxy-Authenticate", CHALLENGE)]), hop)
    again = transport.sent_requests("BYE")[2:]
    assert len(again) == 1
    retry, retry_hop = again[0]
    assert retry_hop == hop and retry.call_id == bye.call_id and tags(retry) == tags(bye)
    assert retry.cseq() == (bye.cseq()[0] + 1, "BYE")
    auth = retry.headers.get("Proxy-Authorization") or ""
    assert 'username="dialer"' in auth and f'uri="{bye.uri}"' in auth
    # a second challenge is not answered: the BYE is over, said in the log
    transport.deliver(make_response(retry, 407, extra=[("Proxy-Authenticate", CHALLENGE)]), hop)
    assert len(transport.sent_requests("BYE")) == 3
    results = sorted(b.done.result() for b in recovery.byes if b.done.done())
    assert results == [407]
    await recovery.close()


async def test_the_cancel_of_a_lost_transaction_is_repeated_on_timer_e_then_dropped(
    tmp_path: Path,
) -> None:
    timers = TimerConfig(t1=0.01, t2=0.04, t4=0.05)
    call = call_in_state("agent_ringing")
    ua, transport = sans_io_user_agent(timers)
    journal = CallJournal(tmp_path)
    journal.record(call)
    recovery = CallRecovery(journal, ua, MemorySink(), timers=timers)
    await recovery.run(wait=0)
    await asyncio.sleep(timers.timer_f + 0.3)
    cancels = transport.sent_requests("CANCEL")
    # T1, 2·T1, 4·T1, then every T2 until 64·T1: about 17 in all, each the same CANCEL
    assert 10 <= len(cancels) <= 18, len(cancels)
    assert len({c.to_bytes() for c, _ in cancels}) == 1
    await asyncio.sleep(0.1)
    assert len(transport.sent_requests("CANCEL")) == len(cancels)  # given up
    await recovery.close()


async def test_a_late_2xx_to_the_cancelled_invite_is_acked_and_byed(tmp_path: Path) -> None:
    timers = TimerConfig(t1=0.01, t2=0.04, t4=0.05)
    call = call_in_state("callee_ringing")
    ua, transport = sans_io_user_agent(timers)
    callee = next(leg for leg in call.legs if leg.name == "callee")
    assert callee.invite is not None
    journal = CallJournal(tmp_path)
    journal.record(call)
    recovery = CallRecovery(journal, ua, MemorySink(), timers=timers)
    await recovery.run(wait=0)
    # the phone answers after all: its 200 reaches the restarted service (no transaction)
    invite = callee.invite.request()
    ok = make_response(
        invite,
        200,
        to_tag="late-tag",
        extra=[("Record-Route", "<sip:192.0.2.50;lr>"), ("Contact", "<sip:late@192.0.2.77:5070>")],
    )
    mark = len(transport.sent)
    transport.deliver(ok, TRUNK)
    sent = transport.sent_requests()[-2:]
    (ack, ack_hop), (bye, bye_hop) = sent
    assert (ack.method, bye.method) == ("ACK", "BYE")
    assert ack.cseq() == (callee.invite.cseq, "ACK") and tags(ack)[1] == "late-tag"
    assert bye.cseq() == (callee.invite.cseq + 1, "BYE") and bye.uri == "sip:late@192.0.2.77:5070"
    assert ack_hop == bye_hop == ("192.0.2.50", 5060)
    assert len(transport.sent) == mark + 2
    transport.deliver(ok, TRUNK)  # the 200 again (our ACK lost): the same ACK again
    assert transport.sent_requests()[-1][0].to_bytes() == ack.to_bytes()
    # and the CANCEL stops being repeated
    await asyncio.sleep(0.1)
    n = len(transport.sent_requests("CANCEL"))
    await asyncio.sleep(0.2)
    assert len(transport.sent_requests("CANCEL")) == n
    await recovery.close()
    mark = len(transport.sent)  # once the service stops watching, a 2xx is nobody's
    transport.deliver(make_response(invite, 200, to_tag="later-still"), TRUNK)
    assert len(transport.sent) == mark


async def test_a_sink_that_fails_keeps_the_journal_for_the_next_start(tmp_path: Path) -> None:
    class BrokenSink:
        def submit(self, cdr: Cdr, on_durable: object = None) -> None:
            raise RuntimeError("sink down")

    ua, _ = sans_io_user_agent()
    journal = CallJournal(tmp_path)
    journal.record(call_in_state("bridged"))
    await CallRecovery(journal, ua, BrokenSink()).run(wait=0)
    assert journal.ids() == [CALL_ID]


# ---- the recording and the CDR -----------------------------------------------------------------


def wav_header(data_bytes: int, riff: int | None = None, extra_chunk: bytes = b"") -> bytes:
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 2, 8000, 32000, 4, 16)
    size = riff if riff is not None else 4 + len(fmt) + len(extra_chunk) + 8 + data_bytes
    return (
        struct.pack("<4sI4s", b"RIFF", size, b"WAVE")
        + fmt
        + extra_chunk
        + struct.pack("<4sI", b"data", data_bytes)
    )


def test_a_partial_wav_gets_the_sizes_of_the_data_present(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    frames = os.urandom(4 * 8000)  # one second of stereo 16-bit
    path.write_bytes(wav_header(0, riff=36) + frames + b"\x01\x02")  # + a torn frame
    assert repair_wav_sizes(path) == len(frames)
    raw = path.read_bytes()
    assert raw[44:] == frames  # the audio untouched, the partial frame cut
    assert struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8
    assert struct.unpack_from("<I", raw, 40)[0] == len(frames)
    assert repair_wav_sizes(path) == len(frames)  # again: nothing changes
    assert path.read_bytes() == raw


def test_the_data_chunk_is_found_after_other_chunks(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    chunk = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\0"  # odd size: one pad byte
    path.write_bytes(wav_header(999_999, extra_chunk=chunk) + b"\0" * 40)
    assert repair_wav_sizes(path) == 40
    raw = path.read_bytes()
    at = raw.index(b"data")
    assert struct.unpack_from("<I", raw, at + 4)[0] == 40 == len(raw) - at - 8


def test_what_is_not_a_wav_is_left_alone(tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_bytes(b"hello, this is not RIFF at all" * 3)
    with pytest.raises(ValueError, match="RIFF"):
        repair_wav_sizes(text)
    assert text.read_bytes() == b"hello, this is not RIFF at all" * 3
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ValueError, match="regular"):
        repair_wav_sizes(fifo)  # never blocks waiting for a writer
    assert time.monotonic() - started < 1
    with pytest.raises(FileNotFoundError):
        repair_wav_sizes(tmp_path / "gone.wav")


async def test_the_recording_is_repaired_and_dates_the_end(tmp_path: Path) -> None:
    wav = tmp_path / "rec" / "AbCdEf.wav"
    wav.parent.mkdir()
    wav.write_bytes(wav_header(0, riff=36) + b"\0" * 4 * 8000)
    os.utime(wav, (T0 + 16, T0 + 16))  # the last flush, ten seconds into the bridge
    ua, _ = sans_io_user_agent()
    call = dataclasses.replace(
        call_in_state("bridged"),
        recording_path=str(wav),
    )
    call = dataclasses.replace(
        call, record=dataclasses.replace(call.record, recording_ref="AbCdEf")
    )
    journal = CallJournal(tmp_path / "j")
    journal.record(call)
    os.utime(journal.directory / f"{CALL_ID}.call", (T0 + 6, T0 + 6))
    [cdr] = await CallRecovery(journal, ua, MemorySink()).run(wait=0)
    p = cdr.cdr_payload()
    assert p["recording_url"] == "AbCdEf"
    assert p["recording_download_url"] == "https://dialer.example.com/click2dial/recordings/AbCdEf"
    assert p["ended_at"] == "2027-01-15T08:00:16.000Z" and p["call_time"] == 10
    assert struct.unpack_from("<I", wav.read_bytes(), 40)[0] == 4 * 8000


def test_a_recording_that_is_gone_leaves_the_cdr_without_one() -> None:
    call = JournaledCall(
        record=record(recording_ref="Gone1", bridged_at=T0 + 5),
        state="bridged",
        recording_path="/nowhere/Gone1.wav",
    )
    cdr = recovered_cdr(call, last_alive=T0 + 9, has_recording=False)
    p = cdr.cdr_payload()
    assert p["recording_url"] is None and p["recording_download_url"] is None
    assert (p["disposition"], p["end_reason"], p["call_time"]) == ("ANSWERED", "crashed", 4)


def test_the_end_is_never_before_a_journaled_time() -> None:
    call = JournaledCall(record=record(bridged_at=T0 + 5), state="bridged")
    cdr = recovered_cdr(call, last_alive=T0 + 1, has_recording=False)  # a clock step back
    assert cdr.record.ended_at == T0 + 5 and cdr.call_time == 0


async def test_a_call_recovery_cannot_handle_is_set_aside_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken_id = "6b" * 16
    journal = CallJournal(tmp_path)
    good = call_in_state("bridged")
    journal.record(good)
    journal.record(dataclasses.replace(good, record=record(id=broken_id, created_at=T0 - 1)))
    real = recovery_module.recovered_cdr

    def fails_for_one(call: JournaledCall, **kw: Any) -> Cdr:
        if call.id == broken_id:
            raise RuntimeError("a bug")
        return real(call, **kw)

    monkeypatch.setattr(recovery_module, "recovered_cdr", fails_for_one)
    ua, _ = sans_io_user_agent()
    sink = MemorySink()
    with caplog.at_level(logging.ERROR):
        cdrs = await CallRecovery(journal, ua, sink).run(wait=0)
    assert [c.call_id for c in cdrs] == [c.call_id for c in sink.cdrs] == [CALL_ID]
    assert journal.ids() == []
    assert (tmp_path / "corrupt" / f"{broken_id}.call").exists()
    assert "event=recovery_failed" in caplog.text and "event=journal_corrupt" in caplog.text
