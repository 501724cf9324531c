"""Media relay capacity through the worker pool (sipdialer.rtp.pool): N workers vs 1.

    python bench/pool.py --calls N --seconds S [--workers 2] [--no-record]
    python bench/pool.py --ramp [--ramp-start A --ramp-step B --ramp-max C --ramps R]
                         [--workers 2] [--no-record] --seconds S

The same generator, packets and pass rule as ``bench/bridge.py`` (imported from it, not
copied: its :func:`measure`, :func:`ramp`, :func:`passes`), with a different relay under
test: a child process (the "engine") running a :class:`~sipdialer.rtp.pool.MediaPool`
of ``--workers`` worker processes, each call a :class:`~sipdialer.rtp.pool.RemoteBridge`
opened, pointed, connected and (unless ``--no-record``) recording through the control
channel, as the dialer does with ``[media] workers``. The pool's calls are not the
dialer's: no SIP here.

Cores: the generator is pinned to the second CPU, as in ``bench/bridge.py``; worker
``i`` is pinned to CPU ``i`` (so with one worker the relay has the first core to itself,
exactly like ``bench/bridge.py``'s relay; with two, worker 1 **shares the generator's
core** — on a 2-core machine there is no third core, so the N-worker figure is a lower
bound of what N cores carry); the engine process, idle but for stats, sits on the first.
``cpu_pct`` and ``rss_kb_per_call`` in each result are worker 0's (the whole relay with
one worker); each worker's CPU seconds and RSS over the run are in the details, and
``engine_ping_p50_ms`` / ``engine_ping_p99_ms``: a thread of this process pings a UDP echo
on the engine's event loop every 50 ms while the calls' media flows — how quickly the
process that owns the pool (the service's, in a real deployment: SIP, API, /healthz) still
answers while its workers carry the load (the engine shares worker 0's core).

Without ``--ramp``: one load, the last line one JSON object. With ``--ramp``: ramps of
the 1-worker pool and the ``--workers`` pool side by side (the order rotated from step to
step, as ``bench/bridge.py`` does), each pool's capacity (last passing N) min / median /
max, and ``ratio_of_medians`` = N-worker capacity ÷ 1-worker capacity; the last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bridge import (
    HOST,
    check_recordings,
    choose_cores,
    cpu_seconds,
    free_rtp_range,
    measure,
    passes,
    ramp,
    rss_kb,
    summary_line,
)

Address = tuple[str, int]


def engine_main(
    conn: Connection,
    workers: int,
    record_dir: str | None,
    cores: list[int],
    ports: tuple[int, int],
) -> None:
    os.sched_setaffinity(0, {cores[0]})
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the workers inherit it
    import uvloop

    uvloop.run(_engine(conn, workers, record_dir, cores, ports))


async def _engine(
    conn: Connection,
    workers: int,
    record_dir: str | None,
    cores: list[int],
    ports: tuple[int, int],
) -> None:
    from sipdialer.rtp.pool import MediaPool, RemoteBridge
    from sipdialer.rtp.relay import Codec

    loop = asyncio.get_running_loop()
    pool = MediaPool(workers, HOST, ports)
    await pool.start()
    pids: list[int] = []
    for i, w in enumerate(pool.info()):
        pid = w["pid"]
        assert isinstance(pid, int)
        os.sched_setaffinity(pid, {cores[i % len(cores)]})
        pids.append(pid)
    bridges: list[RemoteBridge] = []
    done = loop.create_future()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))

    class Echo(asyncio.DatagramProtocol):
        """The engine's loop answering at once: what /healthz sees of the service's loop."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data, addr)

    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=(HOST, 0))
    conn.send(("ready", pids, echo.get_extra_info("sockname")[1]))

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
            codec = Codec("PCMU", 0, 101)
            ports = []
            for i, (addr_a, addr_b) in enumerate(addrs):
                b = await pool.open()
                b.a.set_remote(addr_a, codec)
                b.b.set_remote(addr_b, codec)
                b.connect()
                if record_dir is not None:
                    await b.start_recording(Path(record_dir) / f"{i}.wav")
                bridges.append(b)
                ports.append((b.a.local_port, b.b.local_port))
            await asyncio.gather(*(b.refresh() for b in bridges))  # all applied
            conn.send(("opened", ports))
        elif cmd == "stats":
            conn.send(("stats", totals()))
        elif cmd == "close":
            await asyncio.gather(*(b.refresh() for b in bridges))
            t = totals()
            cpu = [round(cpu_seconds(pid), 2) for pid in pids]
            rss = [rss_kb(pid) for pid in pids]
            await asyncio.gather(*(b.close() for b in bridges))
            errors = sum(1 for b in bridges if b.recording_error is not None)
            per_worker = [sum(1 for b in bridges if b.worker_index == i) for i in range(workers)]
            conn.send(
                (
                    "closed",
                    {
                        **t,
                        "recording_errors": errors,
                        "worker_cpu_seconds": cpu,
                        "worker_rss_kb": rss,
                        "calls_per_worker": per_worker,
                    },
                )
            )
        elif cmd == "exit":
            done.set_result(None)
    loop.remove_reader(conn.fileno())
    echo.close()
    await pool.close()


class Prober:
    """A thread that pings the engine's loop every 50 ms over UDP and keeps the round
    trips: the control process's responsiveness while its workers carry the media."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.rtts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2.0)
            n = 0
            while not self._stop.wait(0.05):
                n += 1
                t0 = time.monotonic()
                s.sendto(n.to_bytes(8, "big"), (HOST, self.port))
                try:
                    while int.from_bytes(s.recv(64), "big") != n:
                        pass
                except TimeoutError:
                    self.rtts.append(2.0)
                    continue
                self.rtts.append(time.monotonic() - t0)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join(5)
        rtts = sorted(self.rtts) or [0.0]
        return {
            "engine_ping_p50_ms": round(1000 * rtts[len(rtts) // 2], 2),
            "engine_ping_p99_ms": round(1000 * rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))], 2),
            "engine_pings": len(self.rtts),
        }


class PoolRelay:
    """The pool with ``workers`` workers as ``bench/bridge.py``'s relay under test."""

    def __init__(self, workers: int, cores: list[int], record: bool) -> None:
        self.workers = workers
        self.cores = cores
        self.record = record
        self.srtp = False  # what bench/bridge.py's generator asks of a relay
        kind = "recorded" if record else "unrecorded"
        self.name = f"pool_{workers}_workers_{kind}"
        self.label = f"sipdialer pool, {workers} worker{'s' if workers > 1 else ''}, {kind}"
        self.record_dir: str | None = None
        self.proc: BaseProcess | None = None
        self.conn: Connection | None = None
        self.prober: Prober | None = None
        self.echo_port = 0
        self.calls = 0

    def start(self, calls: int) -> int:
        ctx = mp.get_context("spawn")
        self.record_dir = tempfile.mkdtemp(prefix="bench-pool-") if self.record else None
        self.conn, child = ctx.Pipe()
        # a block of ports nobody uses now (other benches and tests use 20000 and up)
        ports = free_rtp_range(4 * calls + 400 * self.workers)
        self.proc = ctx.Process(
            target=engine_main,
            args=(child, self.workers, self.record_dir, self.cores, ports),
            daemon=True,
        )
        self.proc.start()
        tag, pids, self.echo_port = self.conn.recv()
        assert tag == "ready"
        return int(pids[0])  # worker 0: measure() takes its CPU and RSS

    def _ask(self, *message: Any) -> Any:
        assert self.conn is not None
        self.conn.send(message)
        return self.conn.recv()[1]

    def open(
        self, phones: list[tuple[Address, Address]], keys: list[tuple[bytes, ...]] | None = None
    ) -> list[tuple[int, int]]:
        assert keys is None  # plain RTP (the pool carries SRTP keys; not benched here yet)
        self.calls = len(phones)
        ports = [(int(a), int(b)) for a, b in self._ask("open", phones)]
        self.prober = Prober(self.echo_port)  # from now to close: the calls' media flowing
        return ports

    def relayed(self) -> int:
        # the proxies' counters: up to one stats interval (1 s) old
        return int(self._ask("stats")["packets_out"])

    def close(self) -> dict[str, Any]:
        pings = self.prober.stop() if self.prober is not None else {}
        self.prober = None
        closed = self._ask("close")
        assert self.conn is not None and self.proc is not None
        self.conn.send(("exit",))
        self.proc.join(15)
        info: dict[str, Any] = {
            "service_in": closed["packets_in"],
            "service_out": closed["packets_out"],
            "service_dropped": closed["dropped"],
            "recording_errors": closed["recording_errors"],
            "worker_cpu_seconds": closed["worker_cpu_seconds"],
            "worker_rss_kb": closed["worker_rss_kb"],
            "calls_per_worker": closed["calls_per_worker"],
            **pings,
        }
        if self.record_dir is not None:
            info.update(check_recordings(Path(self.record_dir), self.calls))
        return info

    def stop(self) -> None:
        if self.prober is not None:
            self.prober.stop()
            self.prober = None
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()  # its workers see EOF on their channels and exit
            self.proc.join(5)
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.record_dir is not None:
            shutil.rmtree(self.record_dir, ignore_errors=True)
            self.record_dir = None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--workers", type=int, default=2, help="workers of the pool under test")
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    ap.add_argument("--no-record", action="store_true", help="relay only, no recorder")
    ap.add_argument("--ramp", action="store_true", help="1 worker vs --workers, walking N up")
    ap.add_argument("--ramp-start", type=int, default=200)
    ap.add_argument("--ramp-step", type=int, default=100)
    ap.add_argument("--ramp-max", type=int, default=3000)
    ap.add_argument("--ramps", type=int, default=1)
    args = ap.parse_args()
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    cores = choose_cores()  # (relay core, generator core), before anything is pinned
    worker_cores = sorted(os.sched_getaffinity(0))
    record = not args.no_record
    if not args.ramp:
        relay = PoolRelay(args.workers, worker_cores, record)
        m = measure(relay, args.calls, args.seconds, args.warmup, cores)
        r, info = m["result"], m["info"]
        print(summary_line(relay.label, r, info))
        print("details: " + json.dumps(info))
        print(json.dumps({**r, "pass": passes(r), "workers": args.workers}))
        return
    one = PoolRelay(1, worker_cores, record)
    many = PoolRelay(args.workers, worker_cores, record)
    out = ramp(
        [one, many],
        args.ramp_start,
        args.ramp_step,
        args.ramp_max,
        args.ramps,
        args.seconds,
        args.warmup,
        cores,
    )
    caps = out["capacity"]
    for name, c in caps.items():
        print(f"capacity {name}: min {c['min']} / median {c['median']} / max {c['max']} calls")
    m1 = statistics.median_low(caps[one.name]["runs"])
    mn = statistics.median_low(caps[many.name]["runs"])
    out["ratio_of_medians"] = {f"{many.name}/{one.name}": round(mn / m1, 3) if m1 else None}
    print(f"ratio {args.workers} workers / 1 worker: {out['ratio_of_medians']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
