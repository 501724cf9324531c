"""The command line: ``sipdialer serve --config FILE``, ``sipdialer demo`` and
``sipdialer inspect RECORDING.wav``.

Owns argument parsing, logging set-up, the event loop (uvloop when installed) and clean
shutdown on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from sipdialer import __version__
from sipdialer.config import ConfigError, load_config
from sipdialer.logs import configure_logging

log = logging.getLogger("sipdialer")

#: Where ``sipdialer demo`` looks for a real Redis before it starts its own (kept here so
#: that building the parser imports nothing from :mod:`sipdialer.demo`).
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipdialer",
        description="Click-to-dial softswitch: rings an agent, then a callee, bridges and "
        "records them, and reports every call to Redis.",
    )
    parser.add_argument("--version", action="version", version=f"sipdialer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the service",
        description="Run the service with the given configuration (see sip.conf.example).",
    )
    serve.add_argument("--config", "-c", required=True, metavar="FILE", help="INI file")
    _add_demo_parser(sub)
    _add_inspect_parser(sub)
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.5 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0.5 and 3600 seconds")
    return value


def _add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="one real call end to end on loopback (simulated trunk and phones)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Run one real click-to-dial call on loopback. Inside this process it starts a simulated
SIP trunk (registrar with digest auth + stateless proxy) and two simulated phones that
speak real SIP and RTP over 127.0.0.1 (agent 1000 sends a 440 Hz tone, callee
0820001234 sends 1000 Hz and hangs up after --talk-seconds), configures the real service
against them, places the call through the HTTP API and prints: the HTTP exchange, every
SIP step and state change as it happens, both notifications as a client takes them from
Redis with BRPOP, the recording's URL and path, and a summary measured from the WAV.

Redis: if one answers at --redis-url the demo uses it with the key prefix
enigma-demo-<random> (so no real client takes a demo call); otherwise it starts an
in-process stand-in that speaks the Redis protocol and uses the prefix enigma.

Exit code: 0 when the call went as expected (ANSWERED/16 with the two tones in the
recording; with --callee-busy BUSY/17; with --no-answer NO ANSWER/19), 1 otherwise;
2 when it did but --plot could not draw (matplotlib missing: pip install 'sipdialer[plot]').""",
    )
    demo.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        metavar="URL",
        help=f"the Redis to use if one answers there (default: {DEFAULT_REDIS_URL}); "
        "if none answers, the built-in stand-in is used",
    )
    demo.add_argument(
        "--key-prefix",
        metavar="PREFIX",
        help="Redis key prefix (default: enigma-demo-<random> on a real Redis, "
        "enigma on the stand-in)",
    )
    demo.add_argument(
        "--recordings",
        default="recordings",
        metavar="DIR",
        help="where the service writes recordings (default: recordings/ under the "
        "current directory)",
    )
    outcome = demo.add_mutually_exclusive_group()
    outcome.add_argument(
        "--callee-busy",
        action="store_true",
        help="the callee answers 486 Busy Here: expect a BUSY / 17 notification",
    )
    outcome.add_argument(
        "--no-answer",
        action="store_true",
        help="the callee rings until the service's ring timeout (5 s) and is cancelled: "
        "expect NO ANSWER / 19",
    )
    demo.add_argument(
        "--talk-seconds",
        type=_positive_seconds,
        default=4.0,
        metavar="S",
        help="how long after answering the callee hangs up (default: 4)",
    )
    demo.add_argument(
        "--plot",
        action="store_true",
        help="also write a PNG of the recording's two channels (waveform and "
        "spectrogram; left = agent, right = callee) next to the WAV; needs the [plot] "
        "extra (pip install 'sipdialer[plot]')",
    )
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="after the call, leave the service, trunk and phones up and print "
        "ready-to-paste curl and redis-cli lines; Ctrl-C stops",
    )
    demo.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="also show the service's own structured log lines (INFO) on stderr",
    )


def _add_inspect_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    inspect = sub.add_parser(
        "inspect",
        help="measure a recording: dominant frequency and level of each channel",
        description="Print, for each channel of a 16-bit PCM WAV recording (left = agent, "
        "right = callee), its dominant frequency (FFT peak), its RMS level in dBFS and "
        "how many seconds of it are not silent. Exit code 2 if the file cannot be read, "
        "or if --plot/--png cannot draw (matplotlib missing: pip install 'sipdialer[plot]').",
    )
    inspect.add_argument("wav", metavar="RECORDING.wav", help="the recording to measure")
    inspect.add_argument(
        "--plot",
        action="store_true",
        help="also write a PNG (waveform and spectrogram per channel) next to it; "
        "needs the [plot] extra (pip install 'sipdialer[plot]')",
    )
    inspect.add_argument(
        "--png",
        metavar="FILE",
        help="write the PNG to FILE instead (implies --plot)",
    )


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sipdialer.demo.command import DemoOptions, Scenario, run_demo

    scenario: Scenario = "busy" if args.callee_busy else "no-answer" if args.no_answer else "answer"
    options = DemoOptions(
        redis_url=args.redis_url,
        key_prefix=args.key_prefix,
        recordings=Path(args.recordings),
        scenario=scenario,
        talk_seconds=args.talk_seconds,
        plot=args.plot,
        keep_running=args.keep_running,
        verbose=args.verbose,
    )
    try:
        return _run(run_demo(options))
    except KeyboardInterrupt:
        return 130


def _inspect(args: argparse.Namespace) -> int:
    from sipdialer.rtp.inspect_wav import (
        PlotUnavailableError,
        format_report,
        measure_wav,
        plot_wav,
    )

    try:
        report = measure_wav(args.wav)
    except (OSError, ValueError) as exc:
        print(f"sipdialer inspect: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_report(report, indent="")))
    if args.plot or args.png:
        try:
            png = plot_wav(args.wav, args.png)
        except PlotUnavailableError as exc:
            print(f"sipdialer inspect: --plot: {exc}", file=sys.stderr)
            return 2
        print(f"plot: {png}")
    return 0


async def _serve(config_path: str) -> int:
    from sipdialer.notify.notifier import Notifier
    from sipdialer.service import Service

    config = load_config(config_path)
    configure_logging(config.log.level)
    notifier = Notifier(config.redis, config.redis.outbox, background=True)
    service = Service(config, sink=notifier)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # the notifier first (it replays the outbox) and last (it takes the final CDRs)
    await notifier.start()
    try:
        await service.start()
    except OSError as exc:
        log.error("event=start_failed error=%s", exc)
        await notifier.stop()
        return 1
    # everything built at start-up lives for the whole run: keep it out of the GC's
    # generations so full collections stay short with hundreds of calls (bench/bridge.py)
    gc.freeze()
    # A full collection walks every live object: at 100 set-ups/s (bench/calls.py) the
    # calls, the 1,000 recent ones and 32 s of RFC 6026 Accepted transactions are ~400k
    # objects, and each full collection stopped the loop for 120-280 ms, 9 times in 30 s.
    # One every 100 (not 10) young-generation collections: ~10x fewer such stalls; the
    # price is cyclic garbage of ended calls living ~30 s longer (a few tens of MB).
    gc.set_threshold(700, 10, 100)
    log.info(
        "event=service_started sip=%s:%d http=%s:%s",
        *service.transport.listen,
        config.http.listen[0],
        service.http_port,
    )
    await stop.wait()
    log.info("event=service_stopping")
    await service.stop()
    await notifier.stop()
    log.info("event=service_stopped")
    return 0


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        try:
            return _run(_serve(args.config))
        except ConfigError as exc:
            print(f"sipdialer: configuration error: {exc}", file=sys.stderr)
            return 2
    if args.command == "demo":
        return _demo(args)
    if args.command == "inspect":
        return _inspect(args)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
