"""Call set-up rate through the API and the trunk: ``sipdialer serve`` as users run it.

    python bench/calls.py [--rate R] [--seconds S] [--hold H] [--no-record]

The service runs as its own process (``python -m sipdialer serve``, uvloop, logging at the
default INFO level to a file) with a generated configuration: its trunk is SIPp (Debian's
sip-tester) with the built-in UAS scenario (``-sn uas``), so SIPp answers both legs of every
call — it plays the trunk and both phones; its notifications go to a ``redis-server`` the
bench starts on a free port. SIPp sends no RTP: its echo mode (``-rtp_echo``) bounces the
relay's ringback between the two legs of a call as fast as the loop forwards it, a storm no
real call makes; the media's capacity is ``bench/bridge.py``'s to measure. The calls are
recorded (unless ``--no-record``): the recorder, its WAV and its flushes are set up as in
a real call. This process is the API client: it
POSTs ``/click2dial/calls`` at R calls per second for S seconds (open loop: one request
every 1/R s whatever the answers take, each on its own connection as independent clients
would), DELETEs each call H seconds after its POST, then reads every CDR from Redis.

Printed: ``api_p50_ms`` / ``api_p99_ms`` / ``api_max_ms`` — POST to its 201, as the client
sees it (connect, accept, request, answer); ``api_server_p50_ms`` / ``api_server_p99_ms`` —
the same POSTs as the service timed them (its access log: from the request read to the
answer written, so without the wait to be accepted and read); ``setup_p50_ms`` /
``setup_p99_ms`` — the CDR's ``created_at`` → ``bridged_at`` (the API took the request →
both parties connected: the agent's INVITE, 200, ACK, then the callee's); ``answered`` /
``cdrs`` / outcomes; ``achieved_rate`` (calls whose POST succeeded per second of the run);
``service_cpu_pct`` (the service process's CPU time over the run's wall time, of one core:
it runs on one event loop, so ~100 % means the loop is the limit), ``service_loop_cpu_pct``
(the same for the process's main thread alone: the event loop; the rest is the journal's
and the outbox's writer threads), ``workers_cpu_pct`` (each media worker process's,
likewise), ``healthz_p50_ms`` / ``healthz_p99_ms`` / ``healthz_max_ms`` (a GET /healthz
every 50 ms on one kept-alive connection: the event loop's stalls, without the accept
queue), ``sipp_cpu_pct`` and ``bench_cpu_pct`` likewise (they share the machine), and the
peak number of live calls. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from sipdialer.demo.ports import free_port, free_port_range

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / CLK_TCK


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User + system CPU time of thread ``tid`` of process ``pid``, from /proc."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:13]) / CLK_TCK


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the service's media workers)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(c) for c in text]
    return out


def iso_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


async def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status in (200, 503):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"the service did not answer {url} within {timeout} s")


async def drive(
    base: str, rate: float, seconds: float, hold: float
) -> tuple[list[float], list[str], collections.Counter[str], int]:
    """POST calls at ``rate`` for ``seconds``, DELETE each after ``hold``."""
    api_ms: list[float] = []
    ids: list[str] = []
    errors: collections.Counter[str] = collections.Counter()
    loop = asyncio.get_running_loop()
    # one connection per request (force_close): independent clients, as in real use
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> None:
            body = {
                "agent": f"083{i % 10_000_000:07d}",
                "callee": f"084{i % 10_000_000:07d}",
                "outbound_id": "0123456789",
                "call_ref": f"bench-{i}",
            }
            t0 = loop.time()
            try:
                async with http.post(f"{base}/click2dial/calls", json=body) as resp:
                    answer = await resp.json()
                    api_ms.append((loop.time() - t0) * 1000)
                    if os.environ.get("BENCH_TRACE"):
                        print(i, round((loop.time() - t0) * 1000), file=sys.stderr)
                    if resp.status != 201:
                        errors[f"http_{resp.status}"] += 1
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                return
            ids.append(answer["id"])
            await asyncio.sleep(max(0.0, t0 + hold - loop.time()))
            try:
                async with http.delete(f"{base}/click2dial/calls/{answer['id']}") as resp:
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[f"delete_{type(exc).__name__}"] += 1

        tasks = []
        start = loop.time()
        n = int(rate * seconds)
        for i in range(n):
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return api_ms, ids, errors, n


async def peak_calls(base: str, stop: asyncio.Event, peak: list[int]) -> None:
    """Samples the service's live-call gauge from /metrics every 0.5 s."""
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                async with http.get(f"{base}/metrics") as resp:
                    for line in (await resp.text()).splitlines():
                        if line.startswith("sipdialer_calls_active "):
                            peak[0] = max(peak[0], int(float(line.split()[1])))
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)


async def probe_health(base: str, stop: asyncio.Event, ms: list[float]) -> None:
    """GET /healthz every 50 ms on one kept-alive connection (no accept queue on the way):
    how long the service's event loop takes to answer, i.e. its stalls."""
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        while not stop.is_set():
            t0 = loop.time()
            try:
                async with http.get(f"{base}/healthz") as resp:
                    await resp.read()
                ms.append((loop.time() - t0) * 1000)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(max(0.0, t0 + 0.05 - loop.time()))


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import redis.asyncio as aioredis

    sipp_port = free_port(tcp_too=True)
    sip_port = free_port(tcp_too=True)
    http_port = free_port(tcp_too=True)
    redis_port = free_port(tcp_too=True)
    media_low, _ = free_port_range(4)
    live = int(args.rate * (args.hold + 2)) + 20
    # two ports a call, and a released port rests before it is used again (ports.py)
    rtp_low, rtp_high = free_port_range(4 * live + 200)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        sipp = subprocess.Popen(
            [
                *("sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(sipp_port)),
                *("-mi", "127.0.0.1", "-mp", str(media_low), "-nostdin", "-max_socket", "10000"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(sipp)
        conf = tmp / "sip.conf"
        conf.write_text(
            f"[trunk]\nregistrar = 127.0.0.1:{sipp_port}\nregister = no\ndomain = 127.0.0.1\n"
            f"[sip]\nlisten = 127.0.0.1:{sip_port}\nrtp_ports = {rtp_low}-{rtp_high}\n"
            f"[http]\nlisten = 127.0.0.1:{http_port}\n"
            f"public_url = http://127.0.0.1:{http_port}\n"
            f"[redis]\nurl = redis://127.0.0.1:{redis_port}/0\noutbox = {tmp / 'outbox'}\n"
            f"[calls]\nmax_concurrent = {live * 2}\n"
            f"[recording]\ndirectory = {tmp / 'recordings'}\n"
            f"enabled = {'no' if args.no_record else 'yes'}\n"
            f"[registrar]\nstore = {tmp / 'bindings.json'}\n"
            f"[media]\nworkers = {args.workers}\n"
        )
        with (tmp / "serve.log").open("wb") as log:
            service = subprocess.Popen(
                [sys.executable, "-m", "sipdialer", "serve", "--config", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(service)
        base = f"http://127.0.0.1:{http_port}"
        await wait_http(f"{base}/healthz", 15)
        workers = children(service.pid)
        cpu0 = {p: cpu_seconds(p) for p in (service.pid, sipp.pid, *workers)}
        loop0 = thread_cpu_seconds(service.pid, service.pid)  # its main thread: the loop
        bench0 = time.process_time()
        t0 = time.monotonic()
        stop = asyncio.Event()
        peak = [0]
        health_ms: list[float] = []
        samplers = [
            asyncio.create_task(peak_calls(base, stop, peak)),
            asyncio.create_task(probe_health(base, stop, health_ms)),
        ]
        api_ms, ids, errors, sent = await drive(base, args.rate, args.seconds, args.hold)
        wall = time.monotonic() - t0
        cpu = {pid: (cpu_seconds(pid) - c) / wall * 100 for pid, c in cpu0.items()}
        loop_cpu = (thread_cpu_seconds(service.pid, service.pid) - loop0) / wall * 100
        bench_cpu = (time.process_time() - bench0) / wall * 100
        stop.set()
        await asyncio.gather(*samplers)
        # every call's CDR (notifications reach Redis after each call's end)
        client = aioredis.Redis(port=redis_port)
        key = "enigma:notifications:cdr"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and await client.llen(key) < len(ids):
            await asyncio.sleep(0.2)
        cdrs = [json.loads(raw)["payload"] for raw in await client.lrange(key, 0, -1)]
        await client.aclose()
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    # the service's own view of each POST (its access log: request read → answer written),
    # which leaves out the connection's accept and the client's side
    server_post_ms = [
        float(line.rsplit(" ms=", 1)[1].split()[0])
        for line in (tmp / "serve.log").read_text(errors="replace").splitlines()
        if "event=http_request method=POST" in line and " ms=" in line
    ]
    setup_ms = [
        (iso_time(c["bridged_at"]) - iso_time(c["created_at"])) * 1000
        for c in cdrs
        if c.get("bridged_at")
    ]
    outcomes = collections.Counter(f"{c['disposition']}/{c['end_reason']}" for c in cdrs)
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "hold": args.hold,
        "recorded": not args.no_record,
        "media_workers": args.workers,
        "calls_sent": sent,
        "calls_created": len(ids),
        "achieved_rate": round(len(ids) / args.seconds, 1),
        "api_errors": dict(errors),
        "api_p50_ms": pct(api_ms, 0.5),
        "api_p99_ms": pct(api_ms, 0.99),
        "api_max_ms": round(max(api_ms), 1) if api_ms else 0.0,
        "api_server_p50_ms": pct(server_post_ms, 0.5),
        "api_server_p99_ms": pct(server_post_ms, 0.99),
        "healthz_p50_ms": pct(health_ms, 0.5),
        "healthz_p99_ms": pct(health_ms, 0.99),
        "healthz_max_ms": round(max(health_ms), 1) if health_ms else 0.0,
        "cdrs": len(cdrs),
        "answered": len(setup_ms),
        "setup_p50_ms": pct(setup_ms, 0.5),
        "setup_p99_ms": pct(setup_ms, 0.99),
        "outcomes": dict(outcomes),
        "peak_live_calls": peak[0],
        "service_cpu_pct": round(cpu[service.pid], 1),
        "service_loop_cpu_pct": round(loop_cpu, 1),
        "workers_cpu_pct": [round(cpu[w], 1) for w in workers],
        "sipp_cpu_pct": round(cpu[sipp.pid], 1),
        "bench_cpu_pct": round(bench_cpu, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="calls POSTed per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to POST")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds from POST to DELETE")
    parser.add_argument("--no-record", action="store_true", help="[recording] enabled = no")
    parser.add_argument(
        "--workers", default="auto", help="[media] workers (default auto: one per CPU)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    for binary in ("sipp", "redis-server"):
        if shutil.which(binary) is None:
            raise SystemExit(f"{binary} is not installed (make peers)")
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None  # type: ignore[assignment]
    tmp = Path(tempfile.mkdtemp(prefix="bench-calls-"))
    try:
        coro = run(args, tmp)
        result = uvloop.run(coro) if uvloop else asyncio.run(coro)
    finally:
        if args.keep:
            print(f"work directory kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"{result['calls_created']}/{result['calls_sent']} calls created at "
        f"{result['achieved_rate']}/s, {result['answered']} bridged; API p50/p99 "
        f"{result['api_p50_ms']}/{result['api_p99_ms']} ms; set-up p50/p99 "
        f"{result['setup_p50_ms']}/{result['setup_p99_ms']} ms; service CPU "
        f"{result['service_cpu_pct']} % (loop {result['service_loop_cpu_pct']} %); "
        f"CDRs: {result['outcomes']}",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
