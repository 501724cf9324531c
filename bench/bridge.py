"""Media relay capacity: N recorded calls through the real Bridge + Recorder on one core.

    python bench/bridge.py --calls N --seconds S [--warmup W] [--no-record] [--keep]

The *service* is a child process pinned to one core: uvloop, N :class:`Bridge` objects
(two legs each, symmetric RTP), each connected and recording to a WAV in a temporary
directory (deleted afterwards unless ``--keep``). The *load generator* is this process,
pinned to the other core: it plays both phones of every call, each sending a 20 ms PCMU
packet (160-byte payload) every 20 ms to its leg and receiving what the relay forwards
from the other side. To fit 2N phones on one core it batches: phones are spread over 20
send slots 1 ms apart (so the load is smooth, as with unsynchronised real phones), each
slot's packets go out in one ``sendmmsg`` call and arrivals are drained with
``recvmmsg`` (both through ctypes), headers and timestamps are updated with numpy, and
latency is taken from the kernel's receive timestamps (so the generator's own scheduling
does not count). The
phones share 20 UDP sockets (the relay latches per leg, not per address, so this is
invisible to it). One generator process keeps up with 1000 calls (2000 phones, 100 k
packets/s each way); its worst lag behind schedule is printed.

Measured over the steady window (after ``--warmup``): ``pps`` packets/s sent by the
service, ``cpu_pct`` its CPU time / wall time ×100 (of one core, from /proc), ``p50_ms`` /
``p99_ms`` added latency (send time in the payload to the kernel's receive timestamp at
the other phone's socket, both CLOCK_REALTIME), ``loss_pct`` packets sent by all phones
vs received by all phones over the whole run (both directions, after a drain),
``rss_kb_per_call`` (service RSS with N calls − RSS idle) / N. The last line printed is
one JSON object with those keys.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import multiprocessing as mp
import os
import selectors
import shutil
import socket
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

HOST = "127.0.0.1"
SLOTS = 20  # send slots per 20 ms tick
PTIME_NS = 20_000_000
SLOT_NS = PTIME_NS // SLOTS
PAYLOAD = 160
PKT = 12 + PAYLOAD
VLEN = 512  # recvmmsg batch
PORT_BASE = 20000
SERVICE_CORE, GENERATOR_CORE = 0, 1

PACKET_DTYPE = np.dtype(
    [
        ("b0", "u1"),
        ("b1", "u1"),
        ("seq", ">u2"),
        ("ts", ">u4"),
        ("ssrc", ">u4"),
        ("sent", "<i8"),  # payload bytes 0..7: CLOCK_MONOTONIC send time, ns
        ("phone", "<u4"),  # payload bytes 8..11: phone index
        ("audio", "u1", PAYLOAD - 12),
    ]
)
assert PACKET_DTYPE.itemsize == PKT


# --------------------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime/stime are fields 14/15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_busy_seconds(core: int) -> float:
    """Busy time of one CPU (everything but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def pin(core: int) -> int:
    cores = sorted(os.sched_getaffinity(0))
    chosen = cores[core % len(cores)]
    os.sched_setaffinity(0, {chosen})
    return chosen


# --------------------------------------------------------------------------------------
# The service (child process)
# --------------------------------------------------------------------------------------


def service_main(conn: Connection, record_dir: str | None) -> None:
    pin(SERVICE_CORE)
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(_service(conn, record_dir))


async def _service(conn: Connection, record_dir: str | None) -> None:
    from sipdialer.rtp.ports import PortAllocator
    from sipdialer.rtp.recorder import Recorder
    from sipdialer.rtp.relay import Bridge, Codec

    loop = asyncio.get_running_loop()
    bridges: list[Bridge] = []
    done = loop.create_future()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    conn.send(("ready", os.getpid()))

    def totals() -> dict[str, int]:
        t = {"packets_in": 0, "packets_out": 0, "dropped": 0}
        for b in bridges:
            for leg in (b.a, b.b):
                t["packets_in"] += leg.packets_in
                t["packets_out"] += leg.packets_out
                t["dropped"] += leg.packets_dropped
        return t

    while not done.done():
        cmd, *args = await inbox.get()
        if cmd == "open":
            (addrs,) = args
            n = len(addrs)
            alloc = PortAllocator(PORT_BASE, PORT_BASE + 4 * n + 400)
            codec = Codec("PCMU", 0, 101)
            ports = []
            for i, (addr_a, addr_b) in enumerate(addrs):
                b = await Bridge.open(HOST, alloc)
                b.a.set_remote(addr_a, codec)
                b.b.set_remote(addr_b, codec)
                b.connect()
                if record_dir is not None:
                    b.start_recording(Recorder(Path(record_dir) / f"{i}.wav", now=loop.time()))
                bridges.append(b)
                ports.append((b.a.local_port, b.b.local_port))
            conn.send(("opened", ports))
        elif cmd == "stats":
            conn.send(("stats", totals()))
        elif cmd == "close":
            t = totals()
            await asyncio.gather(*(b.close() for b in bridges))
            errors = sum(1 for b in bridges if b.recording_error is not None)
            conn.send(("closed", {**t, "recording_errors": errors}))
        elif cmd == "exit":
            done.set_result(None)
    loop.remove_reader(conn.fileno())


# --------------------------------------------------------------------------------------
# sendmmsg / recvmmsg through ctypes
# --------------------------------------------------------------------------------------


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_uint,
    ctypes.c_int,
    ctypes.c_void_p,
]
MSG_DONTWAIT = 0x40
MMSG_SIZE = ctypes.sizeof(MMsgHdr)


def sockaddr_in(host: str, port: int) -> bytes:
    return (
        socket.AF_INET.to_bytes(2, sys.byteorder)
        + port.to_bytes(2, "big")
        + socket.inet_aton(host)
        + bytes(8)
    )


class SendBatch:
    """One slot's packets (a structured numpy array) and the mmsghdr vector sending them."""

    def __init__(self, fd: int, phones: np.ndarray, dests: list[tuple[str, int]]) -> None:
        m = len(phones)
        self.fd = fd
        self.m = m
        self.pkts = np.zeros(m, dtype=PACKET_DTYPE)
        rng = np.random.default_rng(int(phones[0]) if m else 0)
        self.pkts["b0"] = 0x80
        self.pkts["b1"] = 0
        self.pkts["seq"] = rng.integers(0, 65536, m)
        self.pkts["ts"] = rng.integers(0, 2**32, m, dtype=np.uint64)
        self.pkts["ssrc"] = rng.integers(0, 2**32, m, dtype=np.uint64)
        self.pkts["phone"] = phones
        self.pkts["audio"] = 0xFF  # µ-law silence
        self.names = np.frombuffer(b"".join(sockaddr_in(*d) for d in dests), dtype=np.uint8)
        self.iov = (IoVec * m)()
        self.msgs = (MMsgHdr * m)()
        base = self.pkts.ctypes.data
        nbase = self.names.ctypes.data
        for i in range(m):
            self.iov[i].iov_base = base + i * PKT
            self.iov[i].iov_len = PKT
            h = self.msgs[i].msg_hdr
            h.msg_name = nbase + i * 16
            h.msg_namelen = 16
            h.msg_iov = ctypes.pointer(self.iov[i])
            h.msg_iovlen = 1
        self.msgs_addr = ctypes.addressof(self.msgs)
        self.sent = 0
        self.errors = 0

    def send(self) -> None:
        if not self.m:
            return
        p = self.pkts
        p["seq"] += 1
        p["ts"] += 160
        p["sent"] = time.time_ns()  # CLOCK_REALTIME, as the kernel's receive timestamps
        off = 0
        while off < self.m:
            r = _sendmmsg(self.fd, self.msgs_addr + off * MMSG_SIZE, self.m - off, 0)
            if r <= 0:
                self.errors += self.m - off
                break
            off += r
        self.sent += off


SO_TIMESTAMPNS = 35
CMSG_SPACE = 32  # cmsghdr (16) + struct timespec (16)


class Receiver:
    """recvmmsg into one buffer; counts per phone and collects latencies (ns).

    Latency = the kernel's receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME) of the
    packet at the phone's socket − the send time in its payload (CLOCK_REALTIME, taken
    just before ``sendmmsg``): how late this generator reads its sockets does not count.
    """

    def __init__(self, n_phones: int) -> None:
        self.buf = np.zeros(VLEN, dtype=PACKET_DTYPE)
        self.ctrl = np.zeros((VLEN, CMSG_SPACE // 8), dtype=np.int64)
        self.iov = (IoVec * VLEN)()
        self.msgs = (MMsgHdr * VLEN)()
        base = self.buf.ctypes.data
        cbase = self.ctrl.ctypes.data
        for i in range(VLEN):
            self.iov[i].iov_base = base + i * PKT
            self.iov[i].iov_len = PKT
            h = self.msgs[i].msg_hdr
            h.msg_iov = ctypes.pointer(self.iov[i])
            h.msg_iovlen = 1
            h.msg_control = cbase + i * CMSG_SPACE
            h.msg_controllen = CMSG_SPACE
        self.msgs_addr = ctypes.addressof(self.msgs)
        # msg_controllen is rewritten by the kernel: reset it before each call (vectorised)
        words = np.frombuffer(self.msgs, dtype=np.uint64).reshape(VLEN, MMSG_SIZE // 8)
        self.controllen = words[:, MsgHdr.msg_controllen.offset // 8]
        self.counts = np.zeros(n_phones, dtype=np.int64)
        self.latencies: list[np.ndarray] = []
        self.collect_after = 1 << 62
        self.bad = 0

    def drain(self, fd: int) -> int:
        total = 0
        while True:
            self.controllen[:] = CMSG_SPACE
            r = _recvmmsg(fd, self.msgs_addr, VLEN, MSG_DONTWAIT, None)
            if r <= 0:
                return total
            got = self.buf[:r]
            phones = got["phone"]
            ok = phones < len(self.counts)
            self.bad += int(r - ok.sum())
            np.add.at(self.counts, phones[ok], 1)
            arrived = self.ctrl[:r, 2] * 1_000_000_000 + self.ctrl[:r, 3]
            sent = got["sent"]
            keep = ok & (sent >= self.collect_after)
            if keep.any():
                self.latencies.append(arrived[keep] - sent[keep])
            total += r
            if r < VLEN:
                return total


# --------------------------------------------------------------------------------------
# The generator (this process)
# --------------------------------------------------------------------------------------


def run(calls: int, seconds: float, warmup: float, record: bool, keep: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    record_dir = tempfile.mkdtemp(prefix="bench-bridge-") if record else None
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=service_main, args=(child, record_dir), daemon=True)
    proc.start()
    core = pin(GENERATOR_CORE)
    try:
        tag, pid = parent.recv()
        assert tag == "ready"
        service_core = next(iter(os.sched_getaffinity(pid)))
        time.sleep(0.3)
        rss_idle = rss_kb(pid)

        n_phones = 2 * calls
        socks = []
        for _ in range(SLOTS):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, 0))
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            try:
                s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            socks.append(s)
        # phone j: call j // 2, side j % 2 (0 = agent/A, 1 = callee/B), slot j % SLOTS,
        # sending and receiving on socks[slot]
        slot_of = np.arange(n_phones) % SLOTS
        addr_of = [socks[int(slot_of[j])].getsockname() for j in range(n_phones)]
        parent.send(("open", [(addr_of[2 * i], addr_of[2 * i + 1]) for i in range(calls)]))
        tag, ports = parent.recv()
        assert tag == "opened"
        dest = [(HOST, ports[j // 2][j % 2]) for j in range(n_phones)]
        batches = []
        for slot in range(SLOTS):
            phones = np.nonzero(slot_of == slot)[0].astype(np.uint32)
            batches.append(SendBatch(socks[slot].fileno(), phones, [dest[j] for j in phones]))
        rx = Receiver(n_phones)
        sel = selectors.EpollSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_READ)

        start = time.monotonic_ns()
        warm_end = start + int(warmup * 1e9)
        end = warm_end + int(seconds * 1e9)
        rx.collect_after = time.time_ns() + (warm_end - start)
        next_ns = start
        slot = 0
        max_lag = 0
        window: dict[str, Any] = {}
        while True:
            now = time.monotonic_ns()
            while now >= next_ns and next_ns < end:
                max_lag = max(max_lag, now - next_ns) if next_ns > start + PTIME_NS else max_lag
                batches[slot].send()
                slot = (slot + 1) % SLOTS
                next_ns += SLOT_NS
                if not window and next_ns >= warm_end:
                    parent.send(("stats",))
                    window["t0"] = time.monotonic()
                    window["cpu0"] = cpu_seconds(pid)
                    window["core0"] = core_busy_seconds(service_core)
                    window["stats0"] = parent.recv()[1]
                now = time.monotonic_ns()
            if next_ns >= end:
                break
            for key, _ in sel.select(max(0.0, (next_ns - now) / 1e9)):
                rx.drain(key.fd)
        # steady window ends here
        parent.send(("stats",))
        stats1 = parent.recv()[1]
        t1 = time.monotonic()
        cpu1 = cpu_seconds(pid)
        core1 = core_busy_seconds(service_core)
        rss_loaded = rss_kb(pid)
        # drain what is still in flight
        quiet_until = time.monotonic() + 0.5
        while time.monotonic() < quiet_until:
            for key, _ in sel.select(0.05):
                rx.drain(key.fd)
        parent.send(("close",))
        closed = parent.recv()[1]
        parent.send(("exit",))
        proc.join(10)

        wall = t1 - window["t0"]
        sent = sum(b.sent for b in batches)
        received = int(rx.counts.sum())
        lat = np.concatenate(rx.latencies) if rx.latencies else np.zeros(1, dtype=np.int64)
        result = {
            "calls": calls,
            "pps": round((stats1["packets_out"] - window["stats0"]["packets_out"]) / wall),
            "loss_pct": round(100.0 * (sent - received) / max(sent, 1), 4),
            "p50_ms": round(float(np.percentile(lat, 50)) / 1e6, 3),
            "p99_ms": round(float(np.percentile(lat, 99)) / 1e6, 3),
            "cpu_pct": round(100.0 * (cpu1 - window["cpu0"]) / wall, 1),
            "rss_kb_per_call": round((rss_loaded - rss_idle) / calls, 1),
        }
        info = {
            "seconds": round(wall, 2),
            "sent": sent,
            "received": received,
            "send_errors": sum(b.errors for b in batches),
            "service_in": closed["packets_in"],
            "service_out": closed["packets_out"],
            "service_dropped": closed["dropped"],
            "recording_errors": closed["recording_errors"],
            "generator_max_lag_ms": round(max_lag / 1e6, 2),
            # the service core's busy time beyond the service itself (other processes,
            # interrupts): a busy machine shows here, and in the latencies
            "other_load_on_service_core_pct": round(
                100.0 * ((core1 - window["core0"]) - (cpu1 - window["cpu0"])) / wall, 1
            ),
            "rss_idle_kb": rss_idle,
            "rss_loaded_kb": rss_loaded,
            "generator_core": core,
            "recordings": record_dir if keep else None,
        }
        if record_dir is not None:
            info.update(check_recordings(Path(record_dir), calls))
        return {"result": result, "info": info}
    finally:
        if proc.is_alive():
            proc.kill()
        if record_dir is not None and not keep:
            shutil.rmtree(record_dir, ignore_errors=True)


def check_recordings(directory: Path, calls: int) -> dict[str, Any]:
    import soundfile

    durations = []
    for i in range(calls):
        info = soundfile.info(str(directory / f"{i}.wav"))
        assert info.channels == 2 and info.samplerate == 8000
        durations.append(info.duration)
    return {
        "recording_seconds_min": round(min(durations), 2),
        "recording_seconds_max": round(max(durations), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    ap.add_argument("--no-record", action="store_true", help="relay only, no recorder")
    ap.add_argument("--keep", action="store_true", help="keep the recordings' directory")
    args = ap.parse_args()
    out = run(args.calls, args.seconds, args.warmup, not args.no_record, args.keep)
    r, info = out["result"], out["info"]
    print(
        f"{r['calls']} calls{' (no recording)' if args.no_record else ' recorded'}, "
        f"{info['seconds']} s measured: {r['pps']} packets/s relayed, "
        f"CPU {r['cpu_pct']} % of one core, RSS {r['rss_kb_per_call']} kB/call"
    )
    print(
        f"loss {r['loss_pct']} % ({info['sent'] - info['received']} of {info['sent']}), "
        f"latency p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"
    )
    print("details: " + json.dumps(info))
    print(json.dumps(r))


if __name__ == "__main__":
    main()
