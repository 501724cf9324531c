"""The pure rules of RFC 3263 resolution: NAPTR selection, SRV ordering (RFC 2782 weights,
with a seeded or scripted Random), how long a result is cached. No DNS, no sockets."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sipdialer.aio.errors import AioError
from sipdialer.aio.resolver import (
    MAX_CACHE_SECONDS,
    MIN_CACHE_SECONDS,
    NaptrRecord,
    ResolveError,
    SipResolver,
    SrvRecord,
    cache_seconds,
    order_srv,
    select_naptr,
)
from sipdialer.errors import SipdialerError


class ScriptedRandom(random.Random):
    """``randint`` returns the scripted values in turn and records the bounds asked."""

    def __init__(self, picks: list[int]) -> None:
        super().__init__(0)
        self.picks = list(picks)
        self.bounds: list[tuple[int, int]] = []

    def randint(self, a: int, b: int) -> int:
        self.bounds.append((a, b))
        return self.picks.pop(0)


def srv(target: str, priority: int = 10, weight: int = 10, port: int = 5060) -> SrvRecord:
    return SrvRecord(priority, weight, port, target)


def naptr(
    service: str, order: int = 10, preference: int = 10, *, flags: str = "S", regexp: str = ""
) -> NaptrRecord:
    replacement = {"SIP+D2U": "_sip._udp.x.test", "SIP+D2T": "_sip._tcp.x.test"}.get(
        service.upper(), "_sips._tcp.x.test"
    )
    return NaptrRecord(order, preference, flags, service, regexp, replacement)


# ---- SRV ordering ------------------------------------------------------------------------


def test_srv_priorities_ascend_whatever_the_weights_and_input_order() -> None:
    records = [srv("c", 30, 90), srv("a", 10, 1), srv("b", 20, 50), srv("a2", 10, 0)]
    for seed in range(50):
        ordered = order_srv(records, random.Random(seed))
        assert [r.priority for r in ordered] == [10, 10, 20, 30]
        assert sorted(ordered, key=repr) == sorted(records, key=repr)


def test_srv_weighted_pick_follows_rfc2782_running_sum() -> None:
    a, b, zero = srv("a", weight=10), srv("b", weight=20), srv("zero", weight=0)
    # remaining list is [zero, a, b] (weight 0 first): running sums 0, 10, 30
    rng = ScriptedRandom([15, 0, 5])
    assert order_srv([a, b, zero], rng) == [b, zero, a]
    # the draw is in [0, sum of the weights left]
    assert rng.bounds == [(0, 30), (0, 10), (0, 10)]
    # a draw of 0 takes the first weight-0 record; a draw equal to a running sum takes it
    assert order_srv([a, b, zero], ScriptedRandom([0, 10, 0])) == [zero, a, b]
    assert order_srv([a, b, zero], ScriptedRandom([30, 10, 0])) == [b, a, zero]


def test_srv_first_pick_frequency_matches_the_weights() -> None:
    records = [srv("heavy", weight=60), srv("mid", weight=30), srv("light", weight=10)]
    rng = random.Random(1234)
    firsts = Counter(order_srv(records, rng)[0].target for _ in range(20000))
    # P(first) = weight / (sum + 1) for weights > 0: 60/101, 30/101, 10/101
    assert firsts["heavy"] / 20000 == pytest.approx(60 / 101, abs=0.02)
    assert firsts["mid"] / 20000 == pytest.approx(30 / 101, abs=0.02)
    assert firsts["light"] / 20000 == pytest.approx(10 / 101, abs=0.02)


def test_srv_weight_zero_is_rarely_first_and_all_zero_keeps_the_order() -> None:
    rng = random.Random(99)
    firsts = Counter(
        order_srv([srv("zero", weight=0), srv("ten", weight=10)], rng)[0].target
        for _ in range(20000)
    )
    assert firsts["zero"] / 20000 == pytest.approx(1 / 11, abs=0.015)
    zeros = [srv("p", weight=0), srv("q", weight=0), srv("r", weight=0)]
    assert order_srv(zeros, random.Random(5)) == zeros


def test_srv_order_is_reproducible_with_the_same_seed() -> None:
    records = [srv(f"t{i}", weight=w) for i, w in enumerate((5, 10, 20, 40, 0))]
    orders = {tuple(r.target for r in order_srv(records, random.Random(42))) for _ in range(5)}
    assert len(orders) == 1
    varied = {tuple(r.target for r in order_srv(records, random.Random(s))) for s in range(40)}
    assert len(varied) > 1


# ---- NAPTR selection ---------------------------------------------------------------------


def test_naptr_keeps_the_transport_service_sorted_by_order_then_preference() -> None:
    records = [
        naptr("SIP+D2U", 20, 5),
        naptr("SIPS+D2T", 30, 10),
        naptr("SIP+D2T", 20, 10),
        naptr("sip+d2u", 10, 50),
        naptr("SIP+D2U", 10, 20),
    ]
    udp = select_naptr(records, "udp")
    assert [(r.order, r.preference) for r in udp] == [(10, 20), (10, 50), (20, 5)]
    assert [r.service for r in select_naptr(records, "TCP")] == ["SIP+D2T"]
    tls = select_naptr(records, "tls")
    assert [(r.service, r.replacement) for r in tls] == [("SIPS+D2T", "_sips._tcp.x.test")]


def test_naptr_drops_other_flags_regexps_and_empty_replacements() -> None:
    keep = naptr("SIP+D2U", flags="s")
    records = [
        keep,
        naptr("SIP+D2U", flags="A"),
        naptr("SIP+D2U", flags="U"),
        naptr("SIP+D2U", regexp="!^.*$!sip:x@y!"),
        NaptrRecord(5, 5, "S", "SIP+D2U", "", ""),
        naptr("E2U+sip"),
    ]
    assert select_naptr(records, "udp") == [keep]
    assert select_naptr([], "udp") == []


def test_unknown_transport_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="sctp"):
        select_naptr([], "sctp")


# ---- cache lifetime ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttls", "seconds"),
    [
        ([60, 30, 300], 30.0),
        ([2], 2.0),
        ([0, 60], MIN_CACHE_SECONDS),
        ([86400, 7200], MAX_CACHE_SECONDS),
        ([], MIN_CACHE_SECONDS),
    ],
)
def test_cache_seconds_is_the_smallest_ttl_clamped(ttls: list[int], seconds: float) -> None:
    assert cache_seconds(ttls) == seconds
    assert (MIN_CACHE_SECONDS, MAX_CACHE_SECONDS) == (1.0, 3600.0)


# ---- the resolver's own checks -----------------------------------------------------------


def test_resolve_error_is_an_aio_error() -> None:
    assert issubclass(ResolveError, AioError)
    assert issubclass(AioError, SipdialerError)


@pytest.mark.parametrize("nameserver", [("dns.example.com", 53), ("127.0.0.1", 0)])
def test_nameservers_must_be_ips_with_a_port(nameserver: tuple[str, int]) -> None:
    with pytest.raises(ValueError, match="nameserver"):
        SipResolver([nameserver])
