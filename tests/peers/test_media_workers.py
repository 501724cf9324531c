"""Calls whose media runs in worker processes (``[media] workers = 2``), against the
Kamailio trunk and baresip phones: two calls land on the two workers, a ``kill -9`` of one
worker ends only its call (both phones hung up, CDR cause 41 ``media_lost``, the WAV kept
and flagged partial), the other call goes on and is recorded whole, and the killed worker
is started again and carries the next call."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import soundfile

from sipdialer.api.metrics import ServiceCollector
from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import CallRequest, CallRunner
from sipdialer.rtp.pool import RemoteBridge
from sipdialer.service import Service
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import ended, tone_of, trunk_config, wait_for, wait_state

MakePhone = Callable[..., BaresipPhone]


@pytest.fixture
async def service(
    tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk]
) -> AsyncIterator[tuple[Service, KamailioTrunk]]:
    trunk = kamailio_trunk(qop=True)
    config = parse_config(
        trunk_config(trunk, rtp_ports=100)
        + f"[calls]\nagent_ring_timeout = 5\ncallee_ring_timeout = 5\n"
        f"[recording]\ndirectory = {tmp_path / 'recordings'}\n"
        "[media]\nworkers = 2\n"
    )
    svc = Service(config, sink=MemorySink(), serve_http=False)
    await svc.start()
    try:
        yield svc, trunk
    finally:
        await svc.stop()
    # no worker outlives the service
    assert svc.media_pool is None


async def call(svc: Service, agent: str, callee: str) -> CallRunner:
    assert svc.dialer is not None
    return await svc.dialer.originate(
        CallRequest(agent=agent, callee=callee, outbound_id="0123456789", call_ref=agent)
    )


def worker_metrics(svc: Service) -> dict[str, float]:
    """The media worker families of ``/metrics`` as the service's collector gives them."""
    return {
        sample.name: sample.value
        for family in ServiceCollector(svc.api_context()).collect()
        for sample in family.samples
        if sample.name.startswith("sipdialer_media_worker")
    }


def bridge_of(runner: CallRunner) -> RemoteBridge:
    assert isinstance(runner.bridge, RemoteBridge), runner.bridge
    return runner.bridge


async def test_a_dead_worker_ends_only_its_calls_and_comes_back(
    service: tuple[Service, KamailioTrunk], make_phone: MakePhone
) -> None:
    svc, trunk = service
    pool = svc.media_pool
    assert pool is not None and len(pool.workers) == 2
    assert worker_metrics(svc) == {
        "sipdialer_media_workers": 2,
        "sipdialer_media_worker_restarts_total": 0,
    }
    agent1 = make_phone("agent1", "1000", trunk, tone_hz=440)
    callee1 = make_phone("callee1", "0820001234", trunk, tone_hz=1000)
    agent2 = make_phone("agent2", "1001", trunk, tone_hz=440)
    callee2 = make_phone("callee2", "0820001235", trunk, tone_hz=1000)

    first = await call(svc, "1000", "0820001234")
    await wait_state(first, "bridged")
    second = await call(svc, "1001", "0820001235")
    t_bridged = await wait_state(second, "bridged")
    assert {bridge_of(first).worker_index, bridge_of(second).worker_index} == {0, 1}
    await asyncio.sleep(1.5)

    doomed = bridge_of(first)
    pid = doomed.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    p = (await ended(first, timeout=10)).cdr_payload()
    assert (p["end_code"], p["end_reason"], p["disposition"]) == (41, "media_lost", "ANSWERED")
    assert p["recording_partial"] is True
    await asyncio.to_thread(agent1.wait_event, "CALL_CLOSED", 5)
    await asyncio.to_thread(callee1.wait_event, "CALL_CLOSED", 5)

    # the other worker's call goes on, its media still flowing
    assert not second.call.ended
    other = bridge_of(second)
    await other.refresh()
    before = other.a.packets_in, other.b.packets_in
    await asyncio.sleep(1.0)
    await other.refresh()
    assert other.a.packets_in > before[0] + 20 and other.b.packets_in > before[1] + 20
    await asyncio.to_thread(callee2.ctrl, "hangup")
    t_hangup = time.monotonic()
    p2 = (await ended(second)).cdr_payload()
    assert (p2["end_code"], p2["end_reason"]) == (16, "callee_hungup")
    assert p2["recording_partial"] is False
    wav = Path(svc.config.recording.directory) / f"{p2['recording_url']}.wav"
    assert abs(tone_of(wav, 0)[0] - 440) < 15 and abs(tone_of(wav, 1)[0] - 1000) < 15
    assert abs(soundfile.info(str(wav)).duration - (t_hangup - t_bridged)) <= 1.0
    await asyncio.to_thread(agent2.wait_event, "CALL_CLOSED", 5)

    # the killed worker is back (a new process) and takes calls again
    index = doomed.worker_index

    def restarted() -> bool:
        w = pool.workers[index]
        return w is not None and w.alive and w.pid is not None and w.pid != pid

    await wait_for(restarted, 15, "the killed media worker to be started again")
    assert pool.restarts >= 1
    assert worker_metrics(svc) == {
        "sipdialer_media_workers": 2,
        "sipdialer_media_worker_restarts_total": pool.restarts,
    }
    third = await call(svc, "1000", "0820001234")
    await wait_state(third, "bridged")
    await asyncio.sleep(1.0)
    await asyncio.to_thread(callee1.ctrl, "hangup")
    p3 = (await ended(third)).cdr_payload()
    assert (p3["disposition"], p3["end_code"]) == ("ANSWERED", 16)
    wav = Path(svc.config.recording.directory) / f"{p3['recording_url']}.wav"
    assert abs(tone_of(wav, 1)[0] - 1000) < 15
