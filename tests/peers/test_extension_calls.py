"""Agents that are extensions registered to the service itself: a baresip phone registers
as 1001, a call with agent=1001 rings it directly (the trunk never sees the agent leg) and
bridges it to a callee on the Kamailio trunk; a configured but unregistered extension ends
the call with cause 20 before the callee is dialled; two phones on one extension fork."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import soundfile

from sipdialer.aio.registrar_runtime import RegistrarRuntime
from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import CallRequest, CallRunner
from sipdialer.service import Service
from tests.fixtures import ports
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import ended, peak_hz, trunk_config, wait_state

PASSWORD = "Agent-1001-pw"
CALLEE = "0820001234"


class Lab:
    def __init__(self, trunk: KamailioTrunk, service: Service, runtime: RegistrarRuntime):
        self.trunk = trunk
        self.service = service
        self.runtime = runtime

    @property
    def sip_addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.service.transport.port)

    async def call(self, agent: str) -> CallRunner:
        assert self.service.dialer is not None
        return await self.service.dialer.originate(
            CallRequest(agent=agent, callee=CALLEE, outbound_id="0123456789", call_ref="ext")
        )


@pytest.fixture
async def lab(tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk]) -> AsyncIterator[Lab]:
    trunk = kamailio_trunk(qop=True)
    config = parse_config(
        trunk_config(trunk, rtp_ports=100)
        + f"""
[calls]
agent_ring_timeout = 5
[recording]
directory = {tmp_path / "recordings"}
[registrar]
# the default challenge (MD5 only): Debian's baresip 1.0 registers out of the box
store = {tmp_path / "bindings.json"}
[extensions]
1001 = {PASSWORD}
1002 = other-password
"""
    )
    service = Service(config, sink=MemorySink(), serve_http=False)
    await service.start()
    assert service.registrar is not None and service.dialer is not None
    assert service.dialer.registrar is service.registrar.registrar
    yield Lab(trunk, service, service.registrar)
    await service.stop()


async def test_registered_extension_is_rung_directly(
    lab: Lab, make_phone: Callable[..., BaresipPhone]
) -> None:
    phone = await asyncio.to_thread(
        make_phone, "ext1001", "1001", lab.sip_addr, tone_hz=440, password=PASSWORD
    )
    callee = make_phone("callee", CALLEE, lab.trunk, tone_hz=1000)
    runner = await lab.call("1001")
    t_bridged = await wait_state(runner, "bridged")
    await asyncio.sleep(2.0)
    await asyncio.to_thread(callee.ctrl, "hangup")
    p = (await ended(runner)).cdr_payload()
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    assert p["agent_route"] == "extension"
    assert abs(p["call_time"] - (time.monotonic() - t_bridged)) <= 1.0
    # the phone was rung by the service itself: the trunk never routed anything to 1001
    established = await asyncio.to_thread(phone.wait_event, "CALL_ESTABLISHED", 2)
    assert established["direction"] == "incoming"
    assert "-> 1001" not in lab.trunk.log_text() and "sip:1001@" not in lab.trunk.log_text()
    # the WAV: the phone (agent, 440 Hz) left, the trunk callee (1000 Hz) right
    wav = Path(lab.service.config.recording.directory) / f"{p['recording_url']}.wav"
    data, rate = soundfile.read(wav, dtype="int16")
    assert rate == 8000 and data.shape[1] == 2
    middle = data[len(data) // 4 : 3 * len(data) // 4].astype(float)
    assert abs(peak_hz(middle[:, 0]) - 440) < 15
    assert abs(peak_hz(middle[:, 1]) - 1000) < 15


async def test_unregistered_extension_is_cause_20_and_callee_never_dialled(
    lab: Lab, make_phone: Callable[..., BaresipPhone]
) -> None:
    callee = make_phone("callee", CALLEE, lab.trunk, tone_hz=1000)
    runner = await lab.call("1002")
    p = (await ended(runner, timeout=5)).cdr_payload()
    assert (p["end_code"], p["disposition"], p["end_reason"]) == (20, "FAILED", "not_registered")
    assert p["cause_name"] == "SUBSCRIBER_ABSENT"
    assert p["agent_route"] == "extension"
    assert runner.callee is None and runner.agent_forks == []
    await asyncio.sleep(0.3)
    assert not any(e.get("type", "").startswith("CALL_") for e in callee.events)
    assert f"-> {CALLEE}" not in lab.trunk.log_text()  # no INVITE was routed to the callee


async def test_two_phones_on_one_extension_fork_first_answer_wins(
    lab: Lab, make_phone: Callable[..., BaresipPhone]
) -> None:
    desk = await asyncio.to_thread(
        make_phone, "desk", "1001", lab.sip_addr, tone_hz=440, answer="manual", password=PASSWORD
    )
    soft = await asyncio.to_thread(
        make_phone, "soft", "1001", lab.sip_addr, tone_hz=440, password=PASSWORD
    )
    assert len(lab.runtime.registrar.lookup("1001", time.time())) == 2
    make_phone("callee", CALLEE, lab.trunk, tone_hz=1000, answer="manual")
    runner = await lab.call("1001")
    await wait_state(runner, "callee_ringing")
    assert len(runner.agent_forks) == 2
    # the soft phone answered; the ringing desk phone got a CANCEL
    await asyncio.to_thread(soft.wait_event, "CALL_ESTABLISHED", 3)
    await asyncio.to_thread(desk.wait_event, "CALL_CLOSED", 5)
    runner.hangup()
    p = (await ended(runner)).cdr_payload()
    assert p["end_reason"] == "api_hangup" and p["agent_route"] == "extension"


async def test_extensions_listed_by_the_api_behind_the_token(
    tmp_path: Path, make_phone: Callable[..., BaresipPhone]
) -> None:
    import aiohttp

    config = parse_config(
        f"""
[sip]
listen = 127.0.0.1:{ports.free_port("both")}
[http]
listen = 127.0.0.1:0
api_tokens = secret-token
[registrar]
algorithms = md5
store = {tmp_path / "bindings.json"}
[extensions]
1001 = {PASSWORD}
1002 = other-password
"""
    )
    service = Service(config, sink=MemorySink())
    await service.start()
    try:
        sip_addr = ("127.0.0.1", service.transport.port)
        await asyncio.to_thread(
            make_phone, "ext1001", "1001", sip_addr, tone_hz=440, password=PASSWORD
        )
        url = f"http://127.0.0.1:{service.http_port}/click2dial/extensions"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                assert resp.status == 401
            auth = {"Authorization": "Bearer secret-token"}
            async with http.get(url, headers=auth) as resp:
                assert resp.status == 200
                body = await resp.json()
                text = json.dumps(body)
    finally:
        await service.stop()
    by_ext = {e["extension"]: e for e in body["extensions"]}
    assert set(by_ext) == {"1001", "1002"}
    assert by_ext["1001"]["registered"] is True and by_ext["1002"]["registered"] is False
    (contact,) = by_ext["1001"]["contacts"]
    assert contact["transport"] == "UDP" and 0 < contact["expires_in"] <= 3600
    assert contact["source"].startswith("127.0.0.1:")
    assert PASSWORD not in text and "other-password" not in text
