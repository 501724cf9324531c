"""Whole calls through the engine against real peers: a Kamailio trunk and baresip phones
(agent sends 440 Hz, callee 1000 Hz). Each test checks the CDR the engine produced and,
for answered calls, the stereo recording."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import soundfile

from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import CallRequest, CallRunner
from sipdialer.service import Service
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import ended, peak_hz, trunk_config, wait_state

AGENT, CALLEE = "1000", "0820001234"
OUTBOUND = "0123456789"


class Lab:
    def __init__(self, trunk: KamailioTrunk, service: Service, sink: MemorySink) -> None:
        self.trunk = trunk
        self.service = service
        self.sink = sink

    async def call(self, agent: str = AGENT, callee: str = CALLEE) -> CallRunner:
        assert self.service.dialer is not None
        return await self.service.dialer.originate(
            CallRequest(agent=agent, callee=callee, outbound_id=OUTBOUND, call_ref="ref-1")
        )


@pytest.fixture
async def lab(tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk]) -> Lab:
    trunk = kamailio_trunk(qop=True)
    sink = MemorySink()
    config = parse_config(
        trunk_config(trunk)
        + f"""
[calls]
agent_ring_timeout = 4
callee_ring_timeout = 3
[recording]
directory = {tmp_path / "recordings"}
"""
    )
    service = Service(config, sink=sink, serve_http=False)
    await service.start()
    yield Lab(trunk, service, sink)
    await service.stop()


def phones(make_phone: Callable[..., BaresipPhone], trunk: KamailioTrunk, **kw: object):
    agent = make_phone("agent", AGENT, trunk, tone_hz=440, answer=kw.get("agent_answer", "auto"))
    callee = make_phone(
        "callee", CALLEE, trunk, tone_hz=1000, answer=kw.get("callee_answer", "auto")
    )
    return agent, callee


async def test_answered_call_callee_hangs_up(lab: Lab, make_phone) -> None:
    agent, callee = phones(make_phone, lab.trunk)
    runner = await lab.call()
    t_bridged = await wait_state(runner, "bridged")
    await asyncio.sleep(3.0)
    t_hangup = time.monotonic()
    await asyncio.to_thread(callee.ctrl, "hangup")
    cdr = await ended(runner)
    p = cdr.cdr_payload()
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    assert p["ended_by"] == "callee"
    assert abs(p["call_time"] - (t_hangup - t_bridged)) <= 1.0
    assert p["extension"] == AGENT and p["number"] == CALLEE and p["dial_number"] == OUTBOUND
    assert p["callee_sip_status"] == 200 and p["agent_sip_status"] == 200
    assert lab.sink.cdrs == [cdr]
    # the agent's phone also saw the call end (we sent it a BYE)
    await asyncio.to_thread(agent.wait_event, "CALL_CLOSED", 5)
    # the recording: agent left (440 Hz), callee right (1000 Hz), as long as the bridge
    ref = p["recording_url"]
    assert ref
    wav = Path(lab.service.config.recording.directory) / f"{ref}.wav"
    data, rate = soundfile.read(wav, dtype="int16")
    assert rate == 8000 and data.shape[1] == 2
    seconds = len(data) / 8000
    assert abs(seconds - (t_hangup - t_bridged)) <= 1.0
    middle = data[len(data) // 4 : 3 * len(data) // 4].astype(float)
    assert abs(peak_hz(middle[:, 0]) - 440) < 15
    assert abs(peak_hz(middle[:, 1]) - 1000) < 15
    # the caller ID the callee saw
    inc = callee.wait_event("CALL_ESTABLISHED", 1)
    assert OUTBOUND in inc["peeruri"]


async def test_agent_hangs_up(lab: Lab, make_phone) -> None:
    agent, callee = phones(make_phone, lab.trunk)
    runner = await lab.call()
    await wait_state(runner, "bridged")
    await asyncio.sleep(1.0)
    await asyncio.to_thread(agent.ctrl, "hangup")
    p = (await ended(runner)).cdr_payload()
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "agent_hungup")
    await asyncio.to_thread(callee.wait_event, "CALL_CLOSED", 5)


@pytest.mark.parametrize(
    ("number", "code", "disposition", "status"),
    [
        ("0820000486", 17, "BUSY", 486),
        ("0829999999", 1, "FAILED", 404),
        ("0820000480", 18, "NO ANSWER", 480),
        ("0820000503", 41, "CONGESTION", 503),
    ],
)
async def test_callee_failures(
    lab: Lab, make_phone, number: str, code: int, disposition: str, status: int
) -> None:
    agent = make_phone("agent", AGENT, lab.trunk, tone_hz=440)
    runner = await lab.call(callee=number)
    p = (await ended(runner)).cdr_payload()
    assert (p["end_code"], p["disposition"], p["callee_sip_status"]) == (code, disposition, status)
    assert p["call_time"] == 0 and p["recording_url"] is None
    # the agent, who had answered, was hung up on
    await asyncio.to_thread(agent.wait_event, "CALL_CLOSED", 5)


async def test_callee_ring_timeout(lab: Lab, make_phone) -> None:
    make_phone("agent", AGENT, lab.trunk, tone_hz=440)
    ringer = make_phone("ringer", CALLEE, lab.trunk, tone_hz=1000, answer="manual")
    runner = await lab.call()
    t_ringing = await wait_state(runner, "callee_ringing")
    p = (await ended(runner)).cdr_payload()
    elapsed = time.monotonic() - t_ringing
    assert (p["end_code"], p["disposition"], p["end_reason"]) == (19, "NO ANSWER", "timeout")
    assert (p["ended_by"], p["end_leg"]) == ("system", "callee")
    assert p["callee_sip_status"] == 487  # our CANCEL's answer, waited for before the CDR
    assert elapsed <= 3 + 1.0
    # the ringing phone saw our CANCEL
    await asyncio.to_thread(ringer.wait_event, "CALL_CLOSED", 5)


async def test_agent_does_not_answer_callee_never_dialled(lab: Lab, make_phone) -> None:
    make_phone("agent", AGENT, lab.trunk, tone_hz=440, answer="manual")
    callee = make_phone("callee", CALLEE, lab.trunk, tone_hz=1000)
    runner = await lab.call()
    started = time.monotonic()
    p = (await ended(runner)).cdr_payload()
    assert time.monotonic() - started <= 4 + 1.0  # agent_ring_timeout = 4
    assert (p["end_code"], p["disposition"], p["end_reason"]) == (19, "NO ANSWER", "timeout")
    assert (p["ended_by"], p["end_leg"]) == ("system", "agent")
    assert runner.callee is None and p["callee_sip_status"] is None
    assert not any(e.get("type") == "CALL_INCOMING" for e in callee.events)


async def test_agent_hangs_up_while_callee_rings(lab: Lab, make_phone) -> None:
    agent = make_phone("agent", AGENT, lab.trunk, tone_hz=440)
    ringer = make_phone("ringer", CALLEE, lab.trunk, tone_hz=1000, answer="manual")
    runner = await lab.call()
    await wait_state(runner, "callee_ringing")
    await asyncio.to_thread(ringer.wait_event, "CALL_INCOMING", 5)
    await asyncio.to_thread(agent.ctrl, "hangup")
    p = (await ended(runner)).cdr_payload()
    assert (p["end_code"], p["disposition"], p["end_reason"]) == (16, "NO ANSWER", "agent_hungup")
    assert (p["ended_by"], p["end_leg"], p["call_time"]) == ("agent", "agent", 0)
    assert p["callee_sip_status"] == 487
    # the callee's phone saw the CANCEL: its call closed without being answered
    closed = await asyncio.to_thread(ringer.wait_event, "CALL_CLOSED", 5)
    assert closed is not None


async def test_answered_call_over_tcp_to_the_trunk(
    tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk], make_phone
) -> None:
    """The same call with [trunk] transport = tcp: INVITEs, ACK, BYE both ways over TCP."""
    trunk = kamailio_trunk(qop=True)
    agent, callee = phones(make_phone, trunk)
    sink = MemorySink()
    config = parse_config(
        trunk_config(trunk, transport="tcp")
        + f"[recording]\ndirectory = {tmp_path / 'recordings'}\n"
    )
    service = Service(config, sink=sink, serve_http=False)
    await service.start()
    try:
        assert service.dialer is not None
        runner = await service.dialer.originate(
            CallRequest(agent=AGENT, callee=CALLEE, outbound_id=OUTBOUND, call_ref="tcp")
        )
        await wait_state(runner, "bridged")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(callee.ctrl, "hangup")  # the BYE reaches us over TCP
        p = (await ended(runner)).cdr_payload()
        assert (p["disposition"], p["end_code"], p["end_reason"]) == (
            "ANSWERED",
            16,
            "callee_hungup",
        )
        await asyncio.to_thread(agent.wait_event, "CALL_CLOSED", 5)
        assert "transport=tcp" in " ".join(trunk.lookup("dialer"))
    finally:
        await service.stop()
