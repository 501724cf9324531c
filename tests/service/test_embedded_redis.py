"""The demo's embedded Redis (``sipdialer.demo.embedded_redis``) as real clients see it:
redis-py asyncio in RESP2 and RESP3 (and under uvloop), BRPOP taking the oldest element
first and blocking until another connection pushes, the notifier's MULTI/EXEC batches,
``redis-cli``, and a stop that closes the port even with a client parked in ``BRPOP 0``."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError

from sipdialer.config import RedisConfig
from sipdialer.demo.embedded_redis import EmbeddedRedis
from sipdialer.engine.causes import Ending, classify
from sipdialer.engine.cdr import CallRecord, build_cdr
from sipdialer.notify.notifier import Notifier
from tests.fixtures.require import require_binary


@pytest.fixture
async def embedded() -> AsyncIterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    await server.start()
    yield server
    await server.stop()


async def take(client: aioredis.Redis, *keys: str, timeout: float) -> tuple[bytes, bytes] | None:
    """BRPOP as (key, element), or None on timeout (redis-py types the reply loosely)."""
    reply = await client.brpop(list(keys), timeout=timeout)
    if reply is None:
        return None
    key, element = reply
    assert isinstance(key, bytes) and isinstance(element, bytes)
    return key, element


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_it_listens_on_a_free_loopback_port_until_stopped() -> None:
    first, second = EmbeddedRedis(), EmbeddedRedis()
    await first.start()
    await second.start()
    try:
        assert first.port > 0 and second.port > 0 and first.port != second.port
        assert first.url == f"redis://127.0.0.1:{first.port}/0"
        assert first.version.split(".")[0].isdigit()
    finally:
        await first.stop()
        await second.stop()
    assert refused(first.port) and refused(second.port)
    await first.stop()  # twice is harmless


@pytest.mark.parametrize("protocol", [2, 3])
async def test_asyncio_client_lists_in_both_protocols(
    embedded: EmbeddedRedis, protocol: int
) -> None:
    r = aioredis.from_url(embedded.url, protocol=protocol)
    try:
        assert await r.ping() is True
        assert await r.lpush("k", "a", "b") == 2
        assert await r.rpush("k", "z") == 3
        assert await r.lrange("k", 0, -1) == [b"b", b"a", b"z"]
        assert await r.lrange("k", -2, 99) == [b"a", b"z"]
        assert await r.llen("k") == 3
        assert await r.rpop("k") == b"z"
        assert await r.lpop("k") == b"b"
        assert await r.rpop("k") == b"a"
        assert await r.rpop("k") is None  # the nil reply of each protocol
        assert await r.exists("k") == 0  # an emptied list is gone
        started = time.monotonic()
        assert await take(r, "k", timeout=0.2) is None
        assert 0.15 <= time.monotonic() - started < 2
    finally:
        await r.aclose()


async def test_brpop_takes_the_oldest_first_and_blocks_until_a_push(
    embedded: EmbeddedRedis,
) -> None:
    reader, pusher = aioredis.from_url(embedded.url), aioredis.from_url(embedded.url)
    try:
        # producers LPUSH, so BRPOP hands the elements out in the order they were pushed
        for n in range(5):
            await pusher.lpush("q", f"n{n}")
        taken = [await take(reader, "q", timeout=1) for _ in range(5)]
        assert taken == [(b"q", f"n{n}".encode()) for n in range(5)]
        # several keys: the first non-empty one in the order given
        await pusher.lpush("q2", "second")
        await pusher.lpush("q3", "third")
        assert await take(reader, "q1", "q3", "q2", timeout=1) == (b"q3", b"third")
        # blocking (timeout 0 = for ever) until another connection pushes
        waiting = asyncio.create_task(take(reader, "later", timeout=0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await pusher.lpush("later", "x")
        assert await asyncio.wait_for(waiting, 2) == (b"later", b"x")
        assert await pusher.llen("later") == 0
    finally:
        await reader.aclose()
        await pusher.aclose()


async def test_multi_exec_as_the_notifier_sends_it(embedded: EmbeddedRedis) -> None:
    r = aioredis.from_url(embedded.url)
    try:
        async with r.pipeline(transaction=True) as pipe:
            pipe.lpush("a", "1")
            pipe.lpush("b", "2")
            pipe.llen("a")
            pipe.brpop(["empty"], timeout=5)
            started = time.monotonic()
            assert await pipe.execute(raise_on_error=False) == [1, 1, 1, None]
            assert time.monotonic() - started < 2  # no blocking inside MULTI
    finally:
        await r.aclose()


async def test_the_notifier_pushes_to_it_and_a_client_takes_both_documents(
    embedded: EmbeddedRedis, tmp_path: Path
) -> None:
    notifier = Notifier(RedisConfig(url=embedded.url), tmp_path / "outbox")
    await notifier.start()
    try:
        record = CallRecord(
            id="c" * 32,
            call_ref="ref-1",
            agent="1000",
            callee="0820001234",
            outbound_id="0123456789",
            created_at=1.8e9,
        )
        outcome = classify(Ending("rejected", "callee", status=486))
        notifier.submit(build_cdr(record, outcome, public_url="http://x"))
        r = aioredis.from_url(embedded.url)
        try:
            cdr = await take(r, "enigma:notifications:cdr", timeout=5)
            c2d = await take(r, "enigma:notifications:c2d", timeout=5)
        finally:
            await r.aclose()
        assert cdr is not None and c2d is not None
        assert json.loads(cdr[1])["payload"]["end_code"] == 17
        assert json.loads(c2d[1])["notifications"][0]["disposition"] == "BUSY"
        # the reader may be woken before the notifier has read its EXEC reply (each
        # connection is served by its own thread): give the notifier a moment
        deadline = time.monotonic() + 2
        while not notifier.status()["redis_ok"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert notifier.status()["redis_ok"] is True
        assert notifier.status()["pushed_total"] == 2
    finally:
        await notifier.stop()


async def test_redis_cli_pushes_reads_and_pops(embedded: EmbeddedRedis) -> None:
    cli = require_binary("redis-cli")

    def run(*args: str) -> list[str]:
        done = subprocess.run(
            [cli, "-p", str(embedded.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return done.stdout.split()

    assert await asyncio.to_thread(run, "LPUSH", "k", "v1", "v2") == ["2"]
    assert await asyncio.to_thread(run, "LRANGE", "k", "0", "-1") == ["v2", "v1"]
    assert await asyncio.to_thread(run, "BRPOP", "k", "1") == ["k", "v1"]
    # redis-cli waiting in BRPOP is released by a push from redis-py
    waiting = asyncio.create_task(asyncio.to_thread(run, "BRPOP", "empty", "5"))
    await asyncio.sleep(0.3)
    r = aioredis.from_url(embedded.url)
    try:
        await r.lpush("empty", "from-redis-py")
    finally:
        await r.aclose()
    assert await asyncio.wait_for(waiting, 5) == ["empty", "from-redis-py"]


async def test_stop_closes_the_port_even_with_a_client_blocked_for_ever() -> None:
    server = EmbeddedRedis()
    await server.start()
    r = aioredis.from_url(server.url)
    waiting = asyncio.create_task(take(r, "never", timeout=0))
    try:
        await asyncio.sleep(0.2)
        assert not waiting.done()
        started = time.monotonic()
        await asyncio.wait_for(server.stop(), 5)
        assert time.monotonic() - started < 2
        assert refused(server.port)
        with pytest.raises(RedisConnectionError):  # the server went away under it
            await asyncio.wait_for(waiting, 2)
    finally:
        waiting.cancel()
        await r.aclose()


def test_it_serves_an_asyncio_client_on_uvloop() -> None:
    """The demo runs on uvloop (``sipdialer.cli``); the server's threads do not mind."""

    async def round_trip() -> tuple[object, ...]:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        server = EmbeddedRedis()
        await server.start()
        reader, pusher = aioredis.from_url(server.url), aioredis.from_url(server.url)
        try:
            waiting = asyncio.create_task(take(reader, "k", timeout=5))
            await asyncio.sleep(0.1)
            await pusher.lpush("k", "first", "second")
            return (await asyncio.wait_for(waiting, 2), await pusher.lrange("k", 0, -1))
        finally:
            await reader.aclose()
            await pusher.aclose()
            await server.stop()

    assert uvloop.run(round_trip()) == ((b"k", b"first"), [b"second"])
