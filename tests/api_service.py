"""A real :class:`Service` with its HTTP API on free loopback ports, for the API tests.

The trunk points at a UDP port nobody answers on, so calls pass validation, get a 201 and
then wait for a trunk that never answers (or end at the SIP level) — what the API tests
need. Also: a raw HTTP/1.1 request (for targets a client library would normalise) and a
notifier stand-in with a settable ``status()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sipdialer.cdr import Cdr, MemorySink
from sipdialer.config import parse_config
from sipdialer.service import Service
from tests.peers import ports

VALID = {"agent": "1000", "callee": "0820001234", "outbound_id": "0123456789"}


@dataclass
class StatusSink(MemorySink):
    """A MemorySink with the notifier's ``status()``; tests set :attr:`state`."""

    state: dict[str, Any] = field(
        default_factory=lambda: {
            "redis_ok": True,
            "outbox_depth": 0,
            "last_error": None,
            "pushed_total": 0,
            "last_push_at": None,
        }
    )

    def __post_init__(self) -> None:
        MemorySink.__init__(self)

    def status(self) -> dict[str, Any]:
        return dict(self.state)

    def submit(self, cdr: Cdr) -> None:
        MemorySink.submit(self, cdr)


@dataclass
class ApiLab:
    service: Service
    client: aiohttp.ClientSession
    sink: MemorySink
    port: int
    recordings: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def api_service(
    tmp_path: Path,
    extra: str = "",
    *,
    trunk: str | None = "default",
    sink: MemorySink | None = None,
    headers: dict[str, str] | None = None,
    sip_extra: str = "",
    http_extra: str = "",
    recording_extra: str = "",
) -> AsyncIterator[ApiLab]:
    """Start a service; ``extra`` is appended to its config, ``sip_extra`` / ``http_extra`` /
    ``recording_extra`` to its [sip] / [http] / [recording] section;
    ``trunk=None``: no trunk, a string: that [trunk] section."""
    sip = ports.free_port("both")
    rtp = ports.free_port_range(200, "udp")
    dead = ports.free_port("udp")
    recordings = tmp_path / "recordings"
    recordings.mkdir(exist_ok=True)
    trunk_section = ""
    if trunk == "default":
        trunk_section = (
            f"[trunk]\nregistrar = 127.0.0.1:{dead}\ndomain = trunk.test\nregister = no\n"
        )
    elif trunk is not None:
        trunk_section = trunk
    config = parse_config(
        f"""
{trunk_section}
[sip]
listen = 127.0.0.1:{sip}
rtp_ports = {rtp}-{rtp + 199}
{sip_extra}
[http]
listen = 127.0.0.1:0
{http_extra}
[recording]
directory = {recordings}
{recording_extra}
{extra}
"""
    )
    sink = sink if sink is not None else MemorySink()
    service = Service(config, sink=sink)
    await service.start()
    port = service.http_port
    assert port
    client = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}", headers=headers)
    try:
        yield ApiLab(service, client, sink, port, recordings)
    finally:
        await client.close()
        await service.stop()
        ports.release([sip, dead, *range(rtp, rtp + 200)])


async def raw_request(port: int, target: str, method: str = "GET", headers: str = "") -> int:
    """Send ``METHOD target HTTP/1.1`` exactly as given; return the status code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode(
                "latin-1"
            )
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return int(status_line.split()[1])
