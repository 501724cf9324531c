"""Signalling load: N whole calls through the real engine against SIPp as the trunk.

    python bench/calls.py --calls N [--rate R] [--hold S]

SIPp (Debian package sip-tester) plays the trunk with its built-in UAS scenario and echoes
RTP (``-sn uas -rtp_echo``): it answers both legs of every call. The service runs
in-process with uvloop: each call rings the "agent", then the "callee", is bridged and
recorded, held for S seconds, then hung up through the engine (as the API's DELETE does).
Prints a summary and, as the last line, one JSON object: calls, answered, set-up rate,
p50/p99 time from originate to bridged, CDRs by outcome, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sipdialer.config import parse_config
from sipdialer.demo.ports import free_port, free_port_range
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import CallRequest
from sipdialer.service import Service


async def run(calls: int, rate: float, hold: float, recordings: Path) -> dict[str, object]:
    sipp_port = free_port(tcp_too=True)
    media_low, _ = free_port_range(4)
    sipp = subprocess.Popen(
        [
            "sipp",
            "-sn",
            "uas",
            "-rtp_echo",
            "-i",
            "127.0.0.1",
            "-p",
            str(sipp_port),
            "-mi",
            "127.0.0.1",
            "-mp",
            str(media_low),
            "-nostdin",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await asyncio.sleep(1.0)
        if sipp.poll() is not None:
            raise SystemExit("sipp did not start")
        rtp_low, rtp_high = free_port_range(4 * calls + 40)
        config = parse_config(
            f"[trunk]\nregistrar = 127.0.0.1:{sipp_port}\nregister = no\ndomain = 127.0.0.1\n"
            f"[sip]\nlisten = 127.0.0.1:{free_port(tcp_too=True)}\n"
            f"rtp_ports = {rtp_low}-{rtp_high}\n"
            f"[calls]\nmax_concurrent = {calls + 10}\n"
            f"[recording]\ndirectory = {recordings}\n"
        )
        sink = MemorySink()
        service = Service(config, sink=sink, serve_http=False)
        await service.start()
        assert service.dialer is not None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        runners = []
        for i in range(calls):
            started = loop.time()
            request = CallRequest(
                agent=f"083{i:07d}", callee=f"084{i:07d}", outbound_id="0123456789"
            )
            runner = await service.dialer.originate(request)
            runners.append((started, runner))
            await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - loop.time()))
        deadline = loop.time() + 30
        while loop.time() < deadline and not all(
            r.state.value == "bridged" or r.call.ended for _, r in runners
        ):
            await asyncio.sleep(0.01)
        setup = [
            r.record.bridged_at - r.record.created_at
            for _, r in runners
            if r.record.bridged_at is not None
        ]
        set_up_s = loop.time() - t0
        await asyncio.sleep(hold)
        for _, runner in runners:
            runner.hangup()
        await asyncio.wait_for(asyncio.gather(*(r.done.wait() for _, r in runners)), 30)
        await service.stop()
    finally:
        sipp.terminate()
        sipp.wait(5)
    outcomes = collections.Counter(
        f"{c.outcome.disposition}/{c.outcome.end_reason}" for c in sink.cdrs
    )
    setup.sort()

    def pct(q: float) -> float:
        return round(setup[min(len(setup) - 1, int(q * len(setup)))] * 1000, 1) if setup else 0.0

    return {
        "calls": calls,
        "answered": len(setup),
        "cdrs": len(sink.cdrs),
        "setup_rate_per_s": round(calls / set_up_s, 1),
        "p50_setup_ms": pct(0.5),
        "p99_setup_ms": pct(0.99),
        "outcomes": dict(outcomes),
        "seconds": round(set_up_s + hold, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="calls started per second")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds bridged")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (Debian package sip-tester)")
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        coro = run(args.calls, args.rate, args.hold, Path(tmp))
        result = uvloop.run(coro) if uvloop else asyncio.run(coro)
    print(
        f"{result['answered']}/{result['calls']} calls bridged at "
        f"{result['setup_rate_per_s']} calls/s; set-up p50 {result['p50_setup_ms']} ms, "
        f"p99 {result['p99_setup_ms']} ms; CDRs: {result['outcomes']}",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
