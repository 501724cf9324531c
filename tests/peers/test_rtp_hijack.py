"""RTP hijack (issue 11, point 1): valid RTP sprayed from another loopback address at the
whole RTP range while a call is set up must not capture either leg.

A real call (Kamailio trunk, baresip agent 440 Hz and callee 1000 Hz) runs while an
attacker on 127.0.0.66 sends a well-formed PCMU stream (2600 Hz, in-sequence, one SSRC
per port) to every port of the service's RTP range every 2 ms, from before the call is
placed until it has ended. The relay must latch each leg onto its phone only: the callee
hears the agent, the recording's channels hold the phones' tones, the attacker receives
nothing, and ``/metrics`` counts the foreign packets it dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import soundfile
from prometheus_client.parser import text_string_to_metric_families

from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import CallRequest
from sipdialer.rtp.g711 import encode_ulaw
from sipdialer.rtp.packet import build
from sipdialer.service import Service
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import ended, tone_of, trunk_config, wait_state

pytestmark = pytest.mark.peers

AGENT, CALLEE, OUTBOUND = "1000", "0820001234", "0123456789"
ATTACKER = "127.0.0.66"
RTP_PORTS = 20
#: Seconds between two packets to one port: a flood, so the spray races the phones.
CADENCE = 0.002


@dataclass
class Sprayer(asyncio.DatagramProtocol):
    """The attacker's socket: counts what the relay sends it."""

    received: list[tuple[float, bytes, tuple[str, int]]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((time.monotonic(), data, addr))

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: closed ports
        pass


async def spray(sprayer: Sprayer, ports: range, stop: asyncio.Event) -> int:
    """Every :data:`CADENCE` seconds one valid PCMU packet (2600 Hz) to each port, an
    in-sequence stream of its own per port; returns how many packets were sent."""
    assert sprayer.transport is not None
    t = np.arange(160) / 8000
    frames = [
        encode_ulaw((8000 * np.sin(2 * np.pi * 2600 * (t + i * 0.02))).astype(np.int16))
        for i in range(50)
    ]
    ssrc = {port: 0x0BAD0000 + port for port in ports}
    sent, n = 0, 0
    start = time.monotonic()
    while not stop.is_set():
        payload = frames[n % len(frames)]
        for port in ports:
            pkt = build(0, (7000 + n) & 0xFFFF, (n * 160) & 0xFFFFFFFF, ssrc[port], payload)
            sprayer.transport.sendto(pkt, ("127.0.0.1", port))
            sent += 1
        n += 1
        await asyncio.sleep(max(0.0, start + n * CADENCE - time.monotonic()))
    return sent


@pytest.fixture
async def service(
    tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk]
) -> AsyncIterator[tuple[Service, KamailioTrunk]]:
    trunk = kamailio_trunk(qop=True)
    config = parse_config(
        trunk_config(trunk, rtp_ports=RTP_PORTS)
        + f"""
[http]
listen = 127.0.0.1:0
[calls]
agent_ring_timeout = 5
callee_ring_timeout = 5
[recording]
directory = {tmp_path / "recordings"}
"""
    )
    svc = Service(config, sink=MemorySink())
    await svc.start()
    yield svc, trunk
    await svc.stop()


async def test_sprayed_rtp_captures_neither_leg(
    service: tuple[Service, KamailioTrunk], make_phone: Callable[..., BaresipPhone]
) -> None:
    svc, trunk = service
    assert svc.dialer is not None
    low, high = svc.config.sip.rtp_ports
    agent = make_phone("agent", AGENT, trunk, tone_hz=440)
    callee = make_phone("callee", CALLEE, trunk, tone_hz=1000)

    loop = asyncio.get_running_loop()
    _, sprayer = await loop.create_datagram_endpoint(Sprayer, local_addr=(ATTACKER, 0))
    stop = asyncio.Event()
    attack = asyncio.ensure_future(spray(sprayer, range(low, high + 1), stop))
    try:
        await asyncio.sleep(0.3)  # the spray is on before the call is placed
        runner = await svc.dialer.originate(
            CallRequest(agent=AGENT, callee=CALLEE, outbound_id=OUTBOUND, call_ref="hijack")
        )
        t_bridged = await wait_state(runner, "bridged")
        await asyncio.sleep(3.0)
        t_hangup = time.monotonic()
        await asyncio.to_thread(callee.ctrl, "hangup")
        cdr = await ended(runner)
    finally:
        stop.set()
        sent = await attack
        assert sprayer.transport is not None
        sprayer.transport.close()
    assert sent > 1000

    p = cdr.cdr_payload()
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    # the relay never sent the attacker anything: neither leg latched onto it
    assert sprayer.received == [], f"{len(sprayer.received)} packets reached the attacker"
    assert runner.bridge is not None
    assert runner.bridge.a.remote is not None and runner.bridge.a.remote[0] == "127.0.0.1"
    assert runner.bridge.b.remote is not None and runner.bridge.b.remote[0] == "127.0.0.1"

    # the recording: agent 440 Hz left, callee 1000 Hz right (not the attacker's 2600 Hz)
    wav = Path(svc.config.recording.directory) / f"{p['recording_url']}.wav"
    data, _ = soundfile.read(wav, dtype="int16")
    assert abs(len(data) / 8000 - (t_hangup - t_bridged)) <= 1.0
    hz, level = tone_of(wav, 0)
    assert abs(hz - 440) < 15 and level > 500, (hz, level)
    hz, level = tone_of(wav, 1)
    assert abs(hz - 1000) < 15 and level > 500, (hz, level)

    # the callee heard the agent (baresip's sndfile: -dec.wav is what it received)
    await asyncio.to_thread(agent.wait_event, "CALL_CLOSED", 5)
    await asyncio.to_thread(callee.wait_event, "CALL_CLOSED", 5)
    heard = [w for w in callee.recordings() if w.name.endswith("-dec.wav")]
    assert len(heard) == 1, callee.recordings()
    hz, level = tone_of(heard[0])
    assert abs(hz - 440) < 15 and level > 500, (hz, level)

    # the dropped foreign packets are counted, per leg and in /metrics
    rtp = {leg.leg: leg for leg in runner.view().rtp}
    assert rtp["agent"].packets_foreign > 0 and rtp["callee"].packets_foreign > 0
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{svc.http_port}/metrics") as resp,
    ):
        text = await resp.text()
    foreign = {
        s.labels["leg"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "sipdialer_rtp_packets_foreign_total"
    }
    assert foreign.get("agent", 0) > 0 and foreign.get("callee", 0) > 0, foreign
