"""CPU cost of the project's relay per packet, in instructions: repeatable on a loaded machine.

    python bench/relay_cost.py [--rounds N] [--modes direct,loop] [--json]

Wall-clock benches (``bench/bridge.py``) are noisy on a shared machine; instruction counts
are not. This runs a small workload under ``valgrind --tool=callgrind`` once per case and
prints the user-space instructions (callgrind's ``Ir``: Python, uvloop, libc, numpy and the
recorder's writer thread; *not* the kernel's side of the syscalls, which callgrind cannot
see) per packet relayed, for:

* ``recorded`` — one :class:`~sipdialer.rtp.relay.Bridge` (uvloop, loopback sockets, PCMU
  both ways, connected) with a :class:`~sipdialer.rtp.recorder.Recorder`, flushed with
  :meth:`~sipdialer.rtp.recorder.Recorder.flush_async` once per 50 packets per direction
  (its 1 s interval at 50 pps) — so the flush's placing, interleaving and file write are
  in the figure, spread over the packets;
* ``plain`` — the same bridge without the recorder.

Two ways of delivering the packets (``--modes``):

* ``direct`` — the driver calls :meth:`MediaLeg.datagram_received` with a 172-byte RTP
  packet (12-byte header, 160 bytes of PCMU) and the latched source address, one each way
  per round: what the relay's Python rules cost per packet, plus their real ``sendto``
  (since the C fast path, only the packets it leaves to Python take that way: the first of
  a stream, DTMF, SRTP, …);
* ``loop`` — the driver's two phones (plain sockets in this process) each ``send`` one
  packet to their leg per round and the loop runs one iteration (``await sleep(0)``), so
  the loop's wake-up and the leg's reader (``_readable``, C: ``recvmmsg``, the fast path,
  ``sendto``) are counted too — what a call's packets really cost: one packet per wake-up
  per leg, the worst case (under load a wake-up may find several).

The relay's clock is an ``itertools.count`` advancing 10 ms per call, so the recorder sees
packets 20 ms apart on each leg (a C callable, like ``loop.time``). Each figure is the
instructions of the measured rounds (a warm-up of 200 rounds first: latching, the first
stream switch) minus those of a ``null`` run of the same driver with the relay call left
out (the phones' sends and the loop iterations stay in it), divided by the packets relayed.
The measured region is cut out of the run with callgrind's ``--dump-before`` on
``time.thread_time_ns`` (called only at its start and end). The forwarded packets go to
phone sockets nobody reads (the kernel drops them once their buffer is full, as a real
phone that stopped reading would not make the relay do anything else).

``RELAY_COST_FLUSH_EVERY=100`` flushes every 100 rounds instead (a 2 s flush interval).

The last line printed is one JSON object ``{"direct": {"recorded": ipp, "plain": ipp}, …}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUP = 200
FLUSH_EVERY = int(os.environ.get("RELAY_COST_FLUSH_EVERY", "50"))  # rounds: 1 s at 20 ms
PAYLOAD = bytes(random.Random(7).randrange(256) for _ in range(160))


def _packets(rounds: int, ssrc: int) -> list[bytes]:
    head = struct.Struct("!BBHII")
    seq0, ts0 = 1000, 160000
    return [
        head.pack(0x80, 0, (seq0 + i) & 0xFFFF, (ts0 + 160 * i) & 0xFFFFFFFF, ssrc) + PAYLOAD
        for i in range(rounds)
    ]


async def _workload(mode: str, case: str, rounds: int) -> None:
    """One run: setup, warm-up, ``time.thread_time_ns()`` … measured … ``thread_time_ns()``."""
    from sipdialer.rtp.ports import PortAllocator
    from sipdialer.rtp.recorder import Recorder
    from sipdialer.rtp.relay import Bridge, Codec

    host = "127.0.0.1"
    loop = asyncio.get_running_loop()
    base = random.randrange(30000, 39000, 2)
    bridge = await Bridge.open(host, PortAllocator(base, base + 9))
    phones = []
    for _ in range(2):  # the phones: they send, and nobody reads what reaches them
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((host, 0))
        s.setblocking(False)
        phones.append(s)
    addr_a, addr_b = phones[0].getsockname(), phones[1].getsockname()
    codec = Codec("PCMU", 0, 101)
    bridge.a.set_remote(addr_a, codec)
    bridge.b.set_remote(addr_b, codec)
    bridge.connect()
    t0 = loop.time()
    clock = itertools.count(t0, 0.01).__next__
    bridge.a._time = clock  # ignore the slot's type: a C callable like loop.time
    bridge.b._time = clock
    recorder = None
    tmp = tempfile.mkdtemp(prefix="relay_cost_")
    if case == "recorded":
        recorder = Recorder(Path(tmp) / "cost.wav", now=t0)
        bridge.start_recording(recorder)
        handle = bridge._flush_handle  # flushed below on the fake clock instead
        if handle is not None:
            handle.cancel()
    total = WARMUP + rounds
    pa, pb = _packets(total, 0x1111), _packets(total, 0x2222)
    relay_a, relay_b = bridge.a.datagram_received, bridge.b.datagram_received
    send_a = phones[0].sendto
    send_b = phones[1].sendto
    leg_a = (host, bridge.a.local_port)
    leg_b = (host, bridge.b.local_port)
    null = case == "null"
    direct = mode == "direct"

    async def run(first: int, last: int) -> None:
        for i in range(first, last):
            if direct:
                if not null:
                    relay_a(pa[i], addr_a)
                    relay_b(pb[i], addr_b)
            else:
                send_a(pa[i], leg_a)
                send_b(pb[i], leg_b)
                await asyncio.sleep(0)
            if recorder is not None and i % FLUSH_EVERY == FLUSH_EVERY - 1:
                recorder.flush_async(t0 + 0.02 * (i + 1))

    if null and not direct:  # the phones send to sockets of their own that nobody reads
        for leg in (bridge.a, bridge.b):
            leg._close()
        leg_a, leg_b = addr_b, addr_a
    await run(0, WARMUP)
    time.thread_time_ns()  # callgrind: dump (setup + warm-up)
    await run(WARMUP, total)
    time.thread_time_ns()  # callgrind: dump (the measured rounds)
    relayed = bridge.a.packets_out + bridge.b.packets_out
    if recorder is not None:
        bridge.stop_recording()
    await bridge.close()
    for s in phones:
        s.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"relayed": relayed, "rounds": rounds, "warmup": WARMUP}))


def _callgrind(mode: str, case: str, rounds: int) -> tuple[int, dict[str, int]]:
    """Instructions of the measured region of one run under callgrind, and its output."""
    out = tempfile.mkdtemp(prefix="relay_cost_cg_")
    try:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=time_thread_time_ns",
            f"--callgrind-out-file={out}/cg.%p",
            sys.executable,
            __file__,
            "--workload",
            mode,
            case,
            str(rounds),
        ]
        env = dict(os.environ, PYTHONHASHSEED="0")
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if res.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
        info = json.loads(res.stdout.strip().splitlines()[-1])
        dumps = sorted(Path(out).glob("cg.*.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        if len(dumps) < 2:
            raise SystemExit(f"callgrind left {len(dumps)} dumps in {out}")
        text = dumps[1].read_text(errors="replace")  # dump 2: the measured rounds
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if m is None:
            raise SystemExit(f"no totals in {dumps[1]}")
        return int(m.group(1)), info
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2000, help="measured rounds (2 packets each)")
    ap.add_argument("--modes", default="direct,loop")
    ap.add_argument("--cases", default="recorded,plain")
    ap.add_argument(
        "--workload", nargs=3, metavar=("MODE", "CASE", "ROUNDS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.workload:
        import uvloop

        mode, case, rounds = args.workload
        uvloop.run(_workload(mode, case, int(rounds)))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    result: dict[str, dict[str, float]] = {}
    for mode in args.modes.split(","):
        null, _ = _callgrind(mode, "null", args.rounds)
        result[mode] = {}
        for case in args.cases.split(","):
            ir, info = _callgrind(mode, case, args.rounds)
            packets = 2 * args.rounds
            if info["relayed"] < packets:
                raise SystemExit(f"{mode}/{case}: relayed {info['relayed']} of {packets}")
            ipp = (ir - null) / packets
            result[mode][case] = round(ipp)
            print(f"{mode:6} {case:8} {ipp:9.0f} instructions/packet  (null {null / packets:.0f})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
