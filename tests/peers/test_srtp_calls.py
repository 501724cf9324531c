"""Encrypted media against real peers (issue 13): baresip phones with ``mediaenc=srtp-mand``
(SDES-SRTP required: 488 to any offer but RTP/SAVP with ``a=crypto``) as the callee behind
the Kamailio trunk and as an extension registered to the service, bridged to plain phones.

Each answered call is checked three ways: the service's stereo WAV (agent 440 Hz left,
callee 1000 Hz right: the relay decrypted before recording), what each phone heard (its
own ``-dec.wav``), and a capture of the loopback interface: the SRTP phone's RTP is
ciphertext (~8 bits of entropy per payload byte, 10 bytes of tag), the plain phone's is
µ-law (far below) — so the capture itself is shown to see the media.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import CallRequest, CallRunner
from sipdialer.service import Service
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.capture import Datagram, LoopbackCapture, entropy_bits, rtp_payloads
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import ended, peak_hz, tone_of, trunk_config, wait_state

AGENT, CALLEE, PLAIN_CALLEE = "1000", "0820001240", "0820001236"
EXTENSION, PASSWORD = "1001", "Agent-1001-pw"
MakePhone = Callable[..., BaresipPhone]


class Lab:
    def __init__(self, trunk: KamailioTrunk, service: Service) -> None:
        self.trunk = trunk
        self.service = service

    async def call(self, agent: str = AGENT, callee: str = CALLEE) -> CallRunner:
        assert self.service.dialer is not None
        return await self.service.dialer.originate(
            CallRequest(agent=agent, callee=callee, outbound_id="0123456789", call_ref="srtp")
        )

    def wav(self, ref: object) -> Path:
        return Path(self.service.config.recording.directory) / f"{ref}.wav"


@pytest.fixture
def make_lab(
    tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk]
) -> Callable[..., AsyncIterator[Lab]]:
    async def make(trunk_srtp: str, extra: str = "") -> AsyncIterator[Lab]:
        trunk = kamailio_trunk(qop=True)
        config = parse_config(
            trunk_config(trunk, rtp_ports=100, srtp=trunk_srtp)
            + f"[calls]\nagent_ring_timeout = 5\ncallee_ring_timeout = 5\n"
            f"[recording]\ndirectory = {tmp_path / 'recordings'}\n"
            f"[registrar]\nstore = {tmp_path / 'bindings.json'}\n{extra}"
        )
        service = Service(config, sink=MemorySink(), serve_http=False)
        await service.start()
        try:
            yield Lab(trunk, service)
        finally:
            await service.stop()

    return make


def phone_ports(phone: BaresipPhone) -> range:
    return range(phone.rtp_port_min, phone.rtp_port_max + 1)


def both_ways(datagrams: list[Datagram], phone: BaresipPhone) -> tuple[list[bytes], list[bytes]]:
    """RTP payloads the phone sent and those it received, from a capture."""
    ports = phone_ports(phone)
    sent = rtp_payloads(d for d in datagrams if d[0] in ports)
    received = rtp_payloads(d for d in datagrams if d[1] in ports)
    return sent, received


def assert_encrypted(payloads: list[bytes], what: str) -> None:
    assert len(payloads) > 50, f"{what}: only {len(payloads)} RTP packets captured"
    bits = entropy_bits(payloads)
    assert bits > 7.5, f"{what}: {bits:.2f} bits/byte looks like plain G.711"
    # 160 bytes of G.711 + the 10-byte tag of AES_CM_128_HMAC_SHA1_80 (or 4 for _32)
    assert {len(p) for p in payloads} <= {164, 170}, {len(p) for p in payloads}


def assert_plain(payloads: list[bytes], what: str) -> None:
    assert len(payloads) > 50, f"{what}: only {len(payloads)} RTP packets captured"
    bits = entropy_bits(payloads)
    assert bits < 7.0, f"{what}: {bits:.2f} bits/byte is not plain G.711"
    assert {len(p) for p in payloads} == {160}


def heard(phone: BaresipPhone) -> tuple[float, float]:
    wavs = [w for w in phone.recordings() if w.name.endswith("-dec.wav")]
    assert len(wavs) == 1, phone.recordings()
    return tone_of(wavs[0])


def keys_of(runner: CallRunner) -> list[str]:
    """Every SDES key of the call's legs (ours and the peers'), as SDP writes them."""
    keys = []
    for sdes in runner._sdes.values():
        keys += [base64.b64encode(k).decode() for k in sdes._ours.values()]
        if sdes.keys is not None:
            keys.append(base64.b64encode(sdes.keys.inbound).decode())
    return keys


@pytest.mark.parametrize("policy", ["optional", "required"])
async def test_srtp_only_callee_behind_the_trunk_is_bridged_and_recorded_in_clear(
    make_lab: Callable[..., AsyncIterator[Lab]],
    make_phone: MakePhone,
    policy: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``optional``: our best-effort offer (RTP/AVP + a=crypto) gets baresip's 488, we
    offer RTP/SAVP once more and it answers, while the plain agent on the same trunk takes
    the best-effort offer as plain RTP (SRTP↔RTP); ``required``: RTP/SAVP at once, and the
    agent on that trunk must speak SRTP too (SRTP↔SRTP, each leg its own keys)."""
    srtp_agent = policy == "required"
    caplog.set_level(logging.DEBUG, logger="sipdialer")
    async for lab in make_lab(policy):
        agent = make_phone(
            "agent", AGENT, lab.trunk, tone_hz=440, mediaenc="srtp-mand" if srtp_agent else None
        )
        callee = make_phone("callee", CALLEE, lab.trunk, tone_hz=1000, mediaenc="srtp-mand")
        with LoopbackCapture([*phone_ports(agent), *phone_ports(callee)]) as capture:
            runner = await lab.call()
            t_bridged = await wait_state(runner, "bridged")
            await asyncio.sleep(1.5)
            # a re-INVITE each way under SRTP (hold, then resume): answered with our key
            await asyncio.to_thread(callee.ctrl, "hold")
            await asyncio.sleep(0.5)
            await asyncio.to_thread(callee.ctrl, "resume")
            await asyncio.sleep(2.5)
            t_hangup = time.monotonic()
            await asyncio.to_thread(callee.ctrl, "hangup")
            p = (await ended(runner)).cdr_payload()
        datagrams = capture.datagrams
        keys = keys_of(runner)
        assert len(keys) >= 4
        logged = caplog.text + json.dumps(p)
        assert "event=leg_answered" in caplog.text  # the log was captured
        assert caplog.text.count("event=leg_reinvite") >= 2, "no hold/resume re-INVITEs"
        assert "event=srtp_refused" not in caplog.text
        assert not [k for k in keys if k in logged], "an SRTP key reached a log line or the CDR"
        assert (p["disposition"], p["end_code"]) == ("ANSWERED", 16), p
        assert runner.callee is not None
        assert runner.callee.fallback_offered is (policy == "optional")
        # the relay decrypted what it recorded: agent left, callee right
        wav = lab.wav(p["recording_url"])
        assert abs(tone_of(wav, 0)[0] - 440) < 15
        assert abs(tone_of(wav, 1)[0] - 1000) < 15
        assert abs(p["call_time"] - (t_hangup - t_bridged)) <= 1.0
        # after the resume the callee is heard again (its last second, right channel)
        data, _ = soundfile.read(wav, dtype="int16")
        last = data[-12000:-4000, 1].astype(float)
        assert abs(peak_hz(last) - 1000) < 15 and np.sqrt(np.mean(last**2)) > 500
        # the callee leg is ciphertext both ways, the agent leg plain µ-law (optional)
        sent, received = both_ways(datagrams, callee)
        assert_encrypted(sent, "callee → relay")
        assert_encrypted(received, "relay → callee")
        sent, received = both_ways(datagrams, agent)
        check = assert_encrypted if srtp_agent else assert_plain
        check(sent, "agent → relay")
        check(received, "relay → agent")
        # both phones heard the other
        await asyncio.to_thread(agent.wait_event, "CALL_CLOSED", 5)
        await asyncio.to_thread(callee.wait_event, "CALL_CLOSED", 5)
        hz, level = heard(callee)
        assert abs(hz - 440) < 15 and level > 500, (hz, level)
        hz, level = heard(agent)
        assert abs(hz - 1000) < 15 and level > 500, (hz, level)
        assert runner.bridge is not None
        assert runner.bridge.b.srtp_forged == 0 and runner.bridge.b.srtp_replayed == 0


async def test_plain_trunk_and_srtp_only_callee_fail_cleanly_with_cause_88(
    make_lab: Callable[..., AsyncIterator[Lab]], make_phone: MakePhone
) -> None:
    """``srtp = no``: the callee refuses our plain offer with 488 → FAILED, cause 88
    (RFC 3398: 488 is "incompatible destination"), the agent is hung up on, nothing hangs,
    and the service goes on to bridge the next call."""
    async for lab in make_lab("no"):
        agent = make_phone("agent", AGENT, lab.trunk, tone_hz=440)
        make_phone("callee", CALLEE, lab.trunk, tone_hz=1000, mediaenc="srtp-mand")
        runner = await lab.call()
        p = (await ended(runner, timeout=15)).cdr_payload()
        assert (p["disposition"], p["end_code"], p["callee_sip_status"]) == ("FAILED", 88, 488)
        assert p["cause_name"] == "INCOMPATIBLE_DESTINATION"
        assert p["recording_url"] is None and p["call_time"] == 0
        assert runner.callee is not None and not runner.callee.fallback_offered
        await asyncio.to_thread(agent.wait_event, "CALL_CLOSED", 5)
        # the service is up: the next call, to a plain phone, is bridged
        make_phone("plain", PLAIN_CALLEE, lab.trunk, tone_hz=1000)
        runner = await lab.call(callee=PLAIN_CALLEE)
        await wait_state(runner, "bridged")
        await asyncio.sleep(1.0)
        runner.hangup()
        p = (await ended(runner)).cdr_payload()
        assert (p["disposition"], p["end_code"]) == ("ANSWERED", 16)


async def test_srtp_extension_phone_calls_out_through_a_plain_trunk(
    make_lab: Callable[..., AsyncIterator[Lab]], make_phone: MakePhone
) -> None:
    """An extension whose phone speaks only SRTP (``[extension_srtp] 1001 = required``)
    registered to the service, bridged to a plain callee on a ``srtp = no`` trunk:
    SRTP↔RTP, both directions heard."""
    extra = f"[extensions]\n{EXTENSION} = {PASSWORD}\n[extension_srtp]\n{EXTENSION} = required\n"
    async for lab in make_lab("no", extra):
        sip_addr = ("127.0.0.1", lab.service.transport.port)
        phone = await asyncio.to_thread(
            make_phone,
            "ext1001",
            EXTENSION,
            sip_addr,
            tone_hz=440,
            password=PASSWORD,
            mediaenc="srtp-mand",
        )
        callee = make_phone("callee", PLAIN_CALLEE, lab.trunk, tone_hz=1000)
        with LoopbackCapture([*phone_ports(phone), *phone_ports(callee)]) as capture:
            runner = await lab.call(agent=EXTENSION, callee=PLAIN_CALLEE)
            await wait_state(runner, "bridged")
            await asyncio.sleep(3.0)
            await asyncio.to_thread(callee.ctrl, "hangup")
            p = (await ended(runner)).cdr_payload()
        assert (p["disposition"], p["end_code"], p["agent_route"]) == (
            "ANSWERED",
            16,
            "extension",
        )
        wav = lab.wav(p["recording_url"])
        assert abs(tone_of(wav, 0)[0] - 440) < 15
        assert abs(tone_of(wav, 1)[0] - 1000) < 15
        sent, received = both_ways(capture.datagrams, phone)
        assert_encrypted(sent, "extension phone → relay")
        assert_encrypted(received, "relay → extension phone")
        sent, received = both_ways(capture.datagrams, callee)
        assert_plain(sent, "callee → relay")
        assert_plain(received, "relay → callee")
        await asyncio.to_thread(phone.wait_event, "CALL_CLOSED", 5)
        await asyncio.to_thread(callee.wait_event, "CALL_CLOSED", 5)
        hz, level = heard(phone)
        assert abs(hz - 1000) < 15 and level > 500, (hz, level)
        hz, level = heard(callee)
        assert abs(hz - 440) < 15 and level > 500, (hz, level)
