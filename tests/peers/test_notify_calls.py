"""Notifications of real calls: a Kamailio trunk, baresip phones (agent 1000 at 440 Hz,
callee 0820001234 at 1000 Hz), the service with a :class:`Notifier` as its CDR sink and a
real redis-server. Checks the exact SPEC §3 shapes, the JSON Schemas, the order, and a
call that ends while Redis is down and the service restarts before Redis comes back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis.asyncio as aioredis

from sipdialer.config import Config, parse_config
from sipdialer.engine.cdr import Cdr
from sipdialer.engine.dialer import CallRequest
from sipdialer.notify.notifier import Notifier
from sipdialer.service import Service
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import ended, trunk_config, wait_state
from tests.fixtures.redis import RedisServer

AGENT, CALLEE, OUTBOUND = "1000", "0820001234", "0123456789"
CDR_KEY, C2D_KEY = "enigma:notifications:cdr", "enigma:notifications:c2d"
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CDR_SCHEMA = json.loads((SCHEMAS / "cdr.schema.json").read_text())
C2D_SCHEMA = json.loads((SCHEMAS / "c2d.schema.json").read_text())
FAST_RETRY = {"backoff_initial": 0.05, "backoff_max": 0.3}


class Lab:
    """The trunk, both phones, Redis, and the running service + notifier (replaceable)."""

    def __init__(
        self,
        config: Config,
        outbox: Path,
        redis_server: RedisServer,
        agent: BaresipPhone,
        callee: BaresipPhone,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.redis_server = redis_server
        self.agent = agent
        self.callee = callee
        self.notifier: Notifier | None = None
        self.service: Service | None = None

    async def boot(self) -> None:
        """Start a fresh notifier (replaying the outbox) and a fresh service using it."""
        self.notifier = Notifier(self.config.redis, self.outbox, background=True, **FAST_RETRY)
        await self.notifier.start()
        self.service = Service(self.config, sink=self.notifier, serve_http=False)
        await self.service.start()

    async def shutdown(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None
        if self.notifier is not None:
            await self.notifier.stop(timeout=0.3)

    async def answered_call(self, call_ref: str, *, redis_dies: bool = False) -> Cdr:
        """Agent and callee answer; the callee hangs up after ~1 s of bridge (Redis is
        stopped just before that when ``redis_dies``)."""
        assert self.service is not None and self.service.dialer is not None
        runner = await self.service.dialer.originate(
            CallRequest(agent=AGENT, callee=CALLEE, outbound_id=OUTBOUND, call_ref=call_ref)
        )
        await wait_state(runner, "bridged")
        await asyncio.sleep(1.0)
        if redis_dies:
            await asyncio.to_thread(self.redis_server.stop)
        await asyncio.to_thread(self.callee.ctrl, "hangup")
        cdr = await ended(runner)
        # both phones idle again before the next call
        await asyncio.to_thread(self.agent.wait_event, "CALL_CLOSED", 5)
        await asyncio.to_thread(self.callee.wait_event, "CALL_CLOSED", 5)
        return cdr


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def take(client: aioredis.Redis, key: str, n: int) -> list[Any]:
    """BRPOP ``n`` documents off ``key`` (oldest first); then the list must be empty."""
    docs = []
    for _ in range(n):
        item = await client.brpop([key], timeout=5)
        assert item is not None, f"only {len(docs)} of {n} documents on {key}"
        docs.append(json.loads(item[1]))
    assert await client.llen(key) == 0, f"more than {n} documents on {key}"
    return docs


def validate(document: Any, schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(document)


@pytest.fixture
async def lab(
    tmp_path: Path,
    redis_server: RedisServer,
    kamailio_trunk: Callable[..., KamailioTrunk],
    make_phone: Callable[..., BaresipPhone],
) -> AsyncIterator[Lab]:
    trunk = kamailio_trunk(qop=True)
    agent = make_phone("agent", AGENT, trunk, tone_hz=440)
    callee = make_phone("callee", CALLEE, trunk, tone_hz=1000)
    config = parse_config(
        trunk_config(trunk)
        + f"""
[http]
public_url = https://dialer.example.com
[redis]
url = {redis_server.url}
key_prefix = enigma
legacy_c2d = yes
outbox = {tmp_path / "outbox"}
[calls]
agent_ring_timeout = 4
callee_ring_timeout = 3
[recording]
directory = {tmp_path / "recordings"}
"""
    )
    lab = Lab(config, Path(config.redis.outbox), redis_server, agent, callee)
    await lab.boot()
    try:
        yield lab
    finally:
        await lab.shutdown()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(redis_server.url, decode_responses=True)
    yield c
    await c.aclose()


async def test_three_calls_in_order_with_the_spec_shapes(lab: Lab, client: aioredis.Redis) -> None:
    cdrs = [await lab.answered_call(ref) for ref in ("r1", "r2", "r3")]
    got_cdr = await take(client, CDR_KEY, 3)
    got_c2d = await take(client, C2D_KEY, 3)

    for cdr, envelope, legacy in zip(cdrs, got_cdr, got_c2d, strict=True):
        ref = cdr.record.recording_ref
        assert ref
        # the legacy document, exactly as SPEC §3 shows it
        assert legacy == {
            "notifications": [
                {
                    "extension": AGENT,
                    "disposition": "ANSWERED",
                    "call_ref": cdr.record.call_ref,
                    "end_code": 16,
                    "recording_url": ref,
                }
            ]
        }
        # the CDR envelope: what the engine built, field for field
        assert envelope == cdr.cdr_envelope()
        assert set(envelope) == {"type", "payload"} and envelope["type"] == "cdr"
        p = envelope["payload"]
        assert (p["extension"], p["number"], p["dial_number"]) == (AGENT, CALLEE, OUTBOUND)
        assert (p["disposition"], p["end_code"], p["end_reason"]) == (
            "ANSWERED",
            16,
            "callee_hungup",
        )
        assert (p["call_dir"], p["ended_by"], p["cause_name"]) == (
            "outbound",
            "callee",
            "NORMAL_CLEARING",
        )
        assert p["call_id"] == cdr.call_id and p["recording_url"] == ref
        assert p["recording_download_url"] == (
            f"https://dialer.example.com/click2dial/recordings/{ref}"
        )
        assert isinstance(p["dialed_at"], int) and 0 <= p["call_time"] <= 3
        assert p["billsec"] == p["call_time"]
        validate(envelope, CDR_SCHEMA)
        validate(legacy, C2D_SCHEMA)

    assert [d["payload"]["call_ref"] for d in got_cdr] == ["r1", "r2", "r3"]
    assert [d["notifications"][0]["call_ref"] for d in got_c2d] == ["r1", "r2", "r3"]
    assert len({d["payload"]["call_id"] for d in got_cdr}) == 3
    assert lab.notifier is not None
    status = lab.notifier.status()
    assert status["redis_ok"] is True and status["pushed_total"] == 6
    assert status["outbox_depth"] == 0


async def test_call_ends_while_redis_is_down_and_the_service_restarts(
    lab: Lab, client: aioredis.Redis
) -> None:
    cdr = await lab.answered_call("crash-1", redis_dies=True)
    notifier = lab.notifier
    assert notifier is not None
    await eventually(lambda: notifier.status()["redis_ok"] is False)
    assert notifier.status()["outbox_depth"] == 2

    # the service restarts before Redis returns: new notifier + new Service, same outbox
    await lab.shutdown()
    assert len(list(lab.outbox.glob("*.entry"))) == 2
    await lab.boot()
    assert lab.notifier is not None and lab.notifier is not notifier
    assert lab.notifier.status()["outbox_depth"] == 2

    await asyncio.to_thread(lab.redis_server.start)
    (envelope,) = await take(client, CDR_KEY, 1)
    (legacy,) = await take(client, C2D_KEY, 1)
    await eventually(
        lambda: lab.notifier is not None and lab.notifier.status()["outbox_depth"] == 0
    )
    await asyncio.sleep(0.2)  # and nothing else arrives: exactly once each
    assert await client.llen(CDR_KEY) == 0 and await client.llen(C2D_KEY) == 0

    assert envelope == cdr.cdr_envelope() and legacy == cdr.c2d_document()
    assert envelope["payload"]["call_ref"] == "crash-1"
    assert legacy["notifications"][0]["call_ref"] == "crash-1"
    validate(envelope, CDR_SCHEMA)
    validate(legacy, C2D_SCHEMA)
    assert not list(lab.outbox.glob("*.entry"))
