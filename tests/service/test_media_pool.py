"""The media worker pool (sipdialer.rtp.pool) with real worker processes and real UDP
sockets on loopback, on uvloop. No SIP: each test plays both phones itself.

Covers: workers start and take bridges least-loaded first; two bridges on different
workers relay RTP both ways; ringback defined once per worker and played; recording
writes a WAV in the worker; ``kill -9`` of one worker reports only its bridges lost,
the other worker's call keeps relaying, the worker comes back and takes new bridges;
invalid control messages are answered with an error naming the field; refused requests
raise typed errors; shutdown leaves no child process. Not timed: every wait is bounded
only so a broken build fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from sipdialer.rtp import control as c
from sipdialer.rtp.pool import (
    MediaPool,
    MediaRequestFailed,
    RecordingUnavailable,
    RemoteBridge,
    WorkerLost,
    media_address,
)
from sipdialer.rtp.ports import PortAllocator, PortsExhausted
from sipdialer.rtp.recorder import recordings_disk
from sipdialer.rtp.relay import Codec, MediaAddressError, MediaLeg
from tests.fixtures.rtp_phones import HOST, PCMA, PCMU, Phone, phone, port_range

WAIT = 5.0  # seconds a phone waits for a packet: the relay is another process here


def pool_ports(n: int = 200) -> tuple[int, int]:
    """A random range of ``n`` ports for a pool, from 12000-19000 (below the range of
    the in-process relay tests)."""
    return port_range(n, low=12000, high=19000)


@pytest.fixture
async def pool() -> AsyncIterator[MediaPool]:
    p = MediaPool(2, HOST, pool_ports(), stats_interval=0.2, restart_delay=0.05)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


class Call:
    """A bridge with a phone on each leg, pointed at each other and connected."""

    def __init__(self, bridge: RemoteBridge, a: Phone, b: Phone) -> None:
        self.bridge = bridge
        self.a = a
        self.b = b

    async def relays(self, n: int = 3) -> None:
        """``n`` packets each way arrive (payload intact unless transcoded)."""
        same = self.bridge.a.codec == self.bridge.b.codec
        for i in range(n):
            payload = bytes([i]) * 160
            self.a.send(self.bridge.a.local_port, payload)
            _, got = await self.b.recv()
            assert got == payload or (not same and len(got) == 160)
            self.b.send(self.bridge.b.local_port, payload[::-1])
            _, back = await self.a.recv()
            assert back == payload[::-1] or (not same and len(back) == 160)

    def close(self) -> None:
        self.a.close()
        self.b.close()


async def call(pool: MediaPool, codec_b: Codec = PCMU) -> Call:
    bridge = await pool.open()
    a, b = await phone(timeout=WAIT), await phone(timeout=WAIT)
    bridge.a.set_remote(a.addr, PCMU)
    bridge.b.set_remote(b.addr, codec_b)
    bridge.connect()
    # fire-and-forget requests and RTP reach the worker by different sockets: a round
    # trip makes sure it has applied them before the phones talk (in a call, SDP's
    # round trip through SIP does the same)
    await bridge.refresh()
    return Call(bridge, a, b)


async def until(cond: Any, timeout: float = 10.0) -> None:
    """Wait (bounded) until ``cond()`` is true."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- relaying -----------------------------------------------------------------------------


async def test_two_bridges_on_two_workers_relay_both_ways(pool: MediaPool) -> None:
    pids = [w["pid"] for w in pool.info()]
    assert all(isinstance(p, int) and alive(p) for p in pids) and pids[0] != pids[1]
    one, two = await call(pool), await call(pool, codec_b=PCMA)
    assert {one.bridge.worker_index, two.bridge.worker_index} == {0, 1}
    ports = {one.bridge.a.local_port, one.bridge.b.local_port}
    ports |= {two.bridge.a.local_port, two.bridge.b.local_port}
    assert len(ports) == 4
    for lo_hi, b in ((pool.slices[x.bridge.worker_index], x.bridge) for x in (one, two)):
        assert lo_hi[0] <= b.a.local_port <= lo_hi[1] and lo_hi[0] <= b.b.local_port <= lo_hi[1]
    await one.relays()
    await two.relays()
    # transcoded on the second: PCMU from A goes out as PCMA (PT 8) to B
    two.a.send(two.bridge.a.local_port, b"\xff" * 160)
    hdr, payload = await two.b.recv()
    assert hdr.payload_type == 8 and payload == b"\xd5" * 160
    # the stats come back: counters and activity, in the engine's loop time
    await one.bridge.refresh()
    assert one.bridge.a.packets_in == 3 and one.bridge.b.packets_out == 3
    assert one.bridge.b.packets_in == 3 and one.bridge.a.packets_out == 3
    loop = asyncio.get_running_loop()
    assert loop.time() - 5 < one.bridge.last_activity() <= loop.time() + 0.01
    await until(lambda: two.bridge.a.packets_in == 4)  # the periodic stats
    assert one.bridge.a.remote == (HOST, one.a.addr[1])
    await one.bridge.close()
    await two.bridge.close()
    assert one.bridge.is_closed and pool.bridges == []
    one.close()
    two.close()


async def test_least_loaded_worker_takes_the_next_bridge(pool: MediaPool) -> None:
    bridges = [await pool.open() for _ in range(4)]
    assert sorted(b.worker_index for b in bridges) == [0, 0, 1, 1]
    await bridges[0].close()
    await bridges[2].close()
    gone = {bridges[0].worker_index, bridges[2].worker_index}
    nxt = await pool.open()
    if len(gone) == 1:  # both closed on one worker: it is the least loaded now
        assert nxt.worker_index in gone
    for b in (*bridges, nxt):
        await b.close()


async def test_ringback_is_defined_once_and_played(pool: MediaPool) -> None:
    x = await call(pool)
    ring = (np.sin(np.arange(800) / 8000 * 2 * np.pi * 425) * 8000).astype(np.int16)
    x.bridge.play_to_a(ring)
    hdr, payload = await x.a.recv()
    assert hdr.payload_type == 0 and len(payload) == 160
    assert x.bridge.playing
    y = await call(pool)
    y.bridge.play_to_a(ring)  # the same array: the same tone name, not sent again
    await y.a.recv()
    assert len(pool._tone_bytes) == 1
    x.bridge.play_to_a(None)
    await until(lambda: not x.bridge.playing)
    for z in (x, y):
        await z.bridge.close()
        z.close()


async def test_recording_is_written_by_the_worker(pool: MediaPool, tmp_path: Path) -> None:
    x = await call(pool)
    path = tmp_path / "rec" / "call.wav"
    await x.bridge.start_recording(path)
    for _ in range(25):
        x.a.send(x.bridge.a.local_port, b"\x00" * 160)  # loud PCMU on the left
        await x.b.recv()
        x.b.send(x.bridge.b.local_port, b"\xff" * 160)  # silence on the right
        await x.a.recv()
    await x.bridge.close()
    rec = x.bridge.recording
    assert rec is not None and rec.path == str(path)
    assert rec.frames > 0 and not rec.partial and not rec.removed and rec.error is None
    audio, rate = soundfile.read(path, dtype="int16")
    assert rate == 8000 and audio.shape[1] == 2 and len(audio) == rec.frames
    assert np.abs(audio[:, 0]).max() > 20000 and np.abs(audio[:, 1]).max() < 100
    # the engine's health view of the directory heard of it
    disk = recordings_disk(path.parent)
    assert disk.last_write_at is not None and not disk.failing
    x.close()


async def test_recording_that_cannot_be_created(pool: MediaPool) -> None:
    x = await call(pool)
    with pytest.raises(RecordingUnavailable) as e:
        await x.bridge.start_recording("/proc/no/such/dir/call.wav")
    assert isinstance(e.value, OSError) and e.value.kind == "recording"
    assert "/proc" not in str(e.value)  # no path (it holds the recording's reference)
    disk = recordings_disk("/proc/no/such/dir")
    assert disk.failing and disk.partial_recordings == 1 and disk.last_error
    assert disk.last_error.startswith("E")  # an errno name, e.g. ENOENT
    await x.relays(1)  # the call goes on
    await x.bridge.close()
    assert x.bridge.recording is None
    x.close()


# ---- a worker dies ------------------------------------------------------------------------


async def test_kill_9_ends_only_that_workers_bridges(tmp_path: Path) -> None:
    lost: list[tuple[int, str]] = []
    pool = MediaPool(
        2,
        HOST,
        pool_ports(),
        stats_interval=0.2,
        restart_delay=0.05,
        on_lost=lambda b, why: lost.append((b.id, why)),
    )
    await pool.start()
    try:
        victim, survivor = await call(pool), await call(pool)
        assert victim.bridge.worker_index != survivor.bridge.worker_index
        await victim.bridge.start_recording(tmp_path / "victim.wav")
        await victim.relays()
        await survivor.relays()
        old_pid = victim.bridge.worker_pid
        assert old_pid is not None
        index = victim.bridge.worker_index
        await asyncio.sleep(1.2)  # one recorder flush in the worker (FLUSH_INTERVAL ~1 s)
        os.kill(old_pid, signal.SIGKILL)

        reason = await asyncio.wait_for(victim.bridge.lost, 10)
        assert f"pid {old_pid}" in reason
        assert lost == [(victim.bridge.id, reason)]
        assert not survivor.bridge.lost.done()
        await survivor.relays()  # the other worker's call never noticed
        rec = victim.bridge.recording
        assert rec is not None and rec.partial and rec.error == reason
        assert (tmp_path / "victim.wav").exists()
        await victim.bridge.close()  # a no-op on a lost bridge, no error
        with pytest.raises(WorkerLost):
            await victim.bridge.refresh()

        # the worker comes back with a new pid and the least load: it takes the next call
        def back() -> bool:
            w = pool.info()[index]
            return bool(w["alive"]) and w["pid"] != old_pid

        await until(back)
        assert pool.restarts == 1 and not alive(old_pid)
        fresh = await call(pool)
        assert fresh.bridge.worker_index == index
        await fresh.relays()
        await survivor.relays()
        assert len(lost) == 1
        for x in (victim, survivor, fresh):
            await x.bridge.close()
            x.close()
    finally:
        await pool.close()


async def test_a_worker_that_stops_reading_is_replaced() -> None:
    """SIGSTOP: alive, not reading. Once its unread requests pass the backlog limit its
    bridges are lost and it is killed and replaced."""
    pool = MediaPool(2, HOST, pool_ports(), restart_delay=0.05, max_backlog=64 * 1024)
    await pool.start()
    try:
        x = await call(pool)
        pid = x.bridge.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        for i in range(200_000):  # bounded: well past any socket buffer
            if x.bridge.lost.done():
                break
            x.bridge.a.hold(i % 2 == 0)
        reason = await asyncio.wait_for(x.bridge.lost, 10)
        assert "stopped reading" in reason
        await until(lambda: not alive(pid))  # killed (a stopped process still dies of -9)
        await until(lambda: pool.info()[x.bridge.worker_index]["alive"])
        y = await call(pool)
        await y.relays(1)
        await y.bridge.close()
        x.close()
        y.close()
    finally:
        await pool.close()


async def test_sigterm_and_sigint_leave_calls_to_the_engine(pool: MediaPool) -> None:
    """A service manager's stop reaches every process at once: the workers keep relaying
    until the engine closes them."""
    x = await call(pool)
    pid = x.bridge.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    await x.relays(2)
    await x.bridge.refresh()
    assert alive(pid) and not x.bridge.lost.done()
    await x.bridge.close()
    x.close()


async def test_open_waits_for_no_dead_worker(pool: MediaPool) -> None:
    """With one worker killed, new bridges go to the live one at once."""
    pid = pool.info()[0]["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    await until(lambda: not pool.info()[0]["alive"] or pool.info()[0]["pid"] != pid)
    b = await pool.open()
    assert b.worker_pid != pid
    await b.close()


async def test_pinned_workers_run_one_per_cpu() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    pool = MediaPool(2, HOST, pool_ports(), pin_cpus=True)
    await pool.start()
    try:
        for i, w in enumerate(pool.info()):
            pid = w["pid"]
            assert isinstance(pid, int)
            assert os.sched_getaffinity(pid) == {cpus[i % len(cpus)]}
        x = await call(pool)
        await x.relays(1)
        await x.bridge.close()
        x.close()
    finally:
        await pool.close()


# ---- ports and stale stats ----------------------------------------------------------------


async def test_a_full_slice_sends_the_bridge_to_another_worker() -> None:
    pool = MediaPool(2, HOST, pool_ports(16))  # 8 even ports: 4 per worker, 2 bridges
    busy: list[socket.socket] = []
    try:
        lo1, hi1 = pool.slices[1]
        for port in range(lo1, hi1 + 1, 2):  # someone else holds worker 1's ports
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, port))
            busy.append(s)
        await pool.start()
        first = await pool.open()
        second = await pool.open()  # worker 1 is the least loaded, but has no port
        assert first.worker_index == second.worker_index == 0
        with pytest.raises(PortsExhausted):
            await pool.open()
        await first.close()
        third = await pool.open()  # a port back in worker 0
        assert third.worker_index == 0
    finally:
        await pool.close()
        for s in busy:
            s.close()


async def test_stale_stats_do_not_undo_a_newer_request(pool: MediaPool) -> None:
    x = await call(pool)
    before = x.bridge.a.remote
    other = await phone()
    x.bridge.a.set_remote(other.addr, PCMU)  # sent; the worker may not have it yet
    moved = x.bridge.a.remote
    assert moved == other.addr and moved != before
    # a stats frame the worker wrote before that request (one request fewer applied)
    stale = c.BridgeStats(
        x.bridge.id,
        x.bridge._sent - 1,
        c.LegStats(packets_in=9, remote=before),
        c.LegStats(),
    )
    x.bridge._apply(stale)
    assert x.bridge.a.remote == moved and x.bridge.a.packets_in == 9  # counters still taken
    await x.bridge.refresh()  # a current one: the worker's view wins
    assert x.bridge.a.remote == other.addr
    other.close()
    await x.bridge.close()
    x.close()


# ---- refused and invalid requests ---------------------------------------------------------


async def test_refused_requests_raise_typed_errors(pool: MediaPool) -> None:
    x = await call(pool)
    with pytest.raises(MediaAddressError):  # checked in the engine's process, nothing sent
        x.bridge.a.set_remote(("phone.example", 4000), PCMU)
    await x.relays(1)  # nothing changed
    await x.bridge.close()
    x.close()


class Key:
    """What ``RemoteLeg.set_srtp`` reads of ``sipdialer.rtp.srtp.SrtpKey``."""

    def __init__(self, suite: str, key_salt: bytes) -> None:
        self.suite = suite
        self.key_salt = key_salt


async def test_srtp_keys_reach_the_worker(pool: MediaPool) -> None:
    """With the relay's SRTP (MediaLeg.set_srtp) the worker encrypts what A receives and
    counts what fails authentication on B; a relay without it answers kind "srtp".
    Either way the key is checked before anything is sent."""
    x = await call(pool)
    with pytest.raises(c.ControlError):  # a wrong length never leaves the engine
        x.bridge.a.set_srtp(None, Key("AES_CM_128_HMAC_SHA1_80", bytes(29)))
    key = Key("AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    if not hasattr(MediaLeg, "set_srtp"):
        with pytest.raises(MediaRequestFailed) as e:
            await x.bridge.a.set_srtp_checked(None, key)
        assert e.value.kind == "srtp"
    else:
        x.bridge.a.set_srtp(None, key)  # outbound only: A receives SRTP
        await x.bridge.refresh()  # applied
        x.b.send(x.bridge.b.local_port, b"\x01" * 160)
        data = await x.a.datagram()
        assert len(data) == 172 + 10  # the 80-bit authentication tag
        await x.bridge.b.set_srtp_checked(Key("AEAD_AES_128_GCM", bytes(28)), None)
        x.b.send(x.bridge.b.local_port, b"\x02" * 160)  # plain RTP: fails authentication
        await until(lambda: x.bridge.b.srtp_forged == 1)
    await x.bridge.close()
    x.close()


async def _raw_worker(low: int, high: int) -> tuple[asyncio.subprocess.Process, Any, Any]:
    parent, child = socket.socketpair()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sipdialer.rtp.worker",
        "--fd",
        str(child.fileno()),
        "--ports",
        f"{low}-{high}",
        pass_fds=(child.fileno(),),
    )
    child.close()
    reader, writer = await asyncio.open_connection(sock=parent)
    return proc, reader, writer


async def _events(reader: asyncio.StreamReader, frames: c.FrameReader, n: int) -> list[c.Event]:
    """The next ``n`` events, leaving out the periodic stats."""
    out: list[c.Event] = []
    while len(out) < n:
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, "the worker closed its channel"
        events = [c.parse_event(b) for b in frames.feed(data)]
        out += [e for e in events if not (isinstance(e, c.Stats) and e.req is None)]
    return out


async def test_worker_answers_invalid_messages_naming_the_field() -> None:
    low, high = pool_ports()
    proc, reader, writer = await _raw_worker(low, high)
    frames = c.FrameReader()
    try:
        (hello,) = await _events(reader, frames, 1)
        assert isinstance(hello, c.Hello) and hello.pid == proc.pid
        assert (hello.low, hello.high) == (low, high)

        def raw(text: bytes) -> bytes:
            return struct.pack(">I", len(text)) + text

        bad = [
            (b'{"op":"open","req":1,"bridge":7,"host":5}', "host", 1),
            (
                b'{"op":"set_remote","bridge":7,"leg":"A","host":"127.0.0.1","port":4000,'
                b'"codec":{"name":"PCMU","pt":300,"dtmf_pt":null}}',
                "codec.pt",
                None,
            ),
            (b'{"op":"hold","bridge":7,"leg":"A","on":1}', "on", None),
            (b'{"op":"teleport","bridge":7}', "op", None),
            (b"\xff\x00 not json", "frame", None),
            (b'{"op":"close","req":2,"bridge":true}', "bridge", 2),
        ]
        for text, _, _ in bad:
            writer.write(raw(text))
        got = await _events(reader, frames, len(bad))
        for ev, (_, field, req) in zip(got, bad, strict=True):
            assert isinstance(ev, c.Failed), ev
            assert ev.kind == "invalid" and ev.field == field and ev.req == req
            assert ev.error.startswith(f"{field}: ")
        # still serving: a valid request after the garbage works
        writer.write(c.encode(c.OpenBridge(3, 8, HOST)))
        writer.write(c.encode(c.PlayToA(8, "nosuchtone")))
        writer.write(c.encode(c.Connect(99)))
        opened, no_tone, unknown = await _events(reader, frames, 3)
        assert isinstance(opened, c.Opened) and opened.req == 3
        assert isinstance(no_tone, c.Failed) and no_tone.kind == "unknown_tone"
        assert no_tone.field == "tone"
        assert isinstance(unknown, c.Failed) and unknown.kind == "unknown_bridge"
        # a frame length over the limit ends the channel, and the worker exits
        writer.write(struct.pack(">I", c.MAX_FRAME + 1))
        broken = (await _events(reader, frames, 1))[0]  # (then the bridge's Closed)
        assert isinstance(broken, c.Failed) and broken.field == "frame"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        writer.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_worker_exits_when_its_channel_closes(tmp_path: Path) -> None:
    """EOF: the worker closes its bridges (the recording is finished) and exits."""
    low, high = pool_ports()
    proc, reader, writer = await _raw_worker(low, high)
    frames = c.FrameReader()
    await _events(reader, frames, 1)
    writer.write(c.encode(c.OpenBridge(1, 5, HOST)))
    writer.write(c.encode(c.StartRecording(2, 5, str(tmp_path / "r.wav"))))
    opened, done = await _events(reader, frames, 2)
    assert isinstance(opened, c.Opened) and isinstance(done, c.Done)
    writer.write_eof()
    (closed,) = await _events(reader, frames, 1)
    assert isinstance(closed, c.Closed) and closed.req is None and closed.stats.bridge == 5
    assert closed.recording is not None and closed.recording.path == str(tmp_path / "r.wav")
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    writer.close()


# ---- shutdown -----------------------------------------------------------------------------


async def test_shutdown_leaves_no_child_process(tmp_path: Path) -> None:
    pool = MediaPool(2, HOST, pool_ports(), stats_interval=0.2)
    await pool.start()
    pids = [w["pid"] for w in pool.info()]
    x = await call(pool)
    await x.bridge.start_recording(tmp_path / "open.wav")
    await x.relays()
    await pool.close()
    for pid in pids:
        assert isinstance(pid, int) and not alive(pid)
        with pytest.raises(ChildProcessError):  # reaped: no zombie left either
            os.waitpid(pid, os.WNOHANG)
    # the open call's recording was finished by its worker on the way out
    rec = x.bridge.recording
    assert rec is not None and rec.frames > 0 and not rec.partial
    with pytest.raises(WorkerLost):
        await pool.open()
    x.close()


# ---- the engine-side address check agrees with the relay's -------------------------------

ADDRESSES = [
    ("192.0.2.7", 4000),
    ("0.0.0.0", 4000),
    ("::", 4000),
    ("::1", 4000),
    ("::ffff:192.0.2.7", 4000),
    ("2001:db8::1", 5004),
    ("fe80::1%eth0", 4000),
    ("224.0.0.1", 4000),
    ("ff02::1", 4000),
    ("192.0.2.7", 0),
    ("192.0.2.7", 70000),
    ("phone.example", 4000),
    ("", 4000),
]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "::"])
async def test_media_address_matches_the_relay(host: str) -> None:
    allocator = PortAllocator(*pool_ports())
    try:
        sock = allocator.allocate(host)
    except OSError:
        pytest.skip(f"no {host} on this machine")
    leg = MediaLeg("A", sock, asyncio.get_running_loop())
    dual = host == "::" and sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    try:
        for addr in ADDRESSES:
            try:
                want: object = leg.media_address(addr)
            except MediaAddressError:
                want = MediaAddressError
            try:
                got: object = media_address(addr, sock.family, dual)
            except MediaAddressError:
                got = MediaAddressError
            assert got == want, addr
    finally:
        sock.close()
