"""RFC 3263 resolution against a real DNS server (dnsmasq), under asyncio's loop and uvloop.

Each test serves its own ``trunk.test`` zone with the ``dns_server`` fixture and asks a
``SipResolver`` that knows only that server. dnsmasq logs every query (``--log-queries``),
so a test can also check which lookups were made. Cache lifetimes use a fake clock.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from sipdialer.aio.resolver import (
    FAILURE_CACHE_SECONDS,
    ResolveError,
    SipResolver,
    Target,
)
from tests.conftest import MakeDns
from tests.fixtures import ports
from tests.fixtures.dnsmasq import Address, DnsmasqServer, Naptr, Srv, Zone

Scenario = Callable[[], Coroutine[Any, Any, None]]
Run = Callable[[Scenario], None]

# the lab recipe's zone: NAPTR udp/tcp/tls, a dead priority-10 UDP target, 5080 behind it
LAB = (
    Address("trunk.test", "127.0.0.1"),
    Address("dead.trunk.test", "127.0.0.2"),
    Srv("_sip._udp.trunk.test", "dead.trunk.test", 5090, priority=10),
    Srv("_sip._udp.trunk.test", "trunk.test", 5080, priority=20),
    Srv("_sip._tcp.trunk.test", "trunk.test", 5080),
    Srv("_sips._tcp.trunk.test", "trunk.test", 5081),
    Naptr("trunk.test", 10, 10, "S", "SIP+D2U", replacement="_sip._udp.trunk.test"),
    Naptr("trunk.test", 20, 10, "S", "SIP+D2T", replacement="_sip._tcp.trunk.test"),
    Naptr("trunk.test", 30, 10, "S", "SIPS+D2T", replacement="_sips._tcp.trunk.test"),
)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run a scenario coroutine on a fresh loop of the given kind."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    def runner(scenario: Scenario) -> None:
        with asyncio.Runner(loop_factory=factory) as r:
            r.run(asyncio.wait_for(scenario(), 20))

    return runner


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queries(server: DnsmasqServer) -> list[str]:
    """``TYPE name`` of every query dnsmasq logged, in order, across restarts (without the
    fixture's own SOA readiness probes)."""
    found = re.findall(r"query\[(\w+)\] (\S+) from", server.log_text())
    return [f"{rdtype} {name}" for rdtype, name in found if rdtype != "SOA"]


def resolver(server: DnsmasqServer, **kw: Any) -> SipResolver:
    return SipResolver([server.nameserver], **kw)


def targets(
    *items: tuple[str, int], transport: str = "UDP", name: str = "trunk.test"
) -> list[Target]:
    return [Target(host, port, transport, name) for host, port in items]


def test_ip_literals_need_no_dns(run: Run) -> None:
    # nobody answers on this port: any DNS query would end in a ResolveError
    silent = ports.free_port("udp")
    r = SipResolver([("127.0.0.1", silent)], lifetime=0.5)

    async def scenario() -> None:
        assert await r.resolve("192.0.2.10", 5080, "udp") == [
            Target("192.0.2.10", 5080, "UDP", "192.0.2.10")
        ]
        assert await r.resolve("192.0.2.10", None, "tcp") == [
            Target("192.0.2.10", 5060, "TCP", "192.0.2.10")
        ]
        assert await r.resolve("::1", None, "tls") == [Target("::1", 5061, "TLS", "::1")]
        assert await r.resolve("[2001:db8::1]", 5070, "UDP") == [
            Target("2001:db8::1", 5070, "UDP", "2001:db8::1")
        ]

    try:
        run(scenario)
    finally:
        ports.release([silent])


def test_name_with_port_is_a_then_aaaa_only(run: Run, dns_server: MakeDns) -> None:
    zone = Zone(
        (
            *LAB,
            Address("trunk.test", "::1"),
            Address("trunk.test", "127.0.0.3"),
        )
    )
    server = dns_server(zone)

    async def scenario() -> None:
        got = await resolver(server).resolve("trunk.test", 5999, "tcp")
        # the A records first, then the AAAA; inside one RRset the order is the server's
        # (dnsmasq rotates it from answer to answer), so the two A records in any order
        a_records = targets(("127.0.0.1", 5999), ("127.0.0.3", 5999), transport="TCP")
        assert sorted(got[:2], key=lambda t: t.host) == a_records
        assert got[2:] == targets(("::1", 5999), transport="TCP")

    run(scenario)
    asked = queries(server)
    assert sorted(asked[-2:]) == ["A trunk.test", "AAAA trunk.test"]
    assert not any(q.startswith(("NAPTR", "SRV")) for q in asked), asked


def test_naptr_then_srv_priorities_first_target_first(run: Run, dns_server: MakeDns) -> None:
    server = dns_server(Zone(LAB))

    async def scenario() -> None:
        for seed in range(5):
            got = await resolver(server, rng=random.Random(seed)).resolve("trunk.test", None, "udp")
            assert got == targets(("127.0.0.2", 5090), ("127.0.0.1", 5080))

    run(scenario)
    asked = queries(server)
    assert asked[:2] == ["NAPTR trunk.test", "SRV _sip._udp.trunk.test"], asked
    assert "SRV _sip._tcp.trunk.test" not in asked


def test_naptr_replacement_names_the_srv_to_follow(run: Run, dns_server: MakeDns) -> None:
    zone = Zone(
        (
            Address("edge1.trunk.test", "127.0.0.5"),
            Address("edge2.trunk.test", "127.0.0.6"),
            Srv("_sip._udp.trunk.test", "edge1.trunk.test", 5060),
            Srv("_sipedge._udp.trunk.test", "edge2.trunk.test", 5062),
            Naptr("trunk.test", 10, 10, "S", "SIP+D2U", replacement="_sipedge._udp.trunk.test"),
        )
    )
    server = dns_server(zone)

    async def scenario() -> None:
        got = await resolver(server).resolve("trunk.test", None, "UDP")
        assert got == targets(("127.0.0.6", 5062))

    run(scenario)


def test_srv_without_naptr(run: Run, dns_server: MakeDns) -> None:
    zone = Zone(
        (
            Address("a.trunk.test", "127.0.0.11"),
            Address("a.trunk.test", "::1"),
            Address("b.trunk.test", "127.0.0.12"),
            Address("trunk.test", "127.0.0.1"),
            Srv("_sip._tcp.trunk.test", "b.trunk.test", 5072, priority=5),
            Srv("_sip._tcp.trunk.test", "a.trunk.test", 5071, priority=1),
        )
    )
    server = dns_server(zone)

    async def scenario() -> None:
        got = await resolver(server).resolve("trunk.test", None, "tcp")
        assert got == targets(
            ("127.0.0.11", 5071), ("::1", 5071), ("127.0.0.12", 5072), transport="TCP"
        )

    run(scenario)
    assert queries(server)[:2] == ["NAPTR trunk.test", "SRV _sip._tcp.trunk.test"]


def test_naptr_without_the_transport_falls_back_to_srv(run: Run, dns_server: MakeDns) -> None:
    zone = Zone(
        (
            Address("trunk.test", "127.0.0.1"),
            Srv("_sip._tcp.trunk.test", "trunk.test", 5080),
            Naptr("trunk.test", 10, 10, "S", "SIP+D2U", replacement="_sip._udp.trunk.test"),
        )
    )
    server = dns_server(zone)

    async def scenario() -> None:
        got = await resolver(server).resolve("trunk.test", None, "tcp")
        assert got == targets(("127.0.0.1", 5080), transport="TCP")

    run(scenario)
    assert "SRV _sip._udp.trunk.test" not in queries(server)


@pytest.mark.parametrize(("transport", "port"), [("udp", 5060), ("tcp", 5060), ("tls", 5061)])
def test_plain_a_record_gets_the_default_port(
    run: Run, dns_server: MakeDns, transport: str, port: int
) -> None:
    server = dns_server(Zone((Address("trunk.test", "127.0.0.1"),)))

    async def scenario() -> None:
        got = await resolver(server).resolve("trunk.test", None, transport)
        assert got == targets(("127.0.0.1", port), transport=transport.upper())

    run(scenario)


def test_tls_uses_sips_tcp_and_keeps_the_configured_name(run: Run, dns_server: MakeDns) -> None:
    server = dns_server(Zone(LAB))

    async def scenario() -> None:
        got = await resolver(server).resolve("trunk.test", None, "TLS")
        assert got == targets(("127.0.0.1", 5081), transport="TLS")

    run(scenario)
    assert queries(server)[:2] == ["NAPTR trunk.test", "SRV _sips._tcp.trunk.test"]


def test_srv_target_name_is_never_the_certificate_name(run: Run, dns_server: MakeDns) -> None:
    zone = Zone(
        (
            Address("edge.trunk.test", "127.0.0.9"),
            Srv("_sips._tcp.trunk.test", "edge.trunk.test", 5091),
        )
    )
    server = dns_server(zone)

    async def scenario() -> None:
        got = await resolver(server).resolve("TRUNK.test.", None, "tls")
        assert got == [Target("127.0.0.9", 5091, "TLS", "TRUNK.test")]

    run(scenario)


def test_nxdomain_is_a_resolve_error_naming_the_records(run: Run, dns_server: MakeDns) -> None:
    server = dns_server(Zone(LAB))

    async def scenario() -> None:
        r = resolver(server)
        with pytest.raises(ResolveError) as caught:
            await r.resolve("nothere.trunk.test", None, "udp")
        message = str(caught.value)
        assert "nothere.trunk.test" in message and "UDP" in message
        for record in (
            "NAPTR nothere.trunk.test",
            "SRV _sip._udp.nothere.trunk.test",
            "A nothere.trunk.test",
            "AAAA nothere.trunk.test",
        ):
            assert f"{record}: NXDOMAIN" in message
        with pytest.raises(ResolveError, match=r"A nothere\.trunk\.test: NXDOMAIN"):
            await r.resolve("nothere.trunk.test", 5060, "udp")
        # outside the zone dnsmasq answers REFUSED: a ResolveError as well
        with pytest.raises(ResolveError, match=r"example\.com.*REFUSED"):
            await r.resolve("example.com", 5060, "tcp")

    run(scenario)


def test_srv_of_dot_means_not_offered_without_a_fallback(run: Run, dns_server: MakeDns) -> None:
    zone = Zone((Address("trunk.test", "127.0.0.1"), Srv("_sip._udp.trunk.test", ".", 0)))
    server = dns_server(zone)

    async def scenario() -> None:
        with pytest.raises(ResolveError, match=r"_sip\._udp\.trunk\.test.*not offered"):
            await resolver(server).resolve("trunk.test", None, "udp")

    run(scenario)
    assert "A trunk.test" not in queries(server)


def test_cached_for_the_smallest_ttl_then_resolved_again(run: Run, dns_server: MakeDns) -> None:
    def zone(address: str) -> Zone:
        # SRV and NAPTR have the zone's 60 s; the target's address only 2 s
        return Zone(
            (
                Address("edge.trunk.test", address, ttl=2),
                Srv("_sip._udp.trunk.test", "edge.trunk.test", 5080),
            ),
            ttl=60,
        )

    server = dns_server(zone("127.0.0.21"))
    clock = FakeClock()
    r = resolver(server, clock=clock)
    first = targets(("127.0.0.21", 5080))

    async def before_change() -> None:
        assert await r.resolve("trunk.test", None, "udp") == first

    async def cached() -> None:
        clock.now += 1.9
        assert await r.resolve("trunk.test", None, "udp") == first

    async def expired() -> None:
        clock.now += 0.2
        assert await r.resolve("trunk.test", None, "udp") == targets(("127.0.0.22", 5080))

    run(before_change)
    asked = len(queries(server))
    assert asked >= 4  # NAPTR, SRV, A, AAAA
    server.restart(zone("127.0.0.22"))
    run(cached)
    assert len(queries(server)) == asked  # answered from the cache: no query at all
    run(expired)
    assert len(queries(server)) > asked


def test_failures_are_cached_only_briefly(run: Run, dns_server: MakeDns) -> None:
    server = dns_server(Zone((Address("trunk.test", "127.0.0.1"),)))
    clock = FakeClock()
    r = resolver(server, clock=clock)

    async def fails() -> None:
        with pytest.raises(ResolveError, match=r"late\.trunk\.test"):
            await r.resolve("late.trunk.test", 5060, "udp")

    async def later() -> None:
        assert await r.resolve("late.trunk.test", 5060, "udp") == targets(
            ("127.0.0.31", 5060), name="late.trunk.test"
        )

    run(fails)
    asked = len(queries(server))
    server.restart(Zone((Address("late.trunk.test", "127.0.0.31"),)))
    clock.now += FAILURE_CACHE_SECONDS - 0.5
    run(fails)  # the failure is still remembered...
    assert len(queries(server)) == asked  # ... without asking the restarted server
    clock.now += 0.6
    run(later)


def test_real_short_ttl_expires(run: Run, dns_server: MakeDns) -> None:
    server = dns_server(Zone((Address("trunk.test", "127.0.0.41"),), ttl=2))
    changed = Zone((Address("trunk.test", "127.0.0.42"),), ttl=2)
    r = resolver(server)  # the real monotonic clock

    async def scenario() -> None:
        assert await r.resolve("trunk.test", 5060, "udp") == targets(("127.0.0.41", 5060))
        resolved_at = time.monotonic()
        await asyncio.to_thread(server.restart, changed)
        assert time.monotonic() - resolved_at < 1.5, "dnsmasq took too long to restart"
        assert await r.resolve("trunk.test", 5060, "udp") == targets(("127.0.0.41", 5060))
        await asyncio.sleep(resolved_at + 2.1 - time.monotonic())
        assert await r.resolve("trunk.test", 5060, "udp") == targets(("127.0.0.42", 5060))

    run(scenario)


def test_a_silent_server_is_a_timeout_error(run: Run) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    r = SipResolver([silent.getsockname()], lifetime=0.5)

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(ResolveError, match=r"NAPTR trunk\.test: timeout"):
            await r.resolve("trunk.test", None, "udp")
        assert time.monotonic() - started < 2.0  # no further steps after a timeout
        with pytest.raises(ResolveError, match=r"A trunk\.test: timeout"):
            await r.resolve("trunk.test", 5060, "udp")

    try:
        run(scenario)
    finally:
        silent.close()


def test_large_answers_come_over_tcp(run: Run, dns_server: MakeDns) -> None:
    many = [f"127.0.1.{i}" for i in range(1, 81)]
    server = dns_server(Zone(tuple(Address("big.trunk.test", ip) for ip in many)))

    async def scenario() -> None:
        got = await resolver(server).resolve("big.trunk.test", 5060, "udp")
        assert sorted(t.host for t in got) == sorted(many)

    run(scenario)
    # the UDP answer was truncated; dnsmasq answers the TCP retry in a child process
    answered_by = re.findall(r"dnsmasq\[(\d+)\]: query\[A\] big\.trunk\.test", server.log_text())
    assert len(answered_by) == 2 and len(set(answered_by)) == 2, server.log_text()
