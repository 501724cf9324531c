"""The relay against a hostile neighbour (issue 11, point 1), on real loopback sockets under
uvloop and asyncio's loop: random ports, sockets nobody else can bind, the latch on real
packets (including IPv6 and a dual-stack socket), and the foreign-packet counter."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections.abc import Callable

import pytest

from sipdialer.rtp.latch import LEARN_RUN
from sipdialer.rtp.ports import PortAllocator
from sipdialer.rtp.relay import Bridge, Codec, MediaAddressError
from tests.fixtures import rtp_phones
from tests.fixtures.rtp_phones import PCMU, SILENCE, Scenario, allocator, phone

run = rtp_phones.run  # asyncio's loop and uvloop, requested by name below


# -- ports ---------------------------------------------------------------------------------


def test_ports_are_handed_out_at_random() -> None:
    """Nobody can tell from one call's ports which ports the next calls get."""
    firsts = set()
    for _ in range(20):
        alloc = allocator(1000)
        sock = alloc.allocate("127.0.0.1")
        firsts.add(sock.getsockname()[1] - alloc.low)
        sock.close()
    assert len(firsts) >= 15, firsts  # not always the bottom of the range
    alloc = allocator(1000)
    socks = [alloc.allocate("127.0.0.1") for _ in range(20)]
    got = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    assert all(p % 2 == 0 and alloc.low <= p <= alloc.high for p in got)
    steps = {b - a for a, b in itertools.pairwise(got)}
    assert len(steps) > 10, got  # no stride to predict
    assert got != sorted(got)


def test_a_released_port_rests_before_reuse() -> None:
    alloc = allocator(40)  # 20 even ports: 5 rest
    sock = alloc.allocate("127.0.0.1")
    port = sock.getsockname()[1]
    sock.close()
    alloc.release(port)
    again = []
    for _ in range(alloc.capacity - 5):
        s = alloc.allocate("127.0.0.1")
        again.append(s.getsockname()[1])
        s.close()
    assert port not in again
    assert len(set(again)) == len(again)  # each port once


def test_seeded_choice_is_repeatable() -> None:
    base = random.randrange(20000, 29000, 2)
    seq = []
    for _ in range(2):
        rng = random.Random(7)
        alloc = PortAllocator(base, base + 99, choose=rng.randrange)
        socks = [alloc.allocate("127.0.0.1") for _ in range(5)]
        seq.append([s.getsockname()[1] for s in socks])
        for s in socks:
            s.close()
    assert seq[0] == seq[1]


# -- sockets nobody else can bind -----------------------------------------------------------


@pytest.mark.parametrize("option", ["SO_REUSEADDR", "SO_REUSEPORT"])
def test_a_live_relay_port_cannot_be_bound_again(
    run: Callable[[Scenario], None], option: str
) -> None:
    async def scenario() -> None:
        bridge = await Bridge.open("127.0.0.1", allocator())
        try:
            for leg in (bridge.a, bridge.b):
                assert leg.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
                assert leg.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
                thief = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                thief.setsockopt(socket.SOL_SOCKET, getattr(socket, option), 1)
                try:
                    with pytest.raises(OSError):
                        thief.bind(("127.0.0.1", leg.local_port))
                finally:
                    thief.close()
        finally:
            await bridge.close()

    run(scenario)


# -- the latch on real packets ---------------------------------------------------------------


def test_sprayed_rtp_is_dropped_and_counted(run: Callable[[Scenario], None]) -> None:
    """An in-sequence stream from another 127.0.0.x address, before and after the SDP,
    never takes the leg: the phone's first packet does."""

    async def scenario() -> None:
        bridge = await Bridge.open("127.0.0.1", allocator())
        pa, pb, evil = await phone(), await phone(), await phone("127.0.0.66")
        try:
            bridge.a.set_remote(pa.addr, PCMU)
            bridge.connect()
            port = bridge.b.local_port  # all three send to 127.0.0.1
            for _ in range(3):  # before B's SDP is known: nothing latches
                evil.send(port, SILENCE)
            await asyncio.sleep(0.05)
            assert bridge.b.source is None and bridge.b.packets_foreign == 3
            bridge.b.set_remote(pb.addr, PCMU)
            evil.send(port, SILENCE)
            pb.send(port, b"\x01" * 160)  # the phone: latched at its first packet
            got = await pa.datagram()
            assert got[12:] == b"\x01" * 160
            for _ in range(3 * LEARN_RUN):  # a long, paced run: still foreign
                evil.send(port, SILENCE)
                await asyncio.sleep(0.01)
            await pa.nothing()
            assert bridge.b.source == pb.addr == bridge.b.remote
            assert bridge.b.packets_foreign == 4 + 3 * LEARN_RUN
            assert bridge.b.packets_dropped >= bridge.b.packets_foreign
            pa.send(bridge.a.local_port, b"\x02" * 160)
            assert (await pb.datagram())[12:] == b"\x02" * 160
            await evil.nothing(0.05)  # the attacker never hears anything
        finally:
            await bridge.close()
            for p in (pa, pb, evil):
                p.close()

    run(scenario)


def test_ipv6_leg_latches_onto_the_sdp_address(run: Callable[[Scenario], None]) -> None:
    """On an IPv6 socket the kernel reports sources as (host, port, flowinfo, scope): the
    SDP address, however it is written, must match them."""

    async def scenario() -> None:
        bridge = await Bridge.open("::1", allocator())
        pa, pb = await phone("::1"), await phone("::1")  # each sends to ::1
        try:
            bridge.a.set_remote(("0:0:0:0:0:0:0:1", pa.addr[1]), PCMU)  # long form
            bridge.b.set_remote(("::1", pb.addr[1]), PCMU)
            bridge.connect()
            pa.send(bridge.a.local_port, b"\x03" * 160)
            assert (await pb.datagram())[12:] == b"\x03" * 160
            pb.send(bridge.b.local_port, b"\x04" * 160)
            assert (await pa.datagram())[12:] == b"\x04" * 160
            assert bridge.a.source is not None and bridge.a.source[:2] == ("::1", pa.addr[1])
            assert bridge.a.packets_foreign == bridge.b.packets_foreign == 0
            with pytest.raises(MediaAddressError):
                bridge.a.set_remote(("127.0.0.1", 4000), PCMU)  # ::1 cannot reach IPv4
            with pytest.raises(MediaAddressError):
                bridge.a.set_remote(("fe80::1%lo", 4000), PCMU)  # scoped: not from SDP
        finally:
            await bridge.close()
            pa.close()
            pb.close()

    run(scenario)


def test_dual_stack_socket_takes_ipv4_sdp(run: Callable[[Scenario], None]) -> None:
    """Listening on ``::`` (dual stack), an IPv4 SDP address is reached as ::ffff:a.b.c.d."""

    async def scenario() -> None:
        bridge = await Bridge.open("::", allocator())
        pa, pb = await phone(), await phone()
        try:
            if bridge.a.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
                pytest.fail("this host's IPv6 sockets are v6-only (net.ipv6.bindv6only)")
            bridge.a.set_remote(pa.addr, PCMU)
            bridge.b.set_remote(pb.addr, PCMU)
            assert bridge.a.remote == (f"::ffff:{pa.addr[0]}", pa.addr[1], 0, 0)
            bridge.connect()
            pa.send(bridge.a.local_port, b"\x05" * 160)
            assert (await pb.datagram())[12:] == b"\x05" * 160
            assert bridge.a.latch.exact
        finally:
            await bridge.close()
            pa.close()
            pb.close()

    run(scenario)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("media.example.com", "host name"),
        ("2001:db8::1", "other family"),
        ("224.0.1.9", "multicast"),
        ("", "empty"),
    ],
)
def test_unusable_addresses_raise_and_change_nothing(
    run: Callable[[Scenario], None], host: str, reason: str
) -> None:
    async def scenario() -> None:
        bridge = await Bridge.open("127.0.0.1", allocator())
        try:
            bridge.b.set_remote(("127.0.0.1", 4000), PCMU)
            with pytest.raises(MediaAddressError):
                bridge.b.set_remote((host, 4002), Codec("PCMA", 8))
            assert bridge.b.remote == ("127.0.0.1", 4000) and bridge.b.codec == PCMU
            # the null address is hold, not an error: the latch and remote stay
            bridge.b.set_remote(("0.0.0.0", 4002), PCMU)
            bridge.b.set_remote(("::", 4002), PCMU)
            assert bridge.b.remote == ("127.0.0.1", 4000)
            assert bridge.b.media_address(("::ffff:127.0.0.9", 4004)) == ("127.0.0.9", 4004)
            with pytest.raises(MediaAddressError):
                bridge.b.media_address(("127.0.0.1", 70000))
        finally:
            await bridge.close()

    run(scenario)


def test_a_leg_on_hold_from_the_start_still_learns_its_sender(
    run: Callable[[Scenario], None],
) -> None:
    """SDP with the null address (RFC 2543 hold) names nowhere to send, but the party may
    send (music on hold): a run from it is relayed, while we send it nothing."""

    async def scenario() -> None:
        bridge = await Bridge.open("127.0.0.1", allocator())
        pa, pb = await phone(), await phone()
        try:
            bridge.a.set_remote(pa.addr, PCMU)
            bridge.b.set_remote(("0.0.0.0", 4000), PCMU)
            bridge.b.hold(True)
            bridge.connect()
            assert bridge.b.remote is None
            for _ in range(LEARN_RUN):
                pb.send(bridge.b.local_port, SILENCE)
                await asyncio.sleep(0.02)
            await pa.datagram()
            assert bridge.b.source == pb.addr
            pa.send(bridge.a.local_port, SILENCE)
            await pb.nothing()  # held: nothing sent to B
        finally:
            await bridge.close()
            pa.close()
            pb.close()

    run(scenario)
