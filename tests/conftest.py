"""Shared pytest fixtures: real peers (Redis, Kamailio trunk, baresip phones) per test.

Every fixture first checks its programs with ``require_binary`` (fail under CI=true,
skip otherwise), works under ``tmp_path`` and stops every process it started at
teardown, also when the test failed; phones stop before the trunk they register to.
When a test that used peers fails, the last lines of each peer's log are attached to
the report. Tests that use these fixtures get the ``peers`` marker (``-m "not peers"``
runs without them).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import uvloop

from tests.fixtures import ports
from tests.fixtures.baresip import AnswerMode, BaresipPhone
from tests.fixtures.dnsmasq import DnsmasqServer, Zone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.process import PeerStartError
from tests.fixtures.redis import RedisServer
from tests.fixtures.require import require_binary

PEER_FIXTURES = {"redis_server", "kamailio_trunk", "make_trunk", "baresip_phone", "make_phone"}
PEER_FIXTURES.add("dns_server")  # dnsmasq (tests/fixtures/dnsmasq.py)


class Peer(Protocol):
    reserved_ports: list[int]
    log_path: Path

    def stop(self) -> None: ...

    def log_tail(self, n: int = 30) -> str: ...


class PeerStack:
    """Peers started by one test, stopped in reverse order at teardown."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, Peer]] = []

    def add(self, label: str, peer: Peer) -> None:
        self.peers.append((label, peer))

    def start(self, label: str, peer: Any) -> Any:
        """Register ``peer`` (so it is stopped even if start fails), then start it."""
        self.add(label, peer)
        try:
            peer.start()
        except PeerStartError as e:
            pytest.fail(f"{label} did not start:\n{e}", pytrace=False)
        return peer

    def close(self) -> None:
        errors: list[str] = []
        for label, peer in reversed(self.peers):
            try:
                peer.stop()
            except Exception as e:  # keep stopping the others
                errors.append(f"{label}: {e!r}")
            ports.release(peer.reserved_ports)
        self.peers.clear()
        if errors:
            raise RuntimeError("stopping peers failed: " + "; ".join(errors))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PEER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.peers)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed:
        stack: PeerStack | None = getattr(item, "_peer_stack", None)
        for label, peer in stack.peers if stack else []:
            try:
                text = peer.log_tail(30)
            except Exception as e:  # diagnostics must not break the report
                text = f"(log not readable: {e!r})"
            report.sections.append((f"{label} log ({peer.log_path}), last 30 lines", text))
    return report


@pytest.fixture
def peer_stack(request: pytest.FixtureRequest) -> Iterator[PeerStack]:
    """All peers of this test; stopped LIFO at teardown (phones before their trunk)."""
    stack = PeerStack()
    request.node._peer_stack = stack
    yield stack
    stack.close()


@pytest.fixture
def redis_server(tmp_path: Path, peer_stack: PeerStack) -> RedisServer:
    """A started redis-server on a free port (``.url``, ``.stop()``, ``.start()``)."""
    require_binary("redis-server")
    return peer_stack.start("redis-server", RedisServer(tmp_path / "redis"))


MakeTrunk = Callable[..., KamailioTrunk]
MakePhone = Callable[..., BaresipPhone]


@pytest.fixture
def kamailio_trunk(tmp_path: Path, peer_stack: PeerStack) -> MakeTrunk:
    """Factory ``make_trunk(qop=True, port=None, **kw) -> KamailioTrunk`` (started).

    ``tls=True`` (a keyword of KamailioTrunk) adds the TLS listener (``.tls_port``,
    ``.ca_file``).
    """
    require_binary("kamailio")
    require_binary("kamcmd")
    counter = itertools.count(1)

    def make_trunk(qop: bool = True, port: int | None = None, **kw: Any) -> KamailioTrunk:
        n = next(counter)
        trunk = KamailioTrunk(tmp_path / f"trunk{n}", qop=qop, port=port, **kw)
        label = f"kamailio trunk{n} :{trunk.port}"
        if trunk.tls:
            label += f" tls:{trunk.tls_port}"
        return peer_stack.start(label, trunk)

    return make_trunk


@pytest.fixture
def make_trunk(kamailio_trunk: MakeTrunk) -> MakeTrunk:
    """Alias of ``kamailio_trunk``."""
    return kamailio_trunk


@pytest.fixture
def baresip_phone(tmp_path: Path, peer_stack: PeerStack) -> MakePhone:
    """Factory for started baresip phones, registered at the trunk by default::

    make_phone(name, user, trunk, tone_hz=440, answer="auto", tone_seconds=60,
               register=True, **kw) -> BaresipPhone
    """
    require_binary("baresip")
    require_binary("sox")

    def make_phone(
        name: str,
        user: str,
        trunk: KamailioTrunk | tuple[str, int],
        tone_hz: int = 440,
        answer: AnswerMode = "auto",
        tone_seconds: int = 60,
        register: bool = True,
        **kw: Any,
    ) -> BaresipPhone:
        phone = BaresipPhone(
            tmp_path / "phones", name, user, trunk, tone_hz, answer, tone_seconds, **kw
        )
        peer_stack.start(f"baresip {name} ({user})", phone)
        if register:
            try:
                phone.wait_registered(10.0)
            except PeerStartError as e:
                pytest.fail(f"baresip {name} did not register:\n{e}", pytrace=False)
        return phone

    return make_phone


@pytest.fixture
def make_phone(baresip_phone: MakePhone) -> MakePhone:
    """Alias of ``baresip_phone``."""
    return baresip_phone


MakeDns = Callable[..., DnsmasqServer]


@pytest.fixture
def dns_server(tmp_path: Path, peer_stack: PeerStack) -> MakeDns:
    """Factory ``make_dns(zone: Zone, port=None) -> DnsmasqServer`` (started; answers for
    the zone on 127.0.0.1:``.port``, UDP and TCP; ``.restart(zone)`` swaps the records)."""
    binary = require_binary("dnsmasq")
    counter = itertools.count(1)

    def make_dns(zone: Zone, port: int | None = None) -> DnsmasqServer:
        n = next(counter)
        server = DnsmasqServer(tmp_path / f"dns{n}", zone, port, binary=binary)
        return peer_stack.start(f"dnsmasq dns{n} :{server.port}", server)

    return make_dns


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on uvloop, the loop ``sipdialer serve`` runs; tests marked
    ``both_loops`` (adapters that must work on either) run on asyncio's default loop too."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "uvloop": uvloop.new_event_loop
    }
    if item.get_closest_marker("both_loops") is not None:
        factories["asyncio"] = asyncio.new_event_loop
    return factories
