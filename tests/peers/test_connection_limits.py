"""Incoming TCP connections hold up (issue 10, item 5): 2,000 idle connections from 40
other addresses and a sender that trickles one byte a second do not stop a phone from
registering over a new TCP connection, nor a call through the trunk. The limits are the
shipped defaults (``ConnectionLimits()``), on uvloop."""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipdialer.aio.transport import ConnectionLimits
from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.request import CallRequest
from sipdialer.service import Service
from sipdialer.sip.digest import ClientAuthenticator
from sipdialer.sip.message import Response, StreamFramer, parse_message
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import ended, trunk_config, wait_state

IDLE = 2000
SOURCES = [f"127.0.0.{n}" for n in range(2, 42)]  # 40 addresses x 50 connections


def register_request(port: int, local: tuple[str, int], extra: str = "") -> bytes:
    return (
        f"REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {local[0]}:{local[1]};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
        "Max-Forwards: 70\r\nTo: <sip:1001@127.0.0.1>\r\n"
        "From: <sip:1001@127.0.0.1>;tag=ext1001\r\nCall-ID: limits-register\r\n"
        f"CSeq: {2 if extra else 1} REGISTER\r\n"
        f"Contact: <sip:1001@{local[0]}:{local[1]};transport=tcp>\r\nExpires: 60\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def read_response(conn: socket.socket) -> Response:
    framer = StreamFramer()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data = conn.recv(65535)
        assert data, "connection closed before an answer"
        for raw in framer.feed(data):
            message = parse_message(raw)
            assert isinstance(message, Response)
            return message
    raise AssertionError("no answer within 5 s")


def register_over_new_tcp_connection(port: int) -> int:
    """REGISTER extension 1001 with digest auth over one new TCP connection; final status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        local = conn.getsockname()
        conn.sendall(register_request(port, local))
        challenge = read_response(conn)
        assert challenge.status == 401, challenge.status
        auth = ClientAuthenticator("1001", "pw1001")
        auth.on_challenge(challenge.headers.get_all("WWW-Authenticate"))
        headers = "".join(
            f"{k}: {v}\r\n"
            for k, v in auth.authorize(method="REGISTER", uri=f"sip:127.0.0.1:{port}")
        )
        conn.sendall(register_request(port, local, headers))
        return read_response(conn).status


def trickle(port: int, stop: threading.Event, closed: list[float]) -> None:
    """One byte a second of a REGISTER that never ends; note when we are cut off."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.99", 0)) as s:
        s.settimeout(1.0)
        for byte in b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.99:5060\r\n":
            if stop.is_set():
                return
            try:
                s.sendall(bytes([byte]))
                if s.recv(1) == b"":
                    closed.append(time.monotonic() - started)
                    return
            except TimeoutError:
                continue
            except OSError:
                closed.append(time.monotonic() - started)
                return


async def test_idle_floods_and_slow_senders_do_not_block_registration_or_calls(
    tmp_path: Path,
    kamailio_trunk: Callable[..., KamailioTrunk],
    make_phone: Callable[..., BaresipPhone],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="sipdialer.transport")
    trunk = kamailio_trunk(qop=True)
    agent = make_phone("agent", "1000", trunk, tone_hz=440)
    make_phone("callee", "0820001234", trunk, tone_hz=1000)
    config = parse_config(
        trunk_config(trunk)
        + f"[extensions]\n1001 = pw1001\n[registrar]\nstore = {tmp_path / 'bindings.json'}\n"
        + f"[recording]\ndirectory = {tmp_path / 'recordings'}\n"
    )
    service = Service(config, sink=MemorySink(), serve_http=False)
    await service.start()
    port = service.transport.port
    limits = service.transport.limits
    assert limits == ConnectionLimits()  # the shipped defaults
    idle: list[socket.socket] = []
    stop = threading.Event()
    closed: list[float] = []
    slow = threading.Thread(target=trickle, args=(port, stop, closed), daemon=True)
    try:

        def flood() -> None:
            for n in range(IDLE):
                source = SOURCES[n % len(SOURCES)]
                idle.append(
                    socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
                )

        await asyncio.to_thread(flood)
        await asyncio.sleep(0.5)
        inbound, _ = service.transport.connection_counts()
        assert inbound <= limits.total
        assert service.transport.evicted >= IDLE - limits.total
        slow.start()  # after the flood: the eviction of stale connections never picks it

        # a phone registers over a brand-new TCP connection while all that is held
        assert await asyncio.to_thread(register_over_new_tcp_connection, port) == 200

        # and a call through the trunk is bridged and ends normally
        assert service.dialer is not None
        runner = await service.dialer.originate(
            CallRequest(agent="1000", callee="0820001234", outbound_id="0123456789")
        )
        await wait_state(runner, "bridged", 15)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(agent.ctrl, "hangup")
        payload = (await ended(runner)).cdr_payload()
        assert (payload["disposition"], payload["end_code"]) == ("ANSWERED", 16)

        # the trickling sender was cut off once its message took longer than allowed
        await asyncio.to_thread(slow.join, limits.message_timeout + 10)
        assert closed, "the byte-a-second sender was never disconnected"
        assert limits.message_timeout - 1 <= closed[0] <= limits.message_timeout + 3
        assert "reason=message_timeout" in caplog.text
    finally:
        stop.set()
        for s in idle:
            s.close()
        await service.stop()
