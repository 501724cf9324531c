"""``sipdialer demo``: one real click-to-dial call end to end on loopback, narrated.

Owns the demo: it starts, in this one process, a simulated trunk
(:class:`~sipdialer.demo.sim_trunk.SimTrunk`) and two simulated phones
(:class:`~sipdialer.demo.sim_phone.SimPhone`: agent 1000 sending 440 Hz, callee
0820001234 sending 1000 Hz) that speak real SIP and RTP over 127.0.0.1, configures the
real :class:`~sipdialer.service.Service` and :class:`~sipdialer.notify.Notifier` against
them, places a call through the real HTTP API and prints what happens: the HTTP exchange,
every SIP step of the trunk and the phones and every state change of the call (polled
from ``GET /click2dial/calls/{id}`` every 100 ms), the two notifications as a client
takes them from Redis with BRPOP, the recording's URL and path, and a summary measured
from the WAV. Exit code 0 when the call went as the scenario expects, else 1.

Decisions:

* **Redis.** If a Redis answers at ``--redis-url`` the notifier pushes there and the
  demo takes the notifications back with BRPOP. So as not to hand a demo call to a real
  client of that Redis (or take one of its notifications), the key prefix is then
  ``enigma-demo-<6 hex>`` — printed, and the lists are empty again once read.
  Otherwise the demo starts an embedded stand-in,
  :class:`~sipdialer.demo.embedded_redis.EmbeddedRedis` (fakeredis's Redis server, in
  this process), on a free loopback port, says so, and uses the production prefix
  ``enigma`` (nobody else can be listening there). ``--key-prefix`` overrides both.
* **Ports.** Everything binds 127.0.0.1: the service's HTTP on port 0 (the kernel picks);
  its SIP (UDP+TCP) and each phone's SIP on a port drawn below the ephemeral range and
  checked free (retried if taken meanwhile); the trunk and each phone's RTP on their own
  UDP socket (port 0); the service's RTP on a free block of 200 ports.
* **Timings.** The agent answers after 1.0 s of ringing, the callee after 1.5 s and hangs
  up ``--talk-seconds`` (4 s) later; the service's callee ring timeout is 5 s so
  ``--no-answer`` ends quickly; an answered call takes about 7 s.
* The outbox lives in a temporary directory removed at exit; recordings go to
  ``--recordings`` (``recordings/`` under the current directory).
* **Plot.** ``--plot`` draws with matplotlib, the optional ``[plot]`` extra. Without it
  the demo runs all the same, says "not drawn" where the plot would be, prints one line
  naming the extra on stderr and exits 2 (1 still wins when the call itself went wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import aiohttp
import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sipdialer.config import Config, ConfigError, parse_config
from sipdialer.demo.embedded_redis import EmbeddedRedis
from sipdialer.demo.ports import free_port, free_port_range
from sipdialer.demo.sim_phone import PhoneCall, PhoneEvent, SimPhone
from sipdialer.demo.sim_trunk import SimTrunk, TrunkEvent
from sipdialer.logs import configure_logging
from sipdialer.notify.notifier import Notifier
from sipdialer.rtp.inspect_wav import (
    PlotUnavailableError,
    WavReport,
    dominant_frequency,
    measure_wav,
    plot_wav,
)
from sipdialer.service import Service
from sipdialer.sip.registration import RegState

__all__ = ["DEFAULT_REDIS_URL", "DemoOptions", "Scenario", "run_demo"]

Scenario = Literal["answer", "busy", "no-answer"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DOMAIN = "sim-trunk.invalid"
AGENT, CALLEE, OUTBOUND = "1000", "0820001234", "0123456789"
AGENT_HZ, CALLEE_HZ = 440.0, 1000.0
TOLERANCE_HZ = 15.0
AGENT_RING_SECONDS = 1.0
CALLEE_RING_SECONDS = 1.5
CALLEE_RING_TIMEOUT = 5
AGENT_RING_TIMEOUT = 15
POLL_SECONDS = 0.1
HOLD_BACK = 0.25  # events are printed this late, so that polled states sort in place
BRPOP_TIMEOUT = 10
EXPECTED: dict[str, tuple[str, int]] = {
    "answer": ("ANSWERED", 16),
    "busy": ("BUSY", 17),
    "no-answer": ("NO ANSWER", 19),
}
LABEL = 14


@dataclass(frozen=True)
class DemoOptions:
    """What ``sipdialer demo`` was asked (see ``sipdialer demo --help``)."""

    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str | None = None
    recordings: Path = Path("recordings")
    scenario: Scenario = "answer"
    talk_seconds: float = 4.0
    plot: bool = False
    keep_running: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class Check:
    label: str
    ok: bool
    detail: str


@dataclass(order=True)
class _Line:
    at: float
    seq: int
    who: str = field(compare=False)
    text: str = field(compare=False)


class Narrator:
    """The demo's output: headings, aligned fields, and the time-ordered event lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.t0 = time.time()
        self._pending: list[_Line] = []
        self._seq = 0

    def print(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def title(self, text: str) -> None:
        self.print(text)
        self.print("=" * len(text))

    def heading(self, text: str) -> None:
        self.print()
        self.print(text)
        self.print("-" * len(text))

    def field(self, label: str, value: str) -> None:
        lines = value.split("\n")
        self.print(f"  {label:<{LABEL}} {lines[0]}".rstrip())
        for more in lines[1:]:
            self.print(f"  {'':<{LABEL}} {more}".rstrip())

    def json(self, document: Any) -> None:
        for line in json.dumps(document, indent=2, ensure_ascii=False).splitlines():
            self.print("    " + line)

    # ---- events ---------------------------------------------------------------------------
    def event(self, at: float, who: str, text: str) -> None:
        self._seq += 1
        self._pending.append(_Line(at, self._seq, who, text))

    def on_phone(self, event: PhoneEvent) -> None:
        self.event(event.at, event.phone, event.text)

    def on_trunk(self, event: TrunkEvent) -> None:
        self.event(event.at, "trunk", event.text)

    def flush(self, upto: float | None = None) -> None:
        """Print the events that happened before ``upto`` (all of them: None), in order."""
        self._pending.sort()
        while self._pending and (upto is None or self._pending[0].at <= upto):
            line = self._pending.pop(0)
            self.print(f"  {line.at - self.t0:+8.3f} s  {line.who:<7} {line.text}")


def _iso_to_unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


async def _redis_problem(url: str) -> str | None:
    """None when a Redis answers PING at ``url``; else why not, in a few words."""
    try:
        client = aioredis.from_url(
            url, socket_connect_timeout=0.5, socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )
    except ValueError as exc:
        return f"not a Redis URL: {exc}"
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        if isinstance(exc, ConnectionError | OSError) or "connect" in str(exc).lower():
            return "nothing answers"
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return None


def _service_config(
    *,
    trunk: SimTrunk,
    password: str,
    sip_port: int,
    rtp: tuple[int, int],
    redis_url: str,
    key_prefix: str,
    outbox: Path,
    recordings: Path,
    log_level: str,
) -> Config:
    return parse_config(
        f"""
[trunk]
registrar = {trunk.host}:{trunk.port}
domain = {trunk.domain}
username = dialer
password = {password}
expires = 300
[sip]
listen = 127.0.0.1:{sip_port}
rtp_ports = {rtp[0]}-{rtp[1]}
[http]
listen = 127.0.0.1:0
[redis]
url = {redis_url}
key_prefix = {key_prefix}
legacy_c2d = yes
outbox = {outbox}
[calls]
agent_ring_timeout = {AGENT_RING_TIMEOUT}
callee_ring_timeout = {CALLEE_RING_TIMEOUT}
[recording]
directory = {recordings}
[log]
level = {log_level}
""",
        source="<demo>",
    )


class Demo:
    """One run of ``sipdialer demo`` (set-up, the call, read-back, summary, tear-down)."""

    def __init__(self, options: DemoOptions, out: TextIO) -> None:
        self.options = options
        self.say = Narrator(out)
        self.standin: EmbeddedRedis | None = None
        self.plot_problem: str | None = None
        self.trunk: SimTrunk | None = None
        self.agent: SimPhone | None = None
        self.callee: SimPhone | None = None
        self.notifier: Notifier | None = None
        self.service: Service | None = None
        self.redis_url = options.redis_url
        self.key_prefix = options.key_prefix or "enigma"
        self.base_url = ""
        self.checks: list[Check] = []
        self.final_cdr: dict[str, Any] | None = None
        self.report: WavReport | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # ---- the whole run --------------------------------------------------------------------
    async def run(self) -> int:
        try:
            try:
                await self._set_up()
            except (OSError, RuntimeError, ConfigError, TimeoutError) as exc:
                self.say.print()
                self.say.print(f"The demo could not start: {exc}")
                return 1
            call = await self._place_call()
            if call is not None:
                await self._follow(call)
            self._summary()
            if self.options.keep_running:
                await self._keep_running(call)
        finally:
            await self._tear_down()
        if not (self.checks and all(c.ok for c in self.checks)):
            return 1
        if self.plot_problem is not None:
            sys.stderr.write(f"sipdialer demo: --plot: {self.plot_problem}\n")
            return 2
        return 0

    def _check(self, label: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(label, ok, detail))

    # ---- set-up -----------------------------------------------------------------------------
    async def _set_up(self) -> None:
        say, opts = self.say, self.options
        say.title("sipdialer demo: one real click-to-dial call over loopback")
        say.print("The real service, a simulated SIP trunk and two simulated phones run in this")
        say.print("process and talk real SIP (UDP) and RTP to each other over 127.0.0.1.")
        say.heading("Set-up")

        problem = await _redis_problem(opts.redis_url)
        if problem is None:
            self.key_prefix = opts.key_prefix or f"enigma-demo-{secrets.token_hex(3)}"
            say.field("redis", f"{opts.redis_url} answers: the demo pushes there and reads back")
            if opts.key_prefix is None:
                say.field(
                    "key prefix",
                    f"{self.key_prefix} (a demo prefix, not enigma: a real client of this\n"
                    "Redis must not take the demo's calls; --key-prefix to choose)",
                )
            else:
                say.field("key prefix", self.key_prefix)
        else:
            self.standin = EmbeddedRedis()
            await self.standin.start()
            self.redis_url = self.standin.url
            say.field("redis", f"{opts.redis_url}: {problem}; using an embedded stand-in")
            say.field(
                "",
                f"at {self.redis_url}: fakeredis {self.standin.version}'s Redis server, in\n"
                "this process (any Redis client or redis-cli works with it)",
            )
            say.field("key prefix", self.key_prefix)
        cdr_key, c2d_key = self.keys
        say.field("lists", f"{cdr_key}  {c2d_key}")

        trunk_password = secrets.token_urlsafe(12)
        accounts = {
            "dialer": trunk_password,
            AGENT: secrets.token_urlsafe(12),
            CALLEE: secrets.token_urlsafe(12),
        }
        self.trunk = SimTrunk(accounts, domain=DOMAIN, on_event=self.say.on_trunk)
        await self.trunk.start()
        say.field(
            "sim trunk",
            f"{self.trunk.host}:{self.trunk.port}/udp, domain {DOMAIN}: a registrar (digest\n"
            "auth) and a stateless proxy that routes by the Request-URI's number",
        )

        self.agent = SimPhone(
            "agent",
            AGENT,
            tone_hz=AGENT_HZ,
            ring_seconds=AGENT_RING_SECONDS,
            on_event=self.say.on_phone,
        )
        self.callee = SimPhone(
            "callee",
            CALLEE,
            tone_hz=CALLEE_HZ,
            answer=opts.scenario,
            ring_seconds=CALLEE_RING_SECONDS,
            hangup_after=opts.talk_seconds,
            on_event=self.say.on_phone,
        )
        for phone in (self.agent, self.callee):
            await phone.start()
        say.field(
            "agent phone",
            f"{AGENT} at 127.0.0.1:{self.agent.sip_port}: answers after "
            f"{AGENT_RING_SECONDS:g} s, sends {AGENT_HZ:g} Hz",
        )
        behaviour = {
            "answer": f"answers after {CALLEE_RING_SECONDS:g} s, sends {CALLEE_HZ:g} Hz,\n"
            f"hangs up after {opts.talk_seconds:g} s",
            "busy": "is busy: answers 486 Busy Here",
            "no-answer": f"rings and never answers (the service gives up after "
            f"{CALLEE_RING_TIMEOUT} s)",
        }[opts.scenario]
        say.field("callee phone", f"{CALLEE} at 127.0.0.1:{self.callee.sip_port}: {behaviour}")

        # the phones register like any phone would; then the service registers itself
        for phone in (self.agent, self.callee):
            await phone.register(self.trunk.address, domain=DOMAIN, password=accounts[phone.user])

        self._tmp = tempfile.TemporaryDirectory(prefix="sipdialer-demo-")
        recordings = opts.recordings.resolve()
        rtp = free_port_range(200)
        for attempt in range(5):  # a free port can be taken before the service binds it
            config = _service_config(
                trunk=self.trunk,
                password=trunk_password,
                sip_port=free_port(tcp_too=True),
                rtp=rtp,
                redis_url=self.redis_url,
                key_prefix=self.key_prefix,
                outbox=Path(self._tmp.name) / "outbox",
                recordings=recordings,
                log_level="INFO" if opts.verbose else "WARNING",
            )
            if self.notifier is None:
                self.notifier = Notifier(config.redis, config.redis.outbox, background=True)
                await self.notifier.start()
            service = Service(config, sink=self.notifier)
            try:
                await service.start()
            except OSError:
                if attempt == 4:
                    raise
                continue
            self.service = service
            break
        assert self.service is not None
        self.base_url = f"http://127.0.0.1:{self.service.http_port}"
        low, high = config.sip.rtp_ports
        say.field(
            "service",
            f"SIP 127.0.0.1:{self.service.transport.port}, RTP ports {low}-{high}, "
            f"HTTP {self.base_url}",
        )
        say.field("recordings", f"{_shown_path(recordings)}/")
        say.print()

        registration = self.service.registration
        assert registration is not None
        deadline = time.monotonic() + 5.0
        while registration.client.state is not RegState.REGISTERED:
            if time.monotonic() > deadline:
                failure = registration.client.last_failure or "no answer"
                raise RuntimeError(f"the service did not register with the trunk: {failure}")
            await asyncio.sleep(0.02)
        await asyncio.sleep(HOLD_BACK)
        say.flush()
        say.print(f"  service registered with the trunk as {registration.client.aor}")

    @property
    def keys(self) -> tuple[str, str]:
        return (
            f"{self.key_prefix}:notifications:cdr",
            f"{self.key_prefix}:notifications:c2d",
        )

    # ---- the call -------------------------------------------------------------------------
    async def _place_call(self) -> dict[str, Any] | None:
        say = self.say
        say.heading("1. Place the call through the HTTP API")
        body = {
            "agent": AGENT,
            "callee": CALLEE,
            "outbound_id": OUTBOUND,
            "call_ref": f"demo-{secrets.token_hex(4)}",
        }
        url = f"{self.base_url}/click2dial/calls"
        say.print(f"  POST {url}")
        say.print("  Content-Type: application/json")
        say.print()
        say.print("    " + json.dumps(body))
        say.print()
        say.t0 = time.time()
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
            elapsed = time.time() - say.t0
            try:
                document = await response.json()
            except (aiohttp.ContentTypeError, ValueError):
                document = {"body": await response.text()}
            version = response.version or aiohttp.HttpVersion11
            say.print(
                f"  HTTP/{version.major}.{version.minor} "
                f"{response.status} {response.reason}   ({elapsed * 1000:.0f} ms)"
            )
            for name in ("Location", "Content-Type"):
                if name in response.headers:
                    say.print(f"  {name}: {response.headers[name]}")
            say.print()
            say.json(document)
        self._check("API", response.status == 201, f"POST answered {response.status}")
        if response.status != 201 or not isinstance(document, dict) or "id" not in document:
            return None
        return document

    async def _follow(self, created: dict[str, Any]) -> None:
        say, opts = self.say, self.options
        assert self.service is not None and self.service.dialer is not None
        call_id = str(created["id"])
        say.heading("2. The call, as it happens")
        say.print("  (the phones' and trunk's SIP steps as they happen; the call's state from")
        say.print(f"   GET /click2dial/calls/{call_id[:8]}… every {POLL_SECONDS * 1000:.0f} ms)")
        say.print()
        seen = 0
        final: dict[str, Any] | None = None
        limit = AGENT_RING_TIMEOUT + CALLEE_RING_TIMEOUT + opts.talk_seconds + 20
        deadline = time.monotonic() + limit
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                async with http.get(f"{self.base_url}/click2dial/calls/{call_id}") as response:
                    view = await response.json()
                timeline = view.get("timeline", [])
                for entry in timeline[seen:]:
                    state = str(entry["state"])
                    text = f"state -> {state}"
                    if state == "ended" and view.get("cdr"):
                        cdr = view["cdr"]
                        text += (
                            f": {cdr['disposition']}, cause {cdr['end_code']} "
                            f"{cdr['cause_name']} ({cdr['end_reason']})"
                        )
                    # the API's times are floored to the millisecond: sort a state after
                    # what happened within that millisecond (what caused it)
                    say.event(_iso_to_unix(str(entry["at"])) + 0.001, "call", text)
                seen = len(timeline)
                say.flush(time.time() - HOLD_BACK)
                if view.get("state") == "ended" and view.get("cdr"):
                    final = view
                    break
                await asyncio.sleep(POLL_SECONDS)
            if final is None:
                say.flush()
                say.print(f"  the call did not end within {limit:.0f} s: hanging it up")
                async with http.delete(f"{self.base_url}/click2dial/calls/{call_id}"):
                    pass
                self._check("call ended", False, f"still running after {limit:.0f} s")
                return
        runner = self.service.dialer.get(call_id)
        if runner is not None:  # media released, recording closed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runner.done.wait(), 5.0)
        await asyncio.sleep(HOLD_BACK)
        say.flush()
        cdr = final["cdr"]
        expected = EXPECTED[opts.scenario]
        got = (str(cdr["disposition"]), int(cdr["end_code"]))
        self._check(
            "outcome",
            got == expected,
            f"{got[0]} / {got[1]} (expected {expected[0]} / {expected[1]})",
        )
        self.final_cdr = cdr
        await self._read_notifications()
        await self._recording(cdr)

    async def _read_notifications(self) -> None:
        say = self.say
        say.heading("3. The notifications, as a client takes them from Redis")
        where = "the stand-in" if self.standin is not None else "Redis"
        say.print(f"  Read back from {where} at {self.redis_url} with BRPOP, like a client.")
        say.print("  Each element is one compact JSON document; shown indented.")
        client = aioredis.from_url(self.redis_url, socket_connect_timeout=2.0)
        try:
            for key, kind in zip(self.keys, ("cdr", "c2d"), strict=True):
                say.print()
                say.print(f"  BRPOP {key} {BRPOP_TIMEOUT}")
                try:
                    reply = await client.brpop([key], timeout=BRPOP_TIMEOUT)
                except (RedisError, OSError) as exc:
                    say.print(f"    failed: {exc}")
                    self._check(f"{kind} notification", False, str(exc))
                    continue
                if reply is None:
                    say.print(f"    (nothing within {BRPOP_TIMEOUT} s)")
                    self._check(f"{kind} notification", False, "not in Redis")
                    continue
                raw = reply[1]
                try:
                    document = json.loads(raw)
                except ValueError:
                    say.print(f"    {raw!r}")
                    self._check(f"{kind} notification", False, "not JSON")
                    continue
                say.print(f"    ({len(raw)} bytes)")
                say.json(document)
                payload = document["payload"] if kind == "cdr" else document["notifications"][0]
                self._check(
                    f"{kind} notification",
                    (payload.get("disposition"), payload.get("end_code"))
                    == EXPECTED[self.options.scenario],
                    f"{payload.get('disposition')} / {payload.get('end_code')}, read from {key}",
                )
        finally:
            await client.aclose()

    async def _recording(self, cdr: dict[str, Any]) -> None:
        say, opts = self.say, self.options
        say.heading("4. The recording")
        ref = cdr.get("recording_url")
        if not ref:
            say.print("  none: the callee never answered, and recording starts when both are")
            say.print("  connected.")
            self._check("recording", opts.scenario != "answer", "no recording")
            return
        path = opts.recordings.resolve() / f"{ref}.wav"
        url = str(
            cdr.get("recording_download_url") or f"{self.base_url}/click2dial/recordings/{ref}"
        )
        say.field("reference", str(ref))
        served = "not served"
        async with aiohttp.ClientSession() as http, http.head(url) as response:
            if response.status == 200:
                served = (
                    f"HEAD -> 200, {response.headers.get('Content-Type')}, "
                    f"{int(response.headers.get('Content-Length', 0)):,} bytes"
                )
            else:
                served = f"HEAD -> {response.status}"
        say.field("URL", f"{url}\n({served})")
        say.field("file", _shown_path(path))
        try:
            report = measure_wav(path)
        except (OSError, ValueError) as exc:
            say.field("measured", f"cannot read it: {exc}")
            self._check("recording", False, str(exc))
            return
        self.report = report
        if opts.plot:
            try:
                png = plot_wav(path, title=f"sipdialer demo recording {ref}: L agent, R callee")
            except PlotUnavailableError as exc:
                self.plot_problem = str(exc)
                say.field("plot", f"not drawn: {exc}")
            else:
                say.field("plot", f"{_shown_path(png)} ({png.stat().st_size // 1024} KB)")
        self._check_recording(report)

    def _check_recording(self, report: WavReport) -> None:
        if len(report.channels) != 2:
            self._check("recording", False, f"{len(report.channels)} channels, expected 2")
            return
        for ch, party, hz in zip(
            report.channels, ("agent", "callee"), (AGENT_HZ, CALLEE_HZ), strict=True
        ):
            near = abs(ch.peak_hz - hz) <= TOLERANCE_HZ and ch.active_seconds > 0
            self._check(
                f"{ch.name.split()[0]} channel",
                near,
                f"{party} tone {ch.peak_hz:.1f} Hz (expected {hz:g} ± {TOLERANCE_HZ:g} Hz)",
            )

    # ---- summary ----------------------------------------------------------------------------
    def _heard(self, phone: SimPhone | None, expect_hz: float, source: str) -> None:
        """What a phone received in the last 2 s of its call, measured (through the relay)."""
        call: PhoneCall | None = phone.calls[-1] if phone is not None and phone.calls else None
        if call is None or call.media is None or call.ended_at is None:
            return
        samples = call.media.heard(since=call.ended_at - 2.0, until=call.ended_at)
        if samples.size < 800 or not np.any(samples):
            self._check(f"{phone.name if phone else '?'} heard", False, "no audio received")
            return
        hz = dominant_frequency(samples, 8000)
        self._check(
            f"{phone.name if phone else '?'} heard",
            abs(hz - expect_hz) <= TOLERANCE_HZ,
            f"{hz:.1f} Hz from the {source} through the relay in its last 2 s "
            f"({call.media.received} RTP packets received)",
        )

    def _summary(self) -> None:
        say, opts = self.say, self.options
        cdr = self.final_cdr
        if opts.scenario == "answer" and cdr is not None:
            self._heard(self.agent, CALLEE_HZ, "callee")
            self._heard(self.callee, AGENT_HZ, "agent")
        say.heading("5. Summary")
        if cdr is not None:
            say.field(
                "outcome",
                f"{cdr['disposition']}, Q.850 cause {cdr['end_code']} ({cdr['cause_name']}), "
                f"end reason {cdr['end_reason']}",
            )
            say.field(
                "duration",
                f"{cdr['duration']} s from dialling the agent to the end, "
                f"{cdr['billsec']} s connected (billsec)",
            )
            say.field(
                "SIP finals",
                f"agent leg {cdr['agent_sip_status'] or 'none'}, "
                f"callee leg {cdr['callee_sip_status'] or 'none'}; "
                f"ended by the {cdr['ended_by']}",
            )
        if self.report is not None:
            for ch in self.report.channels:
                label, _, party = ch.name.partition(" ")
                say.field(
                    f"{label} channel",
                    f"{party.strip('()')}: {ch.peak_hz:.1f} Hz, {ch.rms_dbfs:.1f} dBFS RMS, "
                    f"{ch.active_seconds:.2f} s of sound (measured from the WAV)",
                )
        elif cdr is not None:
            say.field("recording", "none")
        say.print()
        say.print("  checks")
        for check in self.checks:
            mark = "ok  " if check.ok else "FAIL"
            say.print(f"    {mark}  {check.label}: {check.detail}")
        ok = bool(self.checks) and all(c.ok for c in self.checks)
        expected = EXPECTED[opts.scenario]
        if not ok:
            verdict = "NOT OK: see the FAIL lines above; exit code 1"
        elif self.plot_problem is not None:
            verdict = (
                f"OK: the call went as expected ({expected[0]} / {expected[1]}), but the "
                "plot was not drawn; exit code 2"
            )
        else:
            verdict = f"OK: the call went as expected ({expected[0]} / {expected[1]}); exit code 0"
        say.print()
        say.print(f"  {verdict}")

    # ---- keep running -----------------------------------------------------------------------
    async def _keep_running(self, created: dict[str, Any] | None) -> None:
        say = self.say
        assert self.service is not None
        say.heading("Still running: place calls by hand")
        say.print("  The service, the simulated trunk and both phones stay up; the phones answer")
        say.print("  every call the same way. Paste into another terminal:")
        say.print()
        body = json.dumps(
            {"agent": AGENT, "callee": CALLEE, "outbound_id": OUTBOUND, "call_ref": "by-hand-1"}
        )
        if self.standin is not None:
            cli = f"redis-cli -p {self.standin.port}"
        else:
            cli = f"redis-cli -u {self.redis_url}"
        cdr_key, c2d_key = self.keys
        call_id = str(created["id"]) if created else "CALL_ID"
        ref = (self.final_cdr or {}).get("recording_url") or "RECORDING_REF"
        lines = [
            "# place a call",
            f"curl -s -X POST {self.base_url}/click2dial/calls "
            f"-H 'Content-Type: application/json' -d '{body}'",
            "# a call's state, timeline and (once ended) CDR; the id is in the answer above",
            f"curl -s {self.base_url}/click2dial/calls/{call_id}",
            "# recent calls, health",
            f"curl -s {self.base_url}/click2dial/calls",
            f"curl -s {self.base_url}/healthz",
            "# take the notifications like a client (0 = wait for ever)",
            f"{cli} BRPOP {cdr_key} 0",
            f"{cli} BRPOP {c2d_key} 0",
            "# a recording",
            f"curl -s -o call.wav {self.base_url}/click2dial/recordings/{ref}",
        ]
        for line in lines:
            say.print(f"  {line}")
        say.print()
        say.print("  Ctrl-C stops everything. What the phones and trunk do is printed below.")
        say.print()
        say.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        watcher = asyncio.ensure_future(self._watch_calls(skip=created))
        try:
            await stop.wait()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        say.flush()
        say.print()
        say.print("  stopping…")

    async def _watch_calls(self, skip: dict[str, Any] | None) -> None:
        """Keep-running mode: print the state changes of every call placed by hand."""
        assert self.service is not None and self.service.dialer is not None
        dialer = self.service.dialer
        seen: dict[str, int] = {str(skip["id"]): 10**9} if skip else {}
        while True:
            for runner in [*dialer.active.values(), *dialer.recent.values()]:
                done = seen.get(runner.id, 0)
                for entry in runner.view().timeline[done:]:
                    text = f"{runner.id[:8]} state -> {entry.state}"
                    if entry.state == "ended":
                        if runner.cdr is None:
                            # the CDR follows the legs' last answers: print the end with it,
                            # at a later round (printed without it, the outcome was lost)
                            break
                        p = runner.cdr.cdr_payload()
                        text += f": {p['disposition']}, cause {p['end_code']}"
                        if p["recording_url"]:
                            text += f", recording {p['recording_url']}"
                    self.say.event(entry.at, "call", text)
                    done += 1
                seen[runner.id] = done
            self.say.flush(time.time() - HOLD_BACK)
            await asyncio.sleep(POLL_SECONDS)

    # ---- tear-down --------------------------------------------------------------------------
    async def _tear_down(self) -> None:
        steps: list[Callable[[], Any]] = []
        if self.service is not None:
            steps.append(self.service.stop)  # un-REGISTERs: the trunk must still be up
        if self.notifier is not None:
            steps.append(self.notifier.stop)
        for phone in (self.agent, self.callee):
            if phone is not None:
                steps.append(phone.stop)
        if self.trunk is not None:
            steps.append(self.trunk.stop)
        if self.standin is not None:
            steps.append(self.standin.stop)
        for step in steps:
            try:
                await asyncio.wait_for(step(), 5.0)
            except Exception as exc:  # keep stopping the rest
                logging.getLogger("sipdialer.demo").warning("event=demo_stop_failed error=%r", exc)
        if self._tmp is not None:
            self._tmp.cleanup()


async def run_demo(options: DemoOptions, out: TextIO | None = None) -> int:
    """Run the demo, printing to ``out`` (stdout); returns the exit code."""
    configure_logging("INFO" if options.verbose else "WARNING")
    return await Demo(options, out or sys.stdout).run()
