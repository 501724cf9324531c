"""The service as a SIP element on real UDP and TCP sockets: OPTIONS, refused INVITEs,
unknown methods, malformed input, rport — and the process never dies on input."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator

import pytest

from sipdialer.config import parse_config
from sipdialer.service import Service
from sipdialer.sip.message import Response, parse_message
from tests.fixtures import ports
from tests.fixtures.corpus import ALL, load

# the adapters must work on either loop; uvloop has no loop.sock_sendto, so the test
# sockets send directly (non-blocking UDP never blocks)
pytestmark = pytest.mark.both_loops


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    port = ports.free_port("both")
    svc = Service(parse_config(f"[sip]\nlisten = 127.0.0.1:{port}\n"), serve_http=False)
    await svc.start()
    yield svc
    await svc.stop()


def request(method: str, port: int, *, via_port: int, rport: bool = True, extra: str = "") -> bytes:
    branch = "z9hG4bK" + os.urandom(6).hex()
    rp = ";rport" if rport else ""
    return (
        f"{method} sip:0820001234@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{via_port};branch={branch}{rp}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:probe@example.com>;tag=abc\r\n"
        f"To: <sip:0820001234@127.0.0.1:{port}>\r\n"
        f"Call-ID: {os.urandom(8).hex()}@probe\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Udp:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    async def exchange(self, data: bytes, port: int, timeout: float = 2.0) -> Response | None:
        loop = asyncio.get_running_loop()
        self.sock.sendto(data, ("127.0.0.1", port))
        try:
            while True:
                raw = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)
                msg = parse_message(raw)
                if isinstance(msg, Response) and msg.status >= 200:
                    return msg
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


async def test_options_answered_with_allow_and_accept(service: Service) -> None:
    udp = Udp()
    try:
        resp = await udp.exchange(
            request("OPTIONS", service.transport.port, via_port=udp.port), service.transport.port
        )
    finally:
        udp.close()
    assert resp is not None and resp.status == 200
    allow = resp.headers.values("Allow")
    assert {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"} <= set(allow)
    assert resp.headers.get("Accept") == "application/sdp"
    assert resp.to_addr().tag  # a UAS answer carries a To tag


async def test_unsolicited_invite_is_refused_never_answered(service: Service) -> None:
    udp = Udp()
    try:
        port = service.transport.port
        resp = await udp.exchange(request("INVITE", port, via_port=udp.port), port)
    finally:
        udp.close()
    assert resp is not None and resp.status == 403


@pytest.mark.parametrize(
    ("method", "status"), [("FROBNICATE", 501), ("SUBSCRIBE", 405), ("REGISTER", 405)]
)
async def test_unknown_and_unsupported_methods(service: Service, method: str, status: int) -> None:
    udp = Udp()
    try:
        port = service.transport.port
        resp = await udp.exchange(request(method, port, via_port=udp.port), port)
    finally:
        udp.close()
    assert resp is not None and resp.status == status
    if status == 405:
        assert "INVITE" in resp.headers.values("Allow")


async def test_require_unknown_extension_gets_420(service: Service) -> None:
    udp = Udp()
    try:
        port = service.transport.port
        data = request("OPTIONS", port, via_port=udp.port, extra="Require: nothingSupportsThis\r\n")
        resp = await udp.exchange(data, port)
    finally:
        udp.close()
    assert resp is not None and resp.status == 420
    assert resp.headers.get("Unsupported") == "nothingSupportsThis"


async def test_rport_response_goes_to_the_source_port(service: Service) -> None:
    """The Via names a port nobody listens on; with rport the answer still reaches us."""
    udp = Udp()
    try:
        port = service.transport.port
        resp = await udp.exchange(request("OPTIONS", port, via_port=9, rport=True), port)
        assert resp is not None and resp.status == 200
        via = resp.top_via()
        assert via.params.get("rport") == str(udp.port)
        assert via.received == "127.0.0.1" or via.host == "127.0.0.1"
        # without rport the answer goes to the Via port (nobody there), not back to us
        resp = await udp.exchange(request("OPTIONS", port, via_port=9, rport=False), port, 0.5)
        assert resp is None
    finally:
        udp.close()


async def test_malformed_request_gets_400_and_garbage_is_dropped(service: Service) -> None:
    udp = Udp()
    port = service.transport.port
    try:
        bad_cseq = request("OPTIONS", port, via_port=udp.port).replace(
            b"CSeq: 1 OPTIONS", b"CSeq: 99999999999 OPTIONS"
        )
        resp = await udp.exchange(bad_cseq, port)
        assert resp is not None and resp.status == 400
        version = request("OPTIONS", port, via_port=udp.port).replace(
            b" SIP/2.0\r\n", b" SIP/7.0\r\n", 1
        )
        resp = await udp.exchange(version, port)
        assert resp is not None and resp.status == 505
        rng = random.Random(4475)
        for _ in range(300):
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
            udp.sock.sendto(junk, ("127.0.0.1", port))
        for name in ALL:
            data = load(name).replace(b"192.0.2.", b"127.0.0.")
            udp.sock.sendto(data, ("127.0.0.1", port))
        await asyncio.sleep(0.3)
        # still alive and answering
        resp = await udp.exchange(request("OPTIONS", port, via_port=udp.port), port)
        assert resp is not None and resp.status == 200
    finally:
        udp.close()


async def test_options_over_tcp_on_the_same_connection(service: Service) -> None:
    port = service.transport.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        local_port = writer.get_extra_info("sockname")[1]
        data = request("OPTIONS", port, via_port=local_port).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
        writer.write(b"\r\n\r\n")  # a CRLF keep-alive ping first
        pong = await asyncio.wait_for(reader.readexactly(2), 2)
        assert pong == b"\r\n"
        writer.write(data[:40])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(data[40:])  # split across segments: framing by Content-Length
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        resp = parse_message(head)
        assert isinstance(resp, Response) and resp.status == 200
        # a message without Content-Length on a stream is refused: the connection closes
        writer.write(data.replace(b"Content-Length: 0\r\n", b""))
        rest = await asyncio.wait_for(reader.read(), 2)
        assert rest == b""
    finally:
        writer.close()
