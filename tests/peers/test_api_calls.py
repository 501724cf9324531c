"""One real call driven only through the HTTP API, against the Kamailio trunk and baresip
phones of the lab (agent sends 440 Hz, callee 1000 Hz): create, watch it bridge, hang it
up with DELETE, read its CDR and download its recording from the link in the CDR."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import soundfile

from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.service import Service
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import peak_hz, trunk_config, wait_for

AGENT, CALLEE, OUTBOUND = "1000", "0820001234", "0123456789"


@pytest.fixture
async def api_lab(
    tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk]
) -> AsyncIterator[tuple[KamailioTrunk, Service, MemorySink]]:
    trunk = kamailio_trunk(qop=True)
    sink = MemorySink()
    config = parse_config(
        trunk_config(trunk, rtp_ports=40)
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
    service = Service(config, sink=sink)
    await service.start()
    try:
        yield trunk, service, sink
    finally:
        await service.stop()


async def poll(
    client: aiohttp.ClientSession, path: str, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        async with client.get(path) as resp:
            assert resp.status == 200
            call = await resp.json()
        if done(call):
            return call
        assert time.monotonic() < deadline, call
        assert call["state"] != "ended" or done(call), call
        await asyncio.sleep(0.05)


async def test_call_through_the_api(
    api_lab: tuple[KamailioTrunk, Service, MemorySink], make_phone: Callable[..., BaresipPhone]
) -> None:
    trunk, service, sink = api_lab
    agent = make_phone("agent", AGENT, trunk, tone_hz=440)
    make_phone("callee", CALLEE, trunk, tone_hz=1000)
    base = f"http://127.0.0.1:{service.http_port}"
    async with aiohttp.ClientSession(base_url=base) as client:
        # the trunk registration shows in health
        await poll_health(client)
        async with client.post(
            "/click2dial/calls",
            json={"agent": AGENT, "callee": CALLEE, "outbound_id": OUTBOUND, "call_ref": "api-1"},
        ) as resp:
            assert resp.status == 201
            created = await resp.json()
        path = resp.headers["Location"]
        assert path == created["links"]["self"]

        bridged = await poll(client, path, lambda c: c["state"] == "bridged", 15)
        assert [e["state"] for e in bridged["timeline"]][-1] == "bridged"
        assert bridged["recording"] and bridged["links"]["recording"]
        await asyncio.sleep(2.0)

        async with client.delete(path) as resp:
            assert resp.status == 202
        ended = await poll(client, path, lambda c: c["cdr"] is not None, 10)
        cdr = ended["cdr"]
        assert ended["state"] == "ended"
        assert (cdr["disposition"], cdr["end_reason"], cdr["end_code"]) == (
            "ANSWERED",
            "api_hangup",
            16,
        )
        assert cdr["call_ref"] == "api-1" and cdr["call_time"] >= 1
        assert (cdr["extension"], cdr["number"], cdr["dial_number"]) == (AGENT, CALLEE, OUTBOUND)
        # the view shows the CDR as soon as the call ended; the sink gets it once the
        # recording is closed (the bridge's close runs first)
        await wait_for(lambda: bool(sink.cdrs), 5, "the CDR at the sink")
        assert sink.cdrs[-1].call_id == created["id"]
        assert sink.cdrs[-1].cdr_payload()["end_reason"] == cdr["end_reason"]
        async with client.delete(path) as resp:
            assert resp.status == 200  # already ended
        await asyncio.to_thread(agent.wait_event, "CALL_CLOSED", 5)

        # the recording, from the absolute link in the CDR (public_url defaults to the
        # address really listened on); wait until the bridge has released it
        url = cdr["recording_download_url"]
        assert url == f"{base}/click2dial/recordings/{cdr['recording_url']}"
        await wait_released(service)
        async with client.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "audio/wav"
            data = await resp.read()
        samples, rate = soundfile.read(io.BytesIO(data), dtype="int16")
        assert rate == 8000 and samples.ndim == 2 and samples.shape[1] == 2
        assert len(samples) / 8000 >= 1.5
        middle = samples[len(samples) // 4 : 3 * len(samples) // 4].astype(float)
        assert abs(peak_hz(middle[:, 0]) - 440) < 15
        assert abs(peak_hz(middle[:, 1]) - 1000) < 15
        async with client.get(url, headers={"Range": "bytes=0-43"}) as resp:
            assert resp.status == 206
            assert (await resp.read())[:4] == b"RIFF"

        async with client.get("/metrics") as resp:
            assert 'sipdialer_calls_total{disposition="ANSWERED"} 1' in await resp.text()


async def poll_health(client: aiohttp.ClientSession, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with client.get("/healthz") as resp:
            doc = await resp.json()
            if resp.status == 200:
                assert doc["trunk"]["state"] == "registered"
                return
        assert time.monotonic() < deadline, doc
        await asyncio.sleep(0.1)


async def wait_released(service: Service, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    assert service.dialer is not None
    while service.dialer.active:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
