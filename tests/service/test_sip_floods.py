"""The service under SIP floods and hostile input, in-process on real UDP sockets (issue 11,
point 6): state and logs stay bounded.

* 20,000 OPTIONS from four sockets keep no server transaction (they are answered
  statelessly) and leave RSS where it was — before, each held a transaction 32 s;
* a REGISTER flood (stateful: the registrar needs its transactions) fills the table only
  up to its cap, and the rest gets 503 + Retry-After;
* a refused INVITE is answered once (no Timer G retransmissions to a source that never
  ACKs), and a burst of them is logged a few times a second, with the suppressed count;
* header values that reach the log (From with ESC, NUL, CR, U+2028, bytes that are not
  UTF-8, ``event=`` look-alikes) are quoted and escaped;
* malformed HTTP is logged at info in one line, without a traceback.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from sipdialer.config import parse_config
from sipdialer.logs import _Formatter
from sipdialer.service import Service
from sipdialer.sip.message import Response, parse_message
from tests.fixtures import ports
from tests.fixtures.api_service import api_service
from tests.fixtures.lab import wait_for

MakeService = Callable[..., Any]


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[MakeService]:
    started: list[Service] = []

    async def make(extra: str = "", t1: float = 0.5) -> Service:
        port = ports.free_port("both")
        config = parse_config(
            f"[sip]\nlisten = 127.0.0.1:{port}\nt1 = {t1}\n"
            f"[registrar]\nstore = {tmp_path / 'bindings.json'}\n{extra}"
        )
        service = Service(config, serve_http=False)
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()


class Peer(asyncio.DatagramProtocol):
    """A UDP socket on loopback that counts the responses it gets, by status."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.responses: list[Response] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.port = self.transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        message = parse_message(data, strict=False)
        if isinstance(message, Response):
            self.statuses[message.status] += 1
            if len(self.responses) < 1000:
                self.responses.append(message)

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, dest)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def peer(host: str = "127.0.0.1") -> Peer:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(Peer, local_addr=(host, 0))
    return protocol


def sip_request(
    method: str,
    service_port: int,
    via_port: int,
    n: int,
    *,
    from_header: str = "<sip:probe@example.com>;tag=abc",
    user: str = "0820001234",
    extra: str = "",
) -> bytes:
    return (
        f"{method} sip:{user}@127.0.0.1:{service_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{via_port};branch=z9hG4bK{n:x}{os.urandom(4).hex()};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {from_header}\r\n"
        f"To: <sip:{user}@127.0.0.1:{service_port}>\r\n"
        f"Call-ID: {n}-{os.urandom(6).hex()}@flood\r\n"
        f"CSeq: 1 {method}\r\n"
        f"Contact: <sip:{user}@127.0.0.1:{via_port}>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode("utf-8", "surrogateescape")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def flood(
    peers: list[Peer], dest: tuple[str, int], total: int, make: Callable[[Peer, int], bytes]
) -> None:
    """Send ``total`` requests round-robin from ``peers`` as fast as the service answers
    them: at most 200 unanswered at a time, so loopback socket buffers do not drop most of
    the flood (a stall of 0.2 s lets the sender go on regardless)."""

    def answered() -> int:
        return sum(sum(p.statuses.values()) for p in peers)

    loop = asyncio.get_running_loop()
    for n in range(total):
        source = peers[n % len(peers)]
        source.send(make(source, n), dest)
        if n % 50 == 49:
            stall_until = loop.time() + 0.2
            while n + 1 - answered() > 200 and loop.time() < stall_until:
                await asyncio.sleep(0.001)


async def settle(peers: list[Peer], quiet: float = 0.3, timeout: float = 15.0) -> int:
    """Wait until no more answers arrive for ``quiet`` seconds; the number answered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    count, since = -1, loop.time()
    while loop.time() < deadline:
        now_count = sum(sum(p.statuses.values()) for p in peers)
        if now_count != count:
            count, since = now_count, loop.time()
        elif loop.time() - since >= quiet:
            break
        await asyncio.sleep(0.02)
    return count


async def test_options_flood_keeps_no_transactions_and_no_memory(
    make_service: MakeService,
) -> None:
    service = await make_service()
    port = service.transport.port
    dest = ("127.0.0.1", port)
    peers = [await peer() for _ in range(4)]
    largest = 0

    async def watch() -> None:
        nonlocal largest
        while True:
            largest = max(largest, len(service.endpoint.server_transactions))
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch())
    gc.collect()
    rss_before = rss_bytes()
    try:
        await flood(peers, dest, 20_000, lambda p, n: sip_request("OPTIONS", port, p.port, n))
        await settle(peers)
        gc.collect()
        rss_growth = rss_bytes() - rss_before
    finally:
        watcher.cancel()
        for p in peers:
            p.close()
    answered = sum(p.statuses[200] for p in peers)
    assert answered >= 15_000  # the service really handled the flood (loopback drops some)
    # before: every OPTIONS held a server transaction for 64·T1 = 32 s (~4 kB each)
    assert largest == 0, f"{largest} server transactions held"
    assert len(service.endpoint.server_transactions) == 0
    assert service.endpoint.stats["stateless_200"] >= answered
    assert rss_growth < 25 * 2**20, f"RSS grew by {rss_growth / 2**20:.1f} MB"


async def test_register_flood_fills_the_table_only_up_to_its_cap(
    make_service: MakeService,
) -> None:
    service = await make_service("[extensions]\n1001 = flood-pw\n")
    endpoint = service.endpoint
    endpoint.max_server_transactions = 500
    endpoint.max_server_transactions_per_source = 400
    port = service.transport.port
    peers = [await peer("127.0.0.1"), await peer("127.0.0.2")]
    try:
        await flood(
            peers,
            ("127.0.0.1", port),
            3000,
            lambda p, n: sip_request("REGISTER", port, p.port, n, user="1001"),
        )
        answered = await settle(peers)
    finally:
        for p in peers:
            p.close()
    statuses = sum((p.statuses for p in peers), Counter[int]())
    # the table holds 500 (neither source more than 400 of them): the rest is refused
    assert answered >= 2500 and statuses[401] + statuses[503] == answered, statuses
    assert len(endpoint.server_transactions) == statuses[401] == 500, statuses
    assert all(100 <= p.statuses[401] <= 400 for p in peers), [p.statuses for p in peers]
    assert statuses[503] == endpoint.stats["answered_503"] >= 2000, statuses
    refusal = next(r for p in peers for r in p.responses if r.status == 503)
    assert refusal.headers.get("Retry-After") == "5"


async def test_refused_invite_is_answered_once_and_its_log_is_bounded(
    make_service: MakeService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sipdialer.sip")
    service = await make_service(t1=0.1)  # Timer G would resend at 0.1, 0.2, 0.4, 0.8 s…
    port = service.transport.port
    single = await peer()
    try:
        single.send(sip_request("INVITE", port, single.port, 1), ("127.0.0.1", port))
        await asyncio.sleep(2.0)  # never ACKed
        assert single.statuses == {403: 1}
        assert single.responses[0].reason == "Forbidden (no incoming calls)"
        assert service.endpoint.server_transactions == ()
        # a burst of INVITEs from one source
        await flood(
            [single],
            ("127.0.0.1", port),
            300,
            lambda p, n: sip_request("INVITE", port, p.port, 100 + n),
        )
        burst = await settle([single])
        await asyncio.sleep(1.1)
        single.send(sip_request("INVITE", port, single.port, 999), ("127.0.0.1", port))
        await wait_for(lambda: single.statuses[403] == burst + 1, 5, "the last refusal")
    finally:
        single.close()
    refused = service.endpoint.stats["stateless_403"]
    assert refused == single.statuses[403] and refused >= 150
    lines = [r.getMessage() for r in caplog.records if "sip_invite_refused" in r.getMessage()]
    # one line per request before; now at most 5 a second per source, then the count
    assert 2 <= len(lines) <= 16, len(lines)
    suppressed = sum(int(n) for line in lines for n in re.findall(r"suppressed=(\d+)", line))
    assert suppressed + len(lines) == refused
    assert lines[-1].endswith(f"suppressed={suppressed}")


HOSTILE_FROM = (
    '"\x1b[2J\x1b[31mAdmin\x00\r event=call_state state=bridged\u2028level=error\x85\udcff"'
    " <sip:x@evil.example>;tag=t1"
)


def line_fields(line: str) -> list[tuple[str, str]]:
    pattern = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
    return [(m.group(1), m.group(2)) for m in pattern.finditer(line)]


async def test_hostile_header_values_are_escaped_in_the_log(
    make_service: MakeService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sipdialer.sip")
    service = await make_service()
    port = service.transport.port
    single = await peer()
    try:
        data = sip_request(
            "INVITE",
            port,
            single.port,
            1,
            from_header=HOSTILE_FROM,
            extra="User-Agent: evil\r event=forged\x1b]0;title\x07\r\n",
        )
        assert b"\x1b" in data and b"\x00" in data and b"\xff" in data
        single.send(data, ("127.0.0.1", port))
        await wait_for(lambda: single.statuses[403] == 1, 5, "the refusal")
    finally:
        single.close()
    (record,) = [r for r in caplog.records if "sip_invite_refused" in r.getMessage()]
    line = _Formatter().format(record)
    for raw in ("\x1b", "\x00", "\r", "\n", "\u2028", "\x85", "\x07", "\udcff"):
        assert raw not in line, repr(raw)
    line.encode("utf-8")  # printable: no lone surrogate left to break the stream
    keys = [k for k, _ in line_fields(line)]
    assert keys == ["level", "logger", "event", "source", "port", "from", "to", "user_agent"]
    fields = dict(line_fields(line))
    assert fields["event"] == "sip_invite_refused"
    assert "\\x1b[2J" in fields["from"] and "\\x00" in fields["from"]
    assert "\\u2028" in fields["from"] and "\\udcff" in fields["from"]


async def test_malformed_http_is_one_info_line_without_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    garbage = [
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
        b"POST /click2dial/calls HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: \x1b[31m\r\n\r\n",
    ]
    async with api_service(tmp_path, http_extra="api_tokens = secret") as lab:
        for data in garbage:
            reader, writer = await asyncio.open_connection("127.0.0.1", lab.port)
            writer.write(data)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    with_traceback = [r for r in caplog.records if r.exc_info and r.name.startswith("aiohttp")]
    assert with_traceback == [], [r.getMessage() for r in with_traceback]
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
    lines = [r for r in caplog.records if "event=http_malformed_request" in r.getMessage()]
    assert len(lines) == len(garbage)
    assert all(r.levelno == logging.INFO and "remote=127.0.0.1" in r.getMessage() for r in lines)
    for record in lines:
        assert "\n" not in _Formatter().format(record)
