"""Tests for sipdialer.notify.Notifier against a real redis-server: order, keys, schemas,
Redis down, a restart while Redis is down, a backlog, a corrupt outbox file, a dead disk."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from sipdialer.config import RedisConfig
from sipdialer.notify.notifier import Notifier
from tests.fixtures.cdr_samples import C2D_SCHEMA, CDR_SCHEMA, make_cdr, validate
from tests.fixtures.redis import RedisServer


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(redis_server.url, decode_responses=True)
    yield c
    await c.aclose()


def notifier_for(
    redis_server: RedisServer, outbox: Path, *, prefix: str = "enigma", legacy: bool = True
) -> Notifier:
    config = RedisConfig(url=redis_server.url, key_prefix=prefix, legacy_c2d=legacy)
    return Notifier(config, outbox, backoff_initial=0.05, backoff_max=0.3)


async def take(client: aioredis.Redis, key: str, n: int) -> list[Any]:
    """BRPOP ``n`` documents from ``key`` (oldest first), then check the list is empty."""
    docs = []
    for _ in range(n):
        item = await client.brpop([key], timeout=5)
        assert item is not None, f"only {len(docs)} of {n} documents on {key}"
        docs.append(json.loads(item[1]))
    assert await client.llen(key) == 0, f"more than {n} documents on {key}"
    return docs


async def test_two_cdrs_arrive_oldest_first_on_both_keys(
    redis_server: RedisServer, client: aioredis.Redis, tmp_path: Path
) -> None:
    notifier = notifier_for(redis_server, tmp_path / "outbox")
    await notifier.start()
    try:
        first, second = make_cdr(1), make_cdr(2, bridged=False)
        notifier.submit(first)
        notifier.submit(second)
        cdrs = await take(client, "enigma:notifications:cdr", 2)
        c2ds = await take(client, "enigma:notifications:c2d", 2)
    finally:
        await notifier.stop()
    assert cdrs == [first.cdr_envelope(), second.cdr_envelope()]
    assert [d["payload"]["call_id"] for d in cdrs] == ["call-001", "call-002"]
    assert c2ds == [first.c2d_document(), second.c2d_document()]
    assert c2ds[1] == {
        "notifications": [
            {
                "extension": "1000",
                "disposition": "BUSY",
                "call_ref": "r2",
                "end_code": 17,
                "recording_url": None,
            }
        ]
    }
    for doc in cdrs:
        validate(doc, CDR_SCHEMA)
    for doc in c2ds:
        validate(doc, C2D_SCHEMA)
    status = notifier.status()
    assert status["redis_ok"] is True and status["outbox_depth"] == 0
    assert status["pushed_total"] == 4 and status["last_push_at"] is not None
    assert status["last_error"] is None and status["running"] is False
    assert not list((tmp_path / "outbox").glob("*.entry"))


async def test_legacy_off_and_key_prefix(
    redis_server: RedisServer, client: aioredis.Redis, tmp_path: Path
) -> None:
    notifier = notifier_for(redis_server, tmp_path / "outbox", prefix="acme.c2d", legacy=False)
    await notifier.start()
    try:
        notifier.submit(make_cdr(1))
        (doc,) = await take(client, "acme.c2d:notifications:cdr", 1)
    finally:
        await notifier.stop()
    assert doc["payload"]["call_ref"] == "r1"
    assert sorted(await client.keys("*")) == []
    assert notifier.status()["keys"] == ["acme.c2d:notifications:cdr"]


async def test_redis_down_then_restart_before_it_returns_loses_nothing(
    redis_server: RedisServer, client: aioredis.Redis, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    first = notifier_for(redis_server, outbox)
    await first.start()
    await eventually(lambda: first.status()["redis_ok"])
    redis_server.stop()
    cdr = make_cdr(7)
    first.submit(cdr)  # returns at once: a disk write, no network
    assert first.status()["outbox_depth"] == 2
    await eventually(lambda: first.status()["redis_ok"] is False)
    status = first.status()
    assert status["outbox_depth"] >= 1 and status["last_error"]
    assert status["down_since"] is not None and status["pushed_total"] == 0
    await first.stop(timeout=0.2)
    assert len(list(outbox.glob("*.entry"))) == 2

    # "the service restarted": a new Notifier on the same outbox, Redis still down
    second = notifier_for(redis_server, outbox)
    await second.start()
    try:
        assert second.status()["outbox_depth"] == 2
        await eventually(lambda: second.status()["last_error"] is not None)
        assert second.status()["redis_ok"] is False
        await asyncio.to_thread(redis_server.start)
        cdrs = await take(client, "enigma:notifications:cdr", 1)
        c2ds = await take(client, "enigma:notifications:c2d", 1)
        await eventually(lambda: second.status()["outbox_depth"] == 0)
        await asyncio.sleep(0.2)  # nothing more comes
        assert await client.llen("enigma:notifications:cdr") == 0
        assert await client.llen("enigma:notifications:c2d") == 0
    finally:
        await second.stop()
    assert cdrs == [cdr.cdr_envelope()] and c2ds == [cdr.c2d_document()]
    status = second.status()
    assert status["redis_ok"] is True and status["pushed_total"] == 2
    assert status["down_since"] is None and status["consecutive_failures"] == 0
    assert not list(outbox.glob("*.entry"))


async def test_backlog_order_survives_outage_and_restart(
    redis_server: RedisServer, client: aioredis.Redis, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    redis_server.stop()
    first = notifier_for(redis_server, outbox)
    await first.start()
    cdrs = [make_cdr(n, bridged=n % 3 != 0) for n in range(20)]
    for cdr in cdrs[:10]:
        first.submit(cdr)
    await first.stop(timeout=0.1)
    second = notifier_for(redis_server, outbox)
    for cdr in cdrs[10:]:
        second.submit(cdr)  # before start: straight to disk, replayed by start()
    await second.start()
    try:
        assert second.status()["outbox_depth"] == 40
        await asyncio.to_thread(redis_server.start)
        got_cdr = await take(client, "enigma:notifications:cdr", 20)
        got_c2d = await take(client, "enigma:notifications:c2d", 20)
    finally:
        await second.stop()
    assert [d["payload"]["call_id"] for d in got_cdr] == [c.call_id for c in cdrs]
    assert [d["notifications"][0]["call_ref"] for d in got_c2d] == [f"r{n}" for n in range(20)]
    assert second.status()["pushed_total"] == 40


async def test_corrupt_outbox_file_is_set_aside_and_the_rest_delivered(
    redis_server: RedisServer, client: aioredis.Redis, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    redis_server.stop()
    first = notifier_for(redis_server, outbox, legacy=False)
    for n in (1, 2, 3):
        first.submit(make_cdr(n))
    files = sorted(outbox.glob("*.entry"))
    files[1].write_bytes(files[1].read_bytes()[:-20])  # torn
    second = notifier_for(redis_server, outbox, legacy=False)
    await second.start()
    try:
        await asyncio.to_thread(redis_server.start)
        docs = await take(client, "enigma:notifications:cdr", 2)
    finally:
        await second.stop()
    assert [d["payload"]["call_ref"] for d in docs] == ["r1", "r3"]
    assert (outbox / "corrupt" / files[1].name).exists()
    assert second.status()["corrupt_total"] == 1


async def test_a_refusing_key_does_not_hold_back_the_other(
    redis_server: RedisServer, client: aioredis.Redis, tmp_path: Path
) -> None:
    await client.set("enigma:notifications:c2d", "not a list")  # LPUSH → WRONGTYPE
    notifier = notifier_for(redis_server, tmp_path / "outbox")
    await notifier.start()
    try:
        notifier.submit(make_cdr(1))
        notifier.submit(make_cdr(2))
        cdrs = await take(client, "enigma:notifications:cdr", 2)
        await eventually(lambda: "WRONGTYPE" in (notifier.status()["last_error"] or ""))
        assert notifier.status()["redis_ok"] is False
        assert notifier.status()["outbox_depth"] == 2
        await client.delete("enigma:notifications:c2d")  # the operator fixes it
        c2ds = await take(client, "enigma:notifications:c2d", 2)
    finally:
        await notifier.stop()
    assert [d["payload"]["call_ref"] for d in cdrs] == ["r1", "r2"]
    assert [d["notifications"][0]["call_ref"] for d in c2ds] == ["r1", "r2"]
    assert notifier.status()["pushed_total"] == 4


async def test_submit_never_raises_and_a_dead_disk_still_delivers(
    redis_server: RedisServer, client: aioredis.Redis, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    notifier = notifier_for(redis_server, outbox, legacy=False)
    await notifier.start()
    try:
        shutil.rmtree(outbox)  # every write to the outbox now fails
        notifier.submit(make_cdr(1))
        notifier.submit(None)  # type: ignore[arg-type]  # garbage in: logged, not raised
        (doc,) = await take(client, "enigma:notifications:cdr", 1)
    finally:
        await notifier.stop()
    assert doc["payload"]["call_ref"] == "r1"
    assert notifier.status()["disk_errors_total"] == 1
    assert "outbox write failed" in notifier.status()["last_error"]
