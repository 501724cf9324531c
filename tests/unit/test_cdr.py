"""Tests for sipdialer.cdr: every payload field of an answered and a busy call, the legacy
c2d document, snapshotting, and MemorySink."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime

import pytest

from sipdialer.engine.causes import Ending, classify
from sipdialer.engine.cdr import CallRecord, Cdr, CdrSink, MemorySink, build_cdr, iso_utc

T0 = 1_764_186_601.123  # 2025-11-26T19:50:01.123Z
PUBLIC = "https://dialer.example.com:8443/"

PAYLOAD_KEYS = {
    "extension", "number", "dial_number", "call_ref", "recording_url", "dialed_at",
    "call_time", "end_reason", "end_code", "call_dir", "call_id", "disposition",
    "cause_name", "agent_sip_status", "callee_sip_status", "ended_by", "created_at",
    "agent_dialed_at", "agent_answered_at", "callee_dialed_at", "callee_ringing_at",
    "callee_answered_at", "bridged_at", "ended_at", "duration", "billsec",
    "recording_download_url", "agent_route", "end_detail", "sip_call_ids", "end_leg",
    "callee_redirected_to",
    "recording_partial",
}  # fmt: skip

ISO_FIELDS = [
    "created_at", "agent_dialed_at", "agent_answered_at", "callee_dialed_at",
    "callee_ringing_at", "callee_answered_at", "bridged_at", "ended_at",
]  # fmt: skip


def parse_iso(value: str) -> float:
    assert value.endswith("Z")
    assert len(value) == len("2025-11-26T19:50:01.123Z")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def answered_record() -> CallRecord:
    return CallRecord(
        id="c-7f3a",
        call_ref="AbC123",
        agent="1000",
        callee="0820001234",
        outbound_id="0123456789",
        created_at=T0,
        agent_dialed_at=T0 + 0.010,
        agent_answered_at=T0 + 3.250,
        agent_status=200,
        callee_dialed_at=T0 + 3.300,
        callee_ringing_at=T0 + 3.900,
        callee_answered_at=T0 + 9.100,
        callee_status=200,
        bridged_at=T0 + 9.120,
        ended_at=T0 + 71.700,  # 62.58 s bridged → 63; 71.69 s since first dial → 72
        recording_ref="9f1c0e7d2b4a4c1f8e6d5a3b2c1d0e9f",
        agent_route="extension",
        sip_call_ids={"agent": "a84b4c76e66710@10.0.0.1", "callee": "b17f@10.0.0.1"},
    )


def busy_record() -> CallRecord:
    return CallRecord(
        id="c-busy",
        call_ref=None,
        agent="27821234567",
        callee="0041441234567",
        outbound_id="27123456789",
        created_at=T0,
        agent_dialed_at=T0 + 0.4,
        agent_answered_at=T0 + 2.0,
        agent_status=200,
        callee_dialed_at=T0 + 2.1,
        callee_status=486,
        ended_at=T0 + 2.6,
    )


def test_answered_call_every_field() -> None:
    record = answered_record()
    outcome = classify(Ending(kind="bye", leg="callee", bridged=True))
    cdr = build_cdr(record, outcome, public_url=PUBLIC)
    env = cdr.cdr_envelope()
    assert set(env) == {"type", "payload"}
    assert env["type"] == "cdr"
    p = env["payload"]
    assert p == cdr.cdr_payload()
    assert set(p) == PAYLOAD_KEYS

    assert p["extension"] == "1000"
    assert p["number"] == "0820001234"
    assert p["dial_number"] == "0123456789"
    assert p["call_ref"] == "AbC123"
    assert p["recording_url"] == "9f1c0e7d2b4a4c1f8e6d5a3b2c1d0e9f"
    assert p["dialed_at"] == 1_764_186_601
    assert p["call_time"] == 63
    assert p["end_reason"] == "callee_hungup"
    assert p["end_code"] == 16
    assert p["call_dir"] == "outbound"
    assert p["call_id"] == "c-7f3a"
    assert p["disposition"] == "ANSWERED"
    assert p["cause_name"] == "NORMAL_CLEARING"
    assert p["agent_sip_status"] == 200
    assert p["callee_sip_status"] == 200
    assert p["ended_by"] == "callee"
    assert p["end_leg"] == "callee"
    assert p["created_at"] == "2025-11-26T19:50:01.123Z"
    assert p["agent_answered_at"] == "2025-11-26T19:50:04.373Z"
    assert p["callee_ringing_at"] == "2025-11-26T19:50:05.023Z"
    assert p["callee_answered_at"] == "2025-11-26T19:50:10.223Z"
    assert p["ended_at"] == "2025-11-26T19:51:12.823Z"
    assert p["duration"] == 72
    assert p["billsec"] == 63
    assert p["recording_download_url"] == (
        "https://dialer.example.com:8443/click2dial/recordings/9f1c0e7d2b4a4c1f8e6d5a3b2c1d0e9f"
    )
    assert p["agent_route"] == "extension"
    assert p["end_detail"] is None
    assert p["sip_call_ids"] == {"agent": "a84b4c76e66710@10.0.0.1", "callee": "b17f@10.0.0.1"}

    for name in ISO_FIELDS:
        assert parse_iso(p[name]) == pytest.approx(getattr(record, name), abs=0.0006)
    for name in ("dialed_at", "call_time", "end_code", "duration", "billsec"):
        assert type(p[name]) is int, name
    for name in ("agent_sip_status", "callee_sip_status"):
        assert type(p[name]) is int, name

    assert json.loads(json.dumps(env)) == env

    assert cdr.c2d_document() == {
        "notifications": [
            {
                "extension": "1000",
                "disposition": "ANSWERED",
                "call_ref": "AbC123",
                "end_code": 16,
                "recording_url": "9f1c0e7d2b4a4c1f8e6d5a3b2c1d0e9f",
            }
        ]
    }
    assert json.loads(json.dumps(cdr.c2d_document())) == cdr.c2d_document()


def test_busy_call_every_field() -> None:
    outcome = classify(Ending(kind="rejected", leg="callee", status=486))
    cdr = build_cdr(busy_record(), outcome, public_url=PUBLIC)
    p = cdr.cdr_payload()
    assert set(p) == PAYLOAD_KEYS
    assert p == {
        "extension": "27821234567",
        "number": "0041441234567",
        "dial_number": "27123456789",
        "call_ref": None,
        "recording_url": None,
        "dialed_at": 1_764_186_601,
        "call_time": 0,
        "end_reason": "busy",
        "end_code": 17,
        "call_dir": "outbound",
        "call_id": "c-busy",
        "disposition": "BUSY",
        "cause_name": "USER_BUSY",
        "agent_sip_status": 200,
        "callee_sip_status": 486,
        "ended_by": "callee",
        "end_leg": "callee",
        "created_at": "2025-11-26T19:50:01.123Z",
        "agent_dialed_at": "2025-11-26T19:50:01.523Z",
        "agent_answered_at": "2025-11-26T19:50:03.123Z",
        "callee_dialed_at": "2025-11-26T19:50:03.223Z",
        "callee_ringing_at": None,
        "callee_answered_at": None,
        "bridged_at": None,
        "ended_at": "2025-11-26T19:50:03.723Z",
        "duration": 2,  # 2.2 s from first dial
        "billsec": 0,
        "recording_download_url": None,
        "recording_partial": False,
        "agent_route": "trunk",
        "callee_redirected_to": [],
        "end_detail": None,
        "sip_call_ids": {},
    }
    assert type(p["call_time"]) is int and type(p["duration"]) is int
    assert cdr.c2d_document() == {
        "notifications": [
            {
                "extension": "27821234567",
                "disposition": "BUSY",
                "call_ref": None,
                "end_code": 17,
                "recording_url": None,
            }
        ]
    }
    json.dumps(cdr.cdr_envelope())


def test_never_dialled_falls_back_to_created_at() -> None:
    record = CallRecord(
        id="c-nr", call_ref="x", agent="1001", callee="0820001234", outbound_id="0123456789",
        created_at=T0 + 0.9, ended_at=T0 + 1.0, agent_route="extension",
    )  # fmt: skip
    cdr = build_cdr(
        record,
        classify(Ending(kind="not_registered", leg="agent", detail="no binding for 1001")),
        public_url=PUBLIC,
    )
    p = cdr.cdr_payload()
    assert p["dialed_at"] == 1_764_186_602
    assert (p["duration"], p["call_time"], p["billsec"]) == (0, 0, 0)
    assert (p["end_code"], p["disposition"], p["end_reason"]) == (20, "FAILED", "not_registered")
    assert p["end_detail"] == "no binding for 1001"
    assert p["agent_dialed_at"] is None and p["agent_sip_status"] is None


def test_rounding_half_up_and_no_end() -> None:
    record = answered_record()
    record.bridged_at = T0 + 10.0
    record.ended_at = T0 + 10.5
    cdr = build_cdr(record, classify(Ending(kind="bye", leg="agent", bridged=True)), public_url="")
    assert cdr.call_time == 1
    record.ended_at = T0 + 10.49
    cdr = build_cdr(record, classify(Ending(kind="bye", leg="agent", bridged=True)), public_url="")
    assert cdr.call_time == 0
    record.ended_at = None
    cdr = build_cdr(record, classify(Ending(kind="error", leg=None)), public_url="")
    assert (cdr.call_time, cdr.duration, cdr.cdr_payload()["ended_at"]) == (0, 0, None)


def test_build_cdr_snapshots_the_record() -> None:
    record = answered_record()
    cdr = build_cdr(record, classify(Ending(kind="bye", leg="agent", bridged=True)), public_url="")
    record.callee = "0999999999"
    record.sip_call_ids["agent"] = "changed"
    assert cdr.cdr_payload()["number"] == "0820001234"
    assert cdr.cdr_payload()["sip_call_ids"]["agent"] == "a84b4c76e66710@10.0.0.1"


def test_recording_url_join() -> None:
    outcome = classify(Ending(kind="bye", leg="agent", bridged=True))
    for base in ("http://h:8080", "http://h:8080/"):
        cdr = build_cdr(answered_record(), outcome, public_url=base)
        assert cdr.recording_url == (
            "http://h:8080/click2dial/recordings/9f1c0e7d2b4a4c1f8e6d5a3b2c1d0e9f"
        )
    record = answered_record()
    record.recording_ref = ""
    assert build_cdr(record, outcome, public_url=PUBLIC).recording_url is None


def test_iso_utc() -> None:
    assert iso_utc(None) is None
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(1.5) == "1970-01-01T00:00:01.500Z"
    value = iso_utc(T0)
    assert value is not None
    assert datetime.fromisoformat(value).tzinfo == UTC


# --- sinks ---------------------------------------------------------------------------------


def _cdr(call_id: str) -> Cdr:
    record = answered_record()
    record.id = call_id
    return build_cdr(record, classify(Ending(kind="bye", leg="agent", bridged=True)), public_url="")


def test_memory_sink_is_a_cdr_sink_and_waits_across_threads() -> None:
    sink = MemorySink()
    as_protocol: CdrSink = sink
    as_protocol.submit(_cdr("one"))
    assert sink.wait("one", timeout=0.1).call_id == "one"
    assert sink.get("two") is None
    timer = threading.Timer(0.05, sink.submit, args=(_cdr("two"),))
    timer.start()
    try:
        assert sink.wait("two", timeout=5).call_id == "two"
    finally:
        timer.cancel()
    assert [c.call_id for c in sink.cdrs] == ["one", "two"]
    with pytest.raises(TimeoutError):
        sink.wait("three", timeout=0.05)
    sink.clear()
    assert sink.cdrs == []


async def test_memory_sink_wait_async_does_not_block_the_loop() -> None:
    sink = MemorySink()
    asyncio.get_running_loop().call_later(0.05, sink.submit, _cdr("async"))
    assert (await sink.wait_async("async", timeout=5)).call_id == "async"
    with pytest.raises(TimeoutError):
        await sink.wait_async("never", timeout=0.05)
