"""Odd but valid SDP answers (issue 11, point 5), with one SIPp UAS as the trunk.

A 200 OK whose ``c=`` holds a host name, or an address the relay cannot reach (IPv6 when
the service listens on IPv4, multicast), must end the call at once — ACK, BYE with
``Reason: Q.850;cause=88``, CDR FAILED/88 — with no traceback in the log. With the
service listening on ``[::1]`` the same call over IPv6 is bridged both ways and recorded.

The SIPp trunk and its helpers are those of ``test_call_edges.py`` (``register = no``;
the scenarios branch on the Request-URI: ``sip:1000@`` is the agent's leg).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import soundfile

from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import CallRequest, CallRunner
from sipdialer.rtp.g711 import decode_ulaw, encode_ulaw
from sipdialer.rtp.packet import HEADER
from sipdialer.service import Service
from tests.fixtures import ports
from tests.fixtures.lab import ended, peak_hz, wait_state
from tests.fixtures.process import wait_until
from tests.fixtures.require import require_binary
from tests.fixtures.sipp import start_sipp
from tests.peers.test_call_edges import SCENARIOS, SippTrunk, header, sipp_workdir

if TYPE_CHECKING:
    from tests.conftest import PeerStack

pytestmark = pytest.mark.peers

AGENT, CALLEE, OUTBOUND = "1000", "0820001234", "0123456789"


@pytest.fixture
def sipp_trunk(tmp_path: Path, peer_stack: PeerStack) -> Callable[..., SippTrunk]:
    """Factory ``sipp_trunk(scenario, host, **keys)``: a started SIPp UAS (``-m 2``) on
    ``host`` (``127.0.0.1`` or ``::1``) playing the trunk; ``keys`` become ``-key``."""
    require_binary("sipp")

    def start(scenario: str, host: str = "127.0.0.1", **keys: object) -> SippTrunk:
        port = ports.free_port("both")
        media = ports.free_port_range(4, "udp")
        workdir = sipp_workdir(tmp_path)
        args: list[object] = [
            *("-sf", SCENARIOS / scenario),
            *("-i", host, "-p", port, "-t", "u1"),
            *("-mi", host, "-mp", media),
            *("-m", 2, "-recv_timeout", 15000, "-timeout", "40s", "-timeout_error"),
            *("-trace_msg", "-message_file", workdir / "messages.log"),
            *("-trace_err", "-error_file", workdir / "errors.log"),
        ]
        for key, value in keys.items():
            args += ["-key", key, value]
        proc = start_sipp([str(a) for a in args], workdir / "sipp.out", cwd=workdir)
        trunk = SippTrunk(proc, port, workdir, [port, *range(media, media + 4)])
        peer_stack.add(f"sipp trunk :{port}", trunk)
        if not wait_until(lambda: (workdir / "sipp.out").exists() and proc.running(), 5):
            pytest.fail(f"sipp did not start:\n{trunk.log_tail()}", pytrace=False)
        return trunk

    return start


@pytest.fixture
async def make_service(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory ``await make_service(trunk_port, host)``: the service listening on ``host``
    (SIP and RTP), its trunk a SIPp UAS on the same host."""
    started: list[Service] = []
    reserved: list[int] = []

    async def make(trunk_port: int, host: str = "127.0.0.1") -> Service:
        port = ports.free_port("both")
        rtp = ports.free_port_range(20, "udp")
        reserved.extend([port, *range(rtp, rtp + 20)])
        literal = f"[{host}]" if ":" in host else host
        config = parse_config(
            f"""
[trunk]
registrar = {literal}:{trunk_port}
domain = trunk.test
register = no
[sip]
listen = {literal}:{port}
rtp_ports = {rtp}-{rtp + 19}
t1 = 0.5
[calls]
agent_ring_timeout = 5
callee_ring_timeout = 10
[recording]
directory = {tmp_path / "recordings"}
"""
        )
        service = Service(config, sink=MemorySink(), serve_http=False)
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()
    ports.release(reserved)


@dataclass
class RtpSocket(asyncio.DatagramProtocol):
    """A UDP socket of this test standing in for a phone's media port."""

    packets: list[tuple[float, bytes]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None
    port: int = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.packets.append((time.monotonic(), data))


@pytest.fixture
async def rtp_socket() -> AsyncIterator[Callable[..., Any]]:
    """Factory ``await rtp_socket(host)`` → a bound :class:`RtpSocket` (closed at the end)."""
    made: list[RtpSocket] = []

    async def make(host: str = "127.0.0.1") -> RtpSocket:
        loop = asyncio.get_running_loop()
        _, sock = await loop.create_datagram_endpoint(RtpSocket, local_addr=(host, 0))
        made.append(sock)
        return sock

    yield make
    for sock in made:
        if sock.transport is not None:
            sock.transport.close()


async def call(service: Service) -> CallRunner:
    assert service.dialer is not None
    return await service.dialer.originate(
        CallRequest(agent=AGENT, callee=CALLEE, outbound_id=OUTBOUND, call_ref="sdp-1")
    )


async def send_tone(
    sock: RtpSocket, dest: Callable[[], Any], hz: float, stop: asyncio.Event
) -> None:
    """A PCMU tone in 20 ms RTP packets from ``sock`` to ``dest()`` until ``stop``."""
    assert sock.transport is not None
    t = np.arange(160) / 8000
    n, start = 0, time.monotonic()
    while not stop.is_set():
        samples = (8000 * np.sin(2 * np.pi * hz * (t + n * 0.02))).astype(np.int16)
        rtp = HEADER.pack(0x80, 0, (500 + n) & 0xFFFF, (n * 160) & 0xFFFFFFFF, 0x5EED0000 + hz)
        sock.transport.sendto(rtp + encode_ulaw(samples), dest())
        n += 1
        await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))


def tone(packets: list[bytes]) -> tuple[float, float]:
    """(peak Hz, RMS) of PCMU RTP packets."""
    samples = np.concatenate([decode_ulaw(p[12:]) for p in packets]).astype(float)
    return peak_hz(samples), float(np.sqrt(np.mean(samples**2)))


# ---- a 200 OK naming an address the relay cannot send to ---------------------------------
@pytest.mark.parametrize(
    ("addrtype", "address"),
    [
        ("IP4", "media.example.com"),  # a host name: valid SDP, never resolved
        ("IP6", "::1"),  # IPv6 while the service listens on IPv4
        ("IP6", "2001:db8::7"),
        ("IP4", "224.0.1.9"),  # multicast
    ],
)
async def test_unusable_answer_ends_the_call_at_once(
    sipp_trunk, make_service, rtp_socket, addrtype: str, address: str, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    agent_media = await rtp_socket()
    trunk = sipp_trunk(
        "odd_answer.xml",
        agent_rtp=agent_media.port,
        callee_addrtype=addrtype,
        callee_address=address,
        callee_rtp=4000,
    )
    service = await make_service(trunk.port)
    started = time.monotonic()
    runner = await call(service)
    await wait_state(runner, "callee_ringing")
    p = (await ended(runner, timeout=8.0)).cdr_payload()
    elapsed = time.monotonic() - started
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("FAILED", 88, "error")
    assert p["cause_name"] == "INCOMPATIBLE_DESTINATION"
    assert (p["end_leg"], p["callee_sip_status"], p["call_time"]) == ("callee", 200, 0)
    assert address in (p["end_detail"] or "")
    assert elapsed < 3.0, f"took {elapsed:.1f} s (the ring timeout is 10 s)"
    assert runner.bridge is not None and runner.bridge.b.remote is None

    # the peer: the callee's 200 was ACKed and BYEd (Reason 88), the agent BYEd too
    await asyncio.to_thread(trunk.assert_completed, 10.0)
    assert runner.callee is not None and runner.agent is not None
    callee = trunk.received_in(runner.callee.call_id)
    assert [m.split()[0] for m in callee] == ["INVITE", "ACK", "BYE"], callee
    assert header(callee[2], "Reason").startswith("Q.850;cause=88")
    agent = trunk.received_in(runner.agent.call_id)
    assert [m.split()[0] for m in agent] == ["INVITE", "ACK", "BYE"], agent
    assert header(agent[2], "Reason").startswith("Q.850;cause=88")

    # said once, plainly, and no traceback anywhere
    assert "event=media_address_unusable" in caplog.text
    assert not [r for r in caplog.records if r.exc_info], "a traceback reached the log"
    assert "Traceback" not in caplog.text


# ---- IPv6 when the service listens on IPv6 -------------------------------------------------
async def test_ipv6_media_is_bridged_and_recorded(
    sipp_trunk, make_service, rtp_socket, caplog
) -> None:
    caplog.set_level(logging.INFO)
    agent_media, callee_media = await rtp_socket("::1"), await rtp_socket("::1")
    trunk = sipp_trunk(
        "answer_then_bye.xml", "::1", agent_rtp=agent_media.port, callee_rtp=callee_media.port
    )
    service = await make_service(trunk.port, "::1")
    runner = await call(service)
    assert runner.bridge is not None
    bridge = runner.bridge
    stop = asyncio.Event()
    talkers = [
        asyncio.ensure_future(
            send_tone(agent_media, lambda: ("::1", bridge.a.local_port), 440, stop)
        ),
        asyncio.ensure_future(
            send_tone(callee_media, lambda: ("::1", bridge.b.local_port), 1000, stop)
        ),
    ]
    try:
        t_bridged = await wait_state(runner, "bridged")
        p = (await ended(runner)).cdr_payload()
        t_end = time.monotonic()
    finally:
        stop.set()
        await asyncio.gather(*talkers)
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    # both legs latched onto the phones' own IPv6 sockets
    assert bridge.a.source is not None and bridge.a.source[:2] == ("::1", agent_media.port)
    assert bridge.b.source is not None and bridge.b.source[:2] == ("::1", callee_media.port)
    # each side heard the other: the agent's 440 Hz at the callee, 1000 Hz at the agent
    heard = callee_media.packets
    to_callee = [d for t, d in heard if t_bridged + 0.2 <= t < t_end - 0.1]
    assert len(to_callee) >= 0.7 * (t_end - t_bridged - 0.3) / 0.02, len(to_callee)
    hz, level = tone(to_callee)
    assert abs(hz - 440) < 20 and level > 1000, (hz, level)
    to_agent = [d for t, d in agent_media.packets if t_bridged + 0.2 <= t < t_end - 0.1]
    hz, level = tone(to_agent)
    assert abs(hz - 1000) < 20 and level > 1000, (hz, level)
    # and the recording holds both
    wav = Path(service.config.recording.directory) / f"{p['recording_url']}.wav"
    data, _ = soundfile.read(wav, dtype="int16")
    middle = data[len(data) // 4 : 3 * len(data) // 4].astype(float)
    assert abs(peak_hz(middle[:, 0]) - 440) < 20 and abs(peak_hz(middle[:, 1]) - 1000) < 20
    await asyncio.to_thread(trunk.assert_completed, 10.0)
    # our SDP offered IPv6 media
    invites = [m for m in trunk.received() if m.startswith("INVITE ")]
    assert invites and all("c=IN IP6 ::1" in m for m in invites), invites[:1]
