"""``sipdialer serve --config FILE`` as a real process: registers with a real Kamailio,
logs structured lines, and on SIGTERM un-registers and exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from sipdialer.config import parse_config
from tests.fixtures import ports
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import trunk_config
from tests.fixtures.redis import RedisServer


def start_serve(conf: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """``sipdialer serve --config conf`` as a real process logging to ``serve.log`` beside
    the configuration."""
    log_path = conf.with_name("serve.log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sipdialer", "serve", "--config", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return proc, log_path


def wait_registered(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 10) -> None:
    """Wait for the trunk registration's log line and for the service to have started
    (its media workers up, the API listening); the process must stay up."""
    deadline = time.monotonic() + timeout
    while not all(line in log_path.read_text() for line in READY):
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.05)


READY = ("state=registered", "event=service_started")


def test_help_for_each_command() -> None:
    for args in (["--help"], ["serve", "--help"], ["demo", "--help"]):
        out = subprocess.run(
            [sys.executable, "-m", "sipdialer", *args], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("[trunk]\ntransport = carrier-pigeon\n")
    out = subprocess.run(
        [sys.executable, "-m", "sipdialer", "serve", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "[trunk] transport" in out.stderr


def test_serve_registers_and_stops_cleanly_on_sigterm(
    tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk]
) -> None:
    trunk = kamailio_trunk(qop=True)
    port = ports.free_port("both")
    conf = tmp_path / "sip.conf"
    conf.write_text(
        f"[trunk]\nregistrar = {trunk.host}:{trunk.port}\ndomain = trunk.test\n"
        f"username = dialer\npassword = s3cret\n[sip]\nlisten = 127.0.0.1:{port}\n"
        # hermetic: any free HTTP port, no real Redis, the outbox under tmp_path
        f"[http]\nlisten = 127.0.0.1:0\n"
        f"[redis]\nurl = redis://127.0.0.1:1/0\noutbox = {tmp_path / 'outbox'}\n"
    )
    proc, log_path = start_serve(conf)
    try:
        wait_registered(proc, log_path)
        assert any(f"127.0.0.1:{port}" in c for c in trunk.lookup("dialer"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_path.read_text()
    assert "event=service_stopped" in text
    assert "state=stopped" in text
    assert trunk.lookup("dialer") == []  # un-REGISTERed on the way out
    # the default configuration runs the media in one worker process per CPU (here, where
    # the port range allows), and none outlives the service
    workers = re.findall(r"event=media_worker_started worker=(\d+) pid=(\d+)", text)
    assert len(workers) == parse_config(conf.read_text()).media.workers >= 1
    for _, pid in workers:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), f"media worker {pid} outlived the service"
    for line in text.splitlines():  # one structured line per event
        assert " level=" in line and " event=" in line, line


def test_sigterm_during_a_bridged_call_still_delivers_its_notifications(
    tmp_path: Path,
    kamailio_trunk: Callable[..., KamailioTrunk],
    make_phone: Callable[..., BaresipPhone],
    redis_server: RedisServer,
) -> None:
    """Stopping the service mid-call ends the call (BYE to both phones) and its CDR and
    c2d document still reach Redis, said as a shutdown, not as an API hang-up."""
    trunk = kamailio_trunk(qop=True)
    agent = make_phone("agent", "1000", trunk, tone_hz=440)
    callee = make_phone("callee", "0820001234", trunk, tone_hz=1000)
    http = ports.free_port("tcp")
    conf = tmp_path / "sip.conf"
    conf.write_text(
        trunk_config(trunk)
        + f"[http]\nlisten = 127.0.0.1:{http}\n"
        + f"[redis]\nurl = {redis_server.url}\noutbox = {tmp_path / 'outbox'}\n"
        + f"[recording]\ndirectory = {tmp_path / 'recordings'}\n"
    )
    base = f"http://127.0.0.1:{http}"
    proc, log_path = start_serve(conf)
    try:
        wait_registered(proc, log_path)
        body = json.dumps(
            {
                "agent": "1000",
                "callee": "0820001234",
                "outbound_id": "0123456789",
                "call_ref": "term-1",
            }
        ).encode()
        req = urllib.request.Request(
            f"{base}/click2dial/calls", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 201
            call_id = json.load(resp)["id"]
        bridged_by = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"{base}/click2dial/calls/{call_id}", timeout=5) as r:
                if json.load(r)["status"] == "bridged":
                    break
            assert time.monotonic() < bridged_by, log_path.read_text()
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    agent.wait_event("CALL_CLOSED", 5)
    callee.wait_event("CALL_CLOSED", 5)
    client = redis.Redis.from_url(redis_server.url)
    cdr = client.brpop(["enigma:notifications:cdr"], timeout=5)
    c2d = client.brpop(["enigma:notifications:c2d"], timeout=5)
    assert cdr is not None and c2d is not None, log_path.read_text()
    payload = json.loads(cdr[1])["payload"]
    assert payload["call_id"] == call_id and payload["call_ref"] == "term-1"
    outcome = (payload["disposition"], payload["end_code"], payload["end_reason"])
    assert outcome == ("ANSWERED", 41, "shutdown")
    assert payload["ended_by"] == "system" and payload["call_time"] >= 1
    legacy = json.loads(c2d[1])["notifications"][0]
    assert (legacy["call_ref"], legacy["disposition"]) == ("term-1", "ANSWERED")
    assert not list((tmp_path / "outbox").glob("*.entry"))  # nothing left waiting
    # and the journal forgot the call once its CDR was safe: a next start re-ends nothing
    # (the journal's and the outbox's writes are on their threads; shutdown waits for both)
    assert list((tmp_path / "outbox.journal").glob("*.call")) == []


def _http_json(url: str, body: dict[str, str] | None = None, method: str = "GET") -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data, {"Content-Type": "application/json"} if data else {}, method=method
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def test_serve_over_tcp_on_uvloop_registers_answers_and_bridges(
    tmp_path: Path,
    kamailio_trunk: Callable[..., KamailioTrunk],
    make_phone: Callable[..., BaresipPhone],
) -> None:
    """``transport = tcp`` under ``sipdialer serve`` (uvloop, the shipped default loop):
    the REGISTER binds over TCP, an OPTIONS that arrives over TCP is answered on its own
    connection, and a whole call (INVITE, ACK, BYE to the trunk) goes over TCP."""
    trunk = kamailio_trunk(qop=True)
    agent = make_phone("agent", "1000", trunk, tone_hz=440)
    callee = make_phone("callee", "0820001234", trunk, tone_hz=1000)
    http = ports.free_port("tcp")
    conf = tmp_path / "sip.conf"
    conf.write_text(
        trunk_config(trunk, transport="tcp")
        + f"[http]\nlisten = 127.0.0.1:{http}\n"
        + f"[redis]\nurl = redis://127.0.0.1:1/0\noutbox = {tmp_path / 'outbox'}\n"
        + f"[recording]\ndirectory = {tmp_path / 'recordings'}\n"
    )
    sip_port = int(conf.read_text().split("listen = 127.0.0.1:")[1].split()[0])
    base = f"http://127.0.0.1:{http}"
    proc, log_path = start_serve(conf)
    try:
        wait_registered(proc, log_path)
        contacts = trunk.lookup("dialer")
        assert any("transport=tcp" in c for c in contacts), contacts
        assert "tcp:127.0.0.1" in trunk.kamcmd("ul.lookup", "location", "s:dialer")

        with socket.create_connection(("127.0.0.1", sip_port), timeout=5) as conn:
            local = conn.getsockname()
            conn.sendall(
                (
                    f"OPTIONS sip:127.0.0.1:{sip_port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/TCP {local[0]}:{local[1]};branch=z9hG4bKtcpopt1\r\n"
                    "Max-Forwards: 70\r\nTo: <sip:127.0.0.1>\r\n"
                    "From: <sip:probe@127.0.0.1>;tag=p1\r\nCall-ID: tcp-options-1\r\n"
                    "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                ).encode()
            )
            answer = conn.recv(65535).decode()
        assert answer.startswith("SIP/2.0 200"), answer
        assert "tcp-options-1" in answer

        created = _http_json(
            f"{base}/click2dial/calls",
            {"agent": "1000", "callee": "0820001234", "outbound_id": "0123456789"},
            "POST",
        )
        call_url = f"{base}/click2dial/calls/{created['id']}"
        deadline = time.monotonic() + 15
        while _http_json(call_url)["status"] != "bridged":
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        time.sleep(1.5)
        callee.ctrl("hangup")  # the BYE reaches the service over the trunk's TCP flow
        deadline = time.monotonic() + 10
        while (view := _http_json(call_url))["status"] != "ended":
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        agent.wait_event("CALL_CLOSED", 5)
        cdr = view["cdr"]
        assert (cdr["disposition"], cdr["end_code"], cdr["end_reason"]) == (
            "ANSWERED",
            16,
            "callee_hungup",
        ), view
        assert cdr["call_time"] >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in log_path.read_text()


def test_serve_over_tls_as_a_process_registers_and_unregisters(
    tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk]
) -> None:
    """``transport = tls`` under ``sipdialer serve``: the trunk's certificate verified against
    ``ca_file`` for the name given (localhost), the binding on the trunk's TLS socket, and
    the un-REGISTER over the same flow at SIGTERM."""
    trunk = kamailio_trunk(qop=True, tls=True)
    conf = tmp_path / "sip.conf"
    conf.write_text(
        f"[trunk]\nregistrar = localhost:{trunk.tls_port}\ntransport = tls\n"
        f"ca_file = {trunk.ca_file}\ndomain = trunk.test\nusername = dialer\npassword = s3cret\n"
        f"[sip]\nlisten = 127.0.0.1:{ports.free_port('both')}\n"
        f"[http]\nlisten = 127.0.0.1:0\n"
        f"[redis]\nurl = redis://127.0.0.1:1/0\noutbox = {tmp_path / 'outbox'}\n"
    )
    proc, log_path = start_serve(conf)
    try:
        wait_registered(proc, log_path)
        bindings = trunk.bindings("dialer")
        assert bindings and all(b.socket.startswith("tls:") for b in bindings), bindings
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_path.read_text()
    assert f"target=127.0.0.1:{trunk.tls_port}/tls" in text
    assert trunk.lookup("dialer") == []
    assert "Traceback" not in text
