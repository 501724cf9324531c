"""The command line: ``sipdialer serve --config FILE`` and ``sipdialer demo``.

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

from sipdialer import __version__
from sipdialer.config import ConfigError, load_config
from sipdialer.logs import configure_logging

log = logging.getLogger("sipdialer")


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
    sub.add_parser(
        "demo",
        help="one real call end to end on loopback (not yet implemented)",
        description="Run one real click-to-dial call on loopback against an embedded "
        "simulated trunk and phones (arrives with the demo issue).",
    )
    return parser


async def _serve(config_path: str) -> int:
    from sipdialer.notify import Notifier
    from sipdialer.service import Service

    config = load_config(config_path)
    configure_logging(config.log.level)
    notifier = Notifier(config.redis, config.redis.outbox)
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


def _run(coro: object) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        try:
            return _run(_serve(args.config))
        except ConfigError as exc:
            print(f"sipdialer: configuration error: {exc}", file=sys.stderr)
            return 2
    if args.command == "demo":
        print("sipdialer demo: not yet implemented — it arrives with the demo issue.")
        return 0
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
