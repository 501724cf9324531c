"""The in-process Redis stand-in (``sipdialer.demo.redis_standin``) as real clients see
it: redis-py asyncio and sync, RESP2 and RESP3, the notifier's MULTI/EXEC batches, BRPOP
blocking and timing out, errors where Redis gives them — and redis-cli when installed."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from sipdialer.config import RedisConfig
from sipdialer.demo.redis_standin import RedisStandIn
from sipdialer.engine.causes import Ending, classify
from sipdialer.engine.cdr import CallRecord, build_cdr
from sipdialer.notify.notifier import Notifier


@pytest.fixture
async def standin() -> AsyncIterator[RedisStandIn]:
    server = RedisStandIn()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_asyncio_client_lists_in_both_protocols(standin: RedisStandIn, protocol: int) -> None:
    r = aioredis.from_url(standin.url, protocol=protocol)
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
        assert await r.brpop(["k"], timeout=0.2) is None
        assert await r.echo("hi") == b"hi"
    finally:
        await r.aclose()


async def test_brpop_blocks_until_a_push_and_serves_the_longest_waiter_first(
    standin: RedisStandIn,
) -> None:
    first, second, pusher = (aioredis.from_url(standin.url) for _ in range(3))
    try:
        a = asyncio.create_task(first.brpop(["q1", "q2"], timeout=5))
        await asyncio.sleep(0.1)
        b = asyncio.create_task(second.brpop(["q2"], timeout=5))
        await asyncio.sleep(0.1)
        assert not a.done() and not b.done()
        await pusher.lpush("q2", "one")
        assert await asyncio.wait_for(a, 2) == (b"q2", b"one")
        assert not b.done()
        await pusher.lpush("q2", "two")
        assert await asyncio.wait_for(b, 2) == (b"q2", b"two")
        # timeout 0 blocks for ever; a push releases it
        c = asyncio.create_task(first.brpop(["q3"], timeout=0))
        await asyncio.sleep(0.2)
        assert not c.done()
        await pusher.rpush("q3", "x")
        assert await asyncio.wait_for(c, 2) == (b"q3", b"x")
    finally:
        for client in (first, second, pusher):
            await client.aclose()


async def test_a_client_gone_while_blocked_takes_nothing(standin: RedisStandIn) -> None:
    _, writer = await asyncio.open_connection(standin.host, standin.port)
    writer.write(b"*3\r\n$5\r\nBRPOP\r\n$1\r\nk\r\n$1\r\n0\r\n")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await asyncio.sleep(0.1)
    r = aioredis.from_url(standin.url)
    try:
        await r.lpush("k", "kept")
        await asyncio.sleep(0.1)
        assert await r.lrange("k", 0, -1) == [b"kept"]
    finally:
        await r.aclose()


async def test_multi_exec_pipelines_discard_and_execabort(standin: RedisStandIn) -> None:
    r = aioredis.from_url(standin.url)
    try:
        async with r.pipeline(transaction=True) as pipe:
            pipe.lpush("a", "1").lpush("b", "2").llen("a").brpop(["empty"], timeout=5)
            assert await pipe.execute() == [1, 1, 1, None]  # no blocking inside MULTI
        assert await r.execute_command("MULTI") in (b"OK", "OK", True)
        assert await r.execute_command("LPUSH", "a", "x") in (b"QUEUED", "QUEUED")
        assert await r.execute_command("DISCARD") in (b"OK", "OK", True)
        assert await r.llen("a") == 1
        await r.execute_command("MULTI")
        with pytest.raises(ResponseError, match="unknown command 'NOPE'"):
            await r.execute_command("NOPE", "x")
        with pytest.raises(ResponseError, match="Transaction discarded"):
            await r.execute_command("EXEC")
        with pytest.raises(ResponseError, match="EXEC without MULTI"):
            await r.execute_command("EXEC")
    finally:
        await r.aclose()


async def test_errors_select_client_info_keys(standin: RedisStandIn) -> None:
    r = aioredis.from_url(standin.url)
    other = aioredis.from_url(standin.url.replace("/0", "/5"))
    try:
        with pytest.raises(ResponseError, match="unknown command 'GETSET'"):
            await r.execute_command("GETSET", "k", "v")
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            await r.execute_command("LPUSH", "k")
        with pytest.raises(ResponseError):
            await r.execute_command("HELLO", "4")
        await other.lpush("only-in-5", "x")
        assert await r.exists("only-in-5") == 0
        assert await other.keys("only-*") == [b"only-in-5"]
        assert await other.type("only-in-5") in (b"list", "list")
        assert await other.delete("only-in-5", "never") == 1
        assert await r.client_setname("me") is True
        assert await r.client_getname() in (b"me", "me")
        info = await r.info()
        assert info["redis_mode"] == "standalone" and "redis_version" in info
    finally:
        await r.aclose()
        await other.aclose()


async def test_sync_client_in_a_thread(standin: RedisStandIn) -> None:
    def work() -> tuple[object, ...]:
        client = redis.Redis.from_url(standin.url)
        try:
            client.rpush("s", "1", "2", "3")
            return (client.ping(), client.lpop("s", 2), client.llen("s"), client.brpop("s", 1))
        finally:
            client.close()

    assert await asyncio.to_thread(work) == (True, [b"1", b"2"], 1, (b"s", b"3"))


async def test_the_notifier_pushes_to_it_and_a_client_takes_both_documents(
    standin: RedisStandIn, tmp_path: Path
) -> None:
    notifier = Notifier(RedisConfig(url=standin.url), tmp_path / "outbox")
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
        r = aioredis.from_url(standin.url)
        try:
            _, cdr = await r.brpop(["enigma:notifications:cdr"], timeout=5)
            _, c2d = await r.brpop(["enigma:notifications:c2d"], timeout=5)
        finally:
            await r.aclose()
        assert json.loads(cdr)["payload"]["end_code"] == 17
        assert json.loads(c2d)["notifications"][0]["disposition"] == "BUSY"
        assert notifier.status()["redis_ok"] is True
    finally:
        await notifier.stop()


async def test_inline_commands_and_redis_cli(standin: RedisStandIn) -> None:
    reader, writer = await asyncio.open_connection(standin.host, standin.port)
    writer.write(b"PING\r\nLPUSH k v\r\nQUIT\r\n")
    await writer.drain()
    assert await reader.read() == b"+PONG\r\n:1\r\n+OK\r\n"
    writer.close()
    cli = shutil.which("redis-cli")
    if cli is None:
        return
    out = await asyncio.to_thread(
        subprocess.run,
        [cli, "-p", str(standin.port), "BRPOP", "k", "1"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.stdout.split() == ["k", "v"]
