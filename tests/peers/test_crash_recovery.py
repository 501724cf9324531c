"""``kill -9`` of ``sipdialer serve`` mid-call, then a restart with the same configuration:
the restarted service ends the calls it held before it takes new work — BYE to answered
phones, CANCEL to a ringing one (ACK and BYE should it answer in between) — repairs the
partial recording and reports each call to Redis as crashed (cause 41)."""

from __future__ import annotations

import json
import signal
import struct
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import redis

from tests.fixtures import ports
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import peak_hz, trunk_config
from tests.fixtures.redis import RedisServer
from tests.peers.test_cli import start_serve, wait_registered

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _http_json(url: str, body: dict[str, str] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def _wav_sizes(path: Path) -> tuple[int, int, int]:
    """(RIFF size field, data size field, bytes after the 44-byte header) of a WAV."""
    raw = path.read_bytes()
    riff, data_tag, data_size = struct.unpack_from("<4x I 28x 4s I", raw)
    assert data_tag == b"data", raw[:44]
    return riff, data_size, len(raw) - 44


def test_kill_9_mid_call_then_restart_byes_both_phones_and_reports_the_call(
    tmp_path: Path,
    kamailio_trunk: Callable[..., KamailioTrunk],
    make_phone: Callable[..., BaresipPhone],
    redis_server: RedisServer,
) -> None:
    trunk = kamailio_trunk(qop=True)
    agent = make_phone("agent", "1000", trunk, tone_hz=440)
    callee = make_phone("callee", "0820001234", trunk, tone_hz=1000)
    http = ports.free_port("tcp")
    recordings = tmp_path / "recordings"
    conf = tmp_path / "sip.conf"
    conf.write_text(
        trunk_config(trunk)
        + f"[http]\nlisten = 127.0.0.1:{http}\n"
        + f"[redis]\nurl = {redis_server.url}\noutbox = {tmp_path / 'outbox'}\n"
        + f"[recording]\ndirectory = {recordings}\n"
    )
    base = f"http://127.0.0.1:{http}"
    client = redis.Redis.from_url(redis_server.url)

    proc, log_path = start_serve(conf)
    try:
        wait_registered(proc, log_path)
        created = _http_json(
            f"{base}/click2dial/calls",
            {
                "agent": "1000",
                "callee": "0820001234",
                "outbound_id": "0123456789",
                "call_ref": "crash-1",
            },
        )
        call_id = created["id"]
        deadline = time.monotonic() + 10
        while _http_json(f"{base}/click2dial/calls/{call_id}")["status"] != "bridged":
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        time.sleep(3.0)  # talk: the recorder flushes about every second
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    first_log = log_path.read_text()

    # the crash alone: both phones stay in the call, nothing reaches Redis
    time.sleep(1.0)
    closed = [e for p in (agent, callee) for e in p.events if e.get("type") == "CALL_CLOSED"]
    assert closed == [], closed
    assert client.llen("enigma:notifications:cdr") == 0

    proc, log_path = start_serve(conf)  # the same configuration
    try:
        agent.wait_event("CALL_CLOSED", 10)
        callee.wait_event("CALL_CLOSED", 10)
        cdr = client.brpop(["enigma:notifications:cdr"], timeout=10)
        c2d = client.brpop(["enigma:notifications:c2d"], timeout=10)
        assert cdr is not None and c2d is not None, log_path.read_text()
        # the restarted service works: the API answers once recovery is done (the CDR
        # above is pushed during recovery, before the HTTP server listens)
        started_by = time.monotonic() + 15
        while "event=service_started" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < started_by, log_path.read_text()
            time.sleep(0.05)
        health = urllib.request.urlopen(f"{base}/healthz", timeout=5)
        assert health.status in (200, 503)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    second_log = log_path.read_text()

    envelope = json.loads(cdr[1])
    jsonschema.Draft202012Validator(json.loads((SCHEMAS / "cdr.schema.json").read_text())).validate(
        envelope
    )
    payload = envelope["payload"]
    assert payload["call_id"] == call_id and payload["call_ref"] == "crash-1", payload
    outcome = (payload["disposition"], payload["end_code"], payload["end_reason"])
    assert outcome == ("ANSWERED", 41, "crashed"), payload
    assert payload["ended_by"] == "system"
    # the timestamps the crashed service knew, not the restart's
    for field in ("created_at", "agent_answered_at", "callee_answered_at", "bridged_at"):
        assert payload[field] is not None, (field, payload)
    assert payload["agent_sip_status"] == 200 and payload["callee_sip_status"] == 200
    assert 2 <= payload["call_time"] <= 5, payload
    ended_at = datetime.fromisoformat(payload["ended_at"].replace("Z", "+00:00")).timestamp()
    assert ended_at <= killed_at + 0.5, (payload["ended_at"], killed_at)
    ref = payload["recording_url"]
    assert ref and payload["recording_download_url"].endswith(f"/click2dial/recordings/{ref}")
    legacy = json.loads(c2d[1])["notifications"][0]
    assert (legacy["call_ref"], legacy["end_code"], legacy["recording_url"]) == ("crash-1", 41, ref)

    # the partial recording: a header that matches its data, holding both tones
    wav = recordings / f"{ref}.wav"
    riff, data_size, present = _wav_sizes(wav)
    assert data_size == present and riff == 36 + present and present % 4 == 0
    samples = np.frombuffer(wav.read_bytes()[44:], dtype="<i2").reshape(-1, 2)
    assert len(samples) >= 8000, len(samples)  # at least a second of the call
    assert abs(peak_hz(samples[:, 0].astype(float)) - 440) < 20
    assert abs(peak_hz(samples[:, 1].astype(float)) - 1000) < 20

    # recovery ran before the API listened, and left nothing behind
    assert second_log.index("event=call_recovered") < second_log.index("event=service_started")
    journal = tmp_path / "outbox.journal"
    assert journal.is_dir() and not list(journal.glob("*.call")), list(journal.iterdir())
    assert not list((tmp_path / "outbox").glob("*.entry"))
    assert "Traceback" not in first_log + second_log


class CrashLab:
    """The trunk, Redis and one ``sipdialer serve`` configuration, started and killed."""

    def __init__(self, tmp_path: Path, trunk: KamailioTrunk, redis_server: RedisServer) -> None:
        self.tmp_path = tmp_path
        http = ports.free_port("tcp")
        self.base = f"http://127.0.0.1:{http}"
        self.conf = tmp_path / "sip.conf"
        self.conf.write_text(
            trunk_config(trunk)
            + f"[http]\nlisten = 127.0.0.1:{http}\n"
            + f"[redis]\nurl = {redis_server.url}\noutbox = {tmp_path / 'outbox'}\n"
            + f"[recording]\ndirectory = {tmp_path / 'recordings'}\n"
        )
        self.redis = redis.Redis.from_url(redis_server.url)
        self.logs: list[str] = []

    def call_and_kill(self, until: Callable[[dict[str, Any]], bool], call_ref: str) -> str:
        """Place a call through the API, wait until its view satisfies ``until``, then
        ``kill -9`` the service; returns the call id."""
        proc, log_path = start_serve(self.conf)
        try:
            wait_registered(proc, log_path)
            body = {"agent": "1000", "callee": "0820001234", "outbound_id": "0123456789"}
            call_id: str = _http_json(
                f"{self.base}/click2dial/calls", {**body, "call_ref": call_ref}
            )["id"]
            deadline = time.monotonic() + 10
            while not until(_http_json(f"{self.base}/click2dial/calls/{call_id}")):
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
        self.logs.append(log_path.read_text())
        return call_id

    def restart(self, then: Callable[[], None]) -> str:
        """Start the service again, run ``then``, stop it with SIGTERM; its log."""
        proc, log_path = start_serve(self.conf)
        try:
            then()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
        self.logs.append(log_path.read_text())
        return self.logs[-1]

    def cdr(self) -> dict[str, Any]:
        cdr = self.redis.brpop(["enigma:notifications:cdr"], timeout=10)
        assert cdr is not None, self.logs[-1]
        envelope: dict[str, Any] = json.loads(cdr[1])
        return envelope


def test_kill_9_while_the_callee_rings_cancels_it_and_byes_the_agent(
    tmp_path: Path,
    kamailio_trunk: Callable[..., KamailioTrunk],
    make_phone: Callable[..., BaresipPhone],
    redis_server: RedisServer,
) -> None:
    trunk = kamailio_trunk(qop=True)
    agent = make_phone("agent", "1000", trunk, tone_hz=440)
    callee = make_phone("callee", "0820001234", trunk, tone_hz=1000, answer="manual")
    lab = CrashLab(tmp_path, trunk, redis_server)
    call_id = lab.call_and_kill(lambda v: v["status"] == "callee_ringing", "ring-1")
    callee.wait_event("CALL_INCOMING", 5)

    def both_phones_closed() -> None:
        agent.wait_event("CALL_CLOSED", 10)
        callee.wait_event("CALL_CLOSED", 10)  # our CANCEL, relayed by the trunk

    log = lab.restart(both_phones_closed)
    payload = lab.cdr()["payload"]
    assert payload["call_id"] == call_id and payload["call_ref"] == "ring-1"
    outcome = (payload["disposition"], payload["end_code"], payload["end_reason"])
    assert outcome == ("FAILED", 41, "crashed"), payload
    assert payload["agent_answered_at"] is not None and payload["callee_ringing_at"] is not None
    assert payload["bridged_at"] is None and payload["recording_url"] is None
    assert "event=recovery_cancel_sent" in log and "leg=callee" in log
    assert not list((tmp_path / "outbox.journal").glob("*.call"))
    assert not any("Traceback" in text for text in lab.logs)


def test_a_callee_that_answers_while_the_service_is_down_is_acked_and_byed(
    tmp_path: Path,
    kamailio_trunk: Callable[..., KamailioTrunk],
    make_phone: Callable[..., BaresipPhone],
    redis_server: RedisServer,
) -> None:
    """The callee picks up after the crash: its 200 OK, repeated until an ACK comes,
    reaches the restarted service, which ACKs it and BYEs the call at once (the phone
    would otherwise hang up by itself only after 32 s without an ACK)."""
    trunk = kamailio_trunk(qop=True)
    agent = make_phone("agent", "1000", trunk, tone_hz=440)
    callee = make_phone("callee", "0820001234", trunk, tone_hz=1000, answer="manual")
    lab = CrashLab(tmp_path, trunk, redis_server)
    lab.call_and_kill(lambda v: v["status"] == "callee_ringing", "late-1")
    callee.wait_event("CALL_INCOMING", 5)
    assert callee.ctrl("accept")["ok"]  # nobody is there to take the 200 OK
    time.sleep(0.5)

    def both_phones_closed() -> None:
        restarted = time.monotonic()
        agent.wait_event("CALL_CLOSED", 10)
        callee.wait_event("CALL_CLOSED", 15)
        assert time.monotonic() - restarted < 15

    log = lab.restart(both_phones_closed)
    assert "event=recovery_late_answer" in log and "leg=callee" in log
    payload = lab.cdr()["payload"]
    assert (payload["call_ref"], payload["end_code"], payload["end_reason"]) == (
        "late-1",
        41,
        "crashed",
    )
