"""The simulated phone (``sipdialer.demo.sim_phone``) on its own: our own user agent
(the service's :class:`~sipdialer.leg.Leg` on a :class:`UserAgent`) calls it directly, and
a plain UDP socket stands for our media. It rings, answers with SDP, sends 50 packets a
second of its tone, hears ours, and handles BYE, busy, CANCEL and its own hang-up."""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from sipdialer.aio.transport import SipTransport
from sipdialer.aio.useragent import UserAgent
from sipdialer.demo.sim_phone import SimPhone
from sipdialer.demo.tone_rtp import ToneRtp
from sipdialer.engine.leg import Leg, LegTarget
from sipdialer.rtp import packet
from sipdialer.rtp.g711 import decode_ulaw
from sipdialer.rtp.inspect_wav import dominant_frequency
from sipdialer.sip.endpoint import SipEndpoint
from sipdialer.sip.sdp import AudioOffer, build_sdp

HOST = "127.0.0.1"


class RtpSink(asyncio.DatagramProtocol):
    """Our media socket: keeps (arrival, datagram)."""

    def __init__(self) -> None:
        self.packets: list[tuple[float, bytes]] = []
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.packets.append((time.monotonic(), data))

    @property
    def port(self) -> int:
        return int(self.transport.get_extra_info("sockname")[1])


@dataclass
class Recorder:
    """A LegListener that writes down what the leg reports."""

    progress: list[int] = field(default_factory=list)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    answer_sdp: AudioOffer | None = None
    failed: list[int] = field(default_factory=list)
    bye: asyncio.Event = field(default_factory=asyncio.Event)
    terminated: asyncio.Event = field(default_factory=asyncio.Event)

    def leg_progress(self, leg: Leg, status: int, sdp: AudioOffer | None) -> None:
        self.progress.append(status)

    def leg_answered(self, leg: Leg, sdp: AudioOffer | None) -> None:
        self.answer_sdp = sdp
        self.answered.set()

    def leg_failed(self, leg: Leg, status: int, reason: tuple[str, ...], unreachable: bool) -> None:
        self.failed.append(status)

    def leg_bye(self, leg: Leg, reason: tuple[str, ...]) -> None:
        self.bye.set()

    def leg_media_changed(self, leg: Leg, sdp: AudioOffer) -> None:
        pass

    def leg_terminated(self, leg: Leg) -> None:
        self.terminated.set()


class Uac:
    """Our own user agent: endpoint + transport + UserAgent, and an RTP socket."""

    def __init__(self) -> None:
        self.endpoint = SipEndpoint(host=HOST, port=0)
        self.ua = UserAgent()
        self.transport = SipTransport(self.endpoint, self.ua.handle_event, listen=(HOST, 0))
        self.ua.attach(self.transport)
        self.rtp = RtpSink()

    async def start(self) -> None:
        await self.transport.start()
        self.endpoint.port = self.transport.port
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self.rtp, local_addr=(HOST, 0))

    async def stop(self) -> None:
        self.rtp.transport.close()
        await self.transport.close()

    def leg(
        self,
        request_uri: str,
        dest: tuple[str, int],
        *,
        credentials: tuple[str, str] | None = None,
        number: str = "1000",
    ) -> tuple[Leg, Recorder]:
        listener = Recorder()
        offer = build_sdp(
            address=HOST,
            port=self.rtp.port,
            session_id=secrets.randbelow(2**31),
            version=1,
            codecs=[("PCMU", 0), ("PCMA", 8)],
        )
        target = LegTarget(
            request_uri=request_uri,
            dest=dest,
            from_uri="sip:0820001234@sim-trunk.invalid",
            from_display="0820001234",
            to_uri=f"sip:{number}@sim-trunk.invalid",
            contact_uri=f"sip:test@{HOST}:{self.transport.port}",
            credentials=credentials,
        )
        leg = Leg(
            "agent",
            self.ua,
            target,
            listener,
            sdp_offer=offer,
            answer_reinvite=lambda sdp: offer,
        )
        return leg, listener


@pytest.fixture
async def uac() -> AsyncIterator[Uac]:
    u = Uac()
    await u.start()
    yield u
    await u.stop()


async def make_phone(**kw: Any) -> SimPhone:
    phone = SimPhone(kw.pop("name", "agent"), kw.pop("user", "1000"), **kw)
    await phone.start()
    return phone


async def test_phone_answers_our_invite_and_sends_its_tone_at_50_pps(uac: Uac) -> None:
    phone = await make_phone(tone_hz=440, ring_seconds=0.2)
    try:
        leg, heard = uac.leg(phone.contact_uri, phone.address)
        leg.invite()
        await asyncio.wait_for(heard.answered.wait(), 5)
        assert heard.progress == [180]
        assert heard.answer_sdp is not None
        assert heard.answer_sdp.rtpmap[heard.answer_sdp.payload_types[0]] == ("PCMU", 8000)
        call = await phone.wait_for_call(1)
        assert call.state == "answered" and call.caller == "0820001234"
        await asyncio.sleep(1.5)
        start = time.monotonic() - 1.0
        window = [(t, d) for t, d in uac.rtp.packets if t >= start]
        assert 47 <= len(window) <= 53, len(window)  # 50 packets a second
        headers = [packet.parse(d) for _, d in uac.rtp.packets]
        assert all(h is not None for h in headers)
        first = headers[0]
        assert first is not None and first.marker and first.payload_type == 0
        for a, b in itertools.pairwise(headers):
            assert a is not None and b is not None
            assert (b.sequence - a.sequence) % 65536 == 1
            assert (b.timestamp - a.timestamp) % 2**32 == 160
            assert b.ssrc == a.ssrc and not b.marker
        gaps = np.diff([t for t, _ in uac.rtp.packets])
        assert abs(float(np.mean(gaps)) - 0.020) < 0.002
        payloads = [d[12:] for _, d in uac.rtp.packets]
        assert {len(p) for p in payloads} == {160}
        samples = decode_ulaw(b"".join(payloads))
        assert abs(dominant_frequency(samples, 8000) - 440) < 5
        rms = float(np.sqrt(np.mean((samples / 32768.0) ** 2)))
        assert 0.15 < rms < 0.3  # a 0.3 full-scale sine: RMS 0.21
        # our BYE ends it, and the phone stops sending
        leg.hangup()
        await asyncio.wait_for(call.ended.wait(), 5)
        assert call.ended_by == "remote"
        await asyncio.sleep(0.1)
        count = len(uac.rtp.packets)
        await asyncio.sleep(0.3)
        assert len(uac.rtp.packets) == count
    finally:
        await phone.stop()


async def test_phone_hears_what_we_send(uac: Uac) -> None:
    phone = await make_phone(tone_hz=440, ring_seconds=0.1)
    ours = ToneRtp(1000)
    try:
        leg, heard = uac.leg(phone.contact_uri, phone.address)
        leg.invite()
        await asyncio.wait_for(heard.answered.wait(), 5)
        assert heard.answer_sdp is not None
        await ours.open(HOST)
        ours.start((heard.answer_sdp.address, heard.answer_sdp.port), "PCMU", 0)
        await asyncio.sleep(1.0)
        call = phone.calls[0]
        assert call.media is not None
        assert 40 <= call.media.received <= 55
        assert abs(dominant_frequency(call.media.heard(), 8000) - 1000) < 5
        leg.hangup()
    finally:
        ours.close()
        await phone.stop()


async def test_the_phone_hangs_up_when_told(uac: Uac) -> None:
    phone = await make_phone(tone_hz=1000, ring_seconds=0.1, hangup_after=0.5)
    try:
        leg, heard = uac.leg(phone.contact_uri, phone.address)
        leg.invite()
        await asyncio.wait_for(heard.answered.wait(), 5)
        t0 = time.monotonic()
        await asyncio.wait_for(heard.bye.wait(), 5)
        assert 0.4 < time.monotonic() - t0 < 1.0
        assert phone.calls[0].ended_by == "local"
        assert [e.text for e in phone.events][-1] == "hangs up -> BYE"
    finally:
        await phone.stop()


async def test_busy_phone_answers_486(uac: Uac) -> None:
    phone = await make_phone(tone_hz=440, answer="busy")
    try:
        leg, heard = uac.leg(phone.contact_uri, phone.address)
        leg.invite()
        await asyncio.wait_for(heard.terminated.wait(), 5)
        assert heard.failed == [486] and heard.progress == []
        assert phone.calls[0].state == "rejected"
    finally:
        await phone.stop()


async def test_ringing_phone_takes_cancel_with_487(uac: Uac) -> None:
    phone = await make_phone(tone_hz=440, answer="no-answer")
    try:
        leg, heard = uac.leg(phone.contact_uri, phone.address)
        leg.invite()
        call = await phone.wait_for_call(5)
        await asyncio.sleep(0.3)
        assert heard.progress == [180] and call.state == "ringing"
        leg.hangup()
        await asyncio.wait_for(heard.terminated.wait(), 5)
        assert leg.final_status == 487
        assert call.state == "cancelled" and call.ended_by == "remote"
        assert heard.failed == []  # a cancelled leg reports no failure
    finally:
        await phone.stop()
