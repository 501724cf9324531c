"""RFC 3263 server location: a configured ``HOST[:PORT]`` and transport in, the ordered
list of :class:`Target` (IP, port, transport) to try in turn out.

Owns the lookup order (RFC 3263 §4), the SRV ordering (RFC 2782) and a cache of results
for the smallest TTL of the records used. The DNS client is dnspython's asyncio stub
resolver (``dns.asyncresolver``): the system's (``/etc/resolv.conf``), or only the
nameservers given. With the system's, A/AAAA go through ``getaddrinfo`` instead, so
``/etc/hosts`` counts (``registrar = localhost:5080`` works as for any program). The
ordering and TTL rules are pure functions (:func:`select_naptr`, :func:`order_srv`,
:func:`cache_seconds`), tested without DNS.

Theory of operation, for a host name (an IP literal needs no DNS and gives one target):

* with a port: A then AAAA of the name, every address, IPv4 first, that port;
* without a port: NAPTR of the name, keeping the records for the transport's service
  (``SIP+D2U`` udp, ``SIP+D2T`` tcp, ``SIPS+D2T`` tls) by order then preference, and
  each one's replacement looked up as SRV; when that finds no SRV records, SRV
  ``_sip._udp`` / ``_sip._tcp`` / ``_sips._tcp`` of the name; when there are no SRV
  records at all, A/AAAA of the name with port 5060 (5061 for TLS);
* SRV records go by ascending priority, in weighted random order within a priority,
  each target expanded to its A then AAAA addresses.

Every :class:`Target` carries the *configured* host as ``name``: RFC 5922 §4 checks the
TLS certificate against the domain the user configured, never against an SRV target.
A DNS timeout at the NAPTR or SRV step ends the lookup at once (the next query would
wait as long); NXDOMAIN, an empty answer or a server failure there moves on to the next
step. Failing lookups raise :class:`ResolveError` naming each record that failed, and
are remembered for :data:`FAILURE_CACHE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.NAPTR import NAPTR
from dns.rdtypes.IN.SRV import SRV

from sipdialer.aio.errors import AioError

__all__ = [
    "FAILURE_CACHE_SECONDS",
    "MAX_CACHE_SECONDS",
    "MIN_CACHE_SECONDS",
    "NaptrRecord",
    "ResolveError",
    "SipResolver",
    "SrvRecord",
    "Target",
    "cache_seconds",
    "order_srv",
    "select_naptr",
]

log = logging.getLogger("sipdialer.resolver")

MIN_CACHE_SECONDS = 1.0
"""A result is kept at least this long, even when a record's TTL is 0."""
MAX_CACHE_SECONDS = 3600.0
"""A result is looked up again after this long at the latest, whatever the TTLs say."""
FAILURE_CACHE_SECONDS = 5.0
"""How long a failed lookup is answered from the cache (the same ResolveError)."""
DEFAULT_LIFETIME = 5.0

#: How long an address from the system's resolver (no TTL given) is kept, in seconds.
SYSTEM_ADDRESS_TTL = 60
"""Seconds one DNS query may take, retries included, before it counts as a timeout."""

_CACHE_PRUNE_SIZE = 256


class ResolveError(AioError):
    """The host could not be turned into any target; the message names the host, the
    transport and each record lookup that failed (and why)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request to, in the order they are to be tried."""

    host: str
    """An IP literal (no brackets) to send to or connect to."""
    port: int
    """The port at that address."""
    transport: str
    """``"UDP"``, ``"TCP"`` or ``"TLS"``."""
    name: str
    """The configured host name (TLS SNI and certificate check), or the IP itself."""


@dataclass(frozen=True, slots=True)
class _TransportRule:
    naptr_service: str
    srv_prefix: str
    default_port: int


_RULES: dict[str, _TransportRule] = {
    "UDP": _TransportRule("SIP+D2U", "_sip._udp", 5060),
    "TCP": _TransportRule("SIP+D2T", "_sip._tcp", 5060),
    "TLS": _TransportRule("SIPS+D2T", "_sips._tcp", 5061),
}


def _transport_key(transport: str) -> str:
    key = transport.strip().upper()
    if key not in _RULES:
        raise ValueError(f"unknown SIP transport {transport!r} (expected udp, tcp or tls)")
    return key


# ---- the pure rules --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    """A NAPTR record's fields (RFC 3403), names without the trailing dot."""

    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str
    """The SRV name to look up next; ``""`` for the root (no replacement)."""


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """An SRV record's fields (RFC 2782), the target without the trailing dot."""

    priority: int
    weight: int
    port: int
    target: str
    """The host to look up; ``""`` for ``.`` (the service is not offered there)."""


def select_naptr(records: Iterable[NaptrRecord], transport: str) -> list[NaptrRecord]:
    """The NAPTR records usable for ``transport``, in the order to follow them.

    Kept: flag ``S`` (the next lookup is SRV), the transport's service (``SIP+D2U``,
    ``SIP+D2T``, ``SIPS+D2T``, case-insensitive), no regexp and a replacement. Sorted by
    order, then preference (RFC 3403 §4.1, RFC 3263 §4.1).
    """
    service = _RULES[_transport_key(transport)].naptr_service
    usable = [
        r
        for r in records
        if r.flags.upper() == "S"
        and r.service.upper() == service
        and not r.regexp
        and r.replacement
    ]
    return sorted(usable, key=lambda r: (r.order, r.preference))


def order_srv(records: Iterable[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """SRV records in the order to try them (RFC 2782, "Usage rules").

    Ascending priority; within one priority, repeatedly: put the records left in a list
    with the weight-0 ones first, draw a number in [0, sum of weights], and take the first
    record whose running sum of weights reaches it. Records of ``.`` must be removed first.
    """
    by_priority: dict[int, list[SrvRecord]] = {}
    for record in records:
        by_priority.setdefault(record.priority, []).append(record)
    ordered: list[SrvRecord] = []
    for priority in sorted(by_priority):
        remaining = sorted(by_priority[priority], key=lambda r: r.weight != 0)
        while remaining:
            pick = rng.randint(0, sum(r.weight for r in remaining))
            running = 0
            for index, record in enumerate(remaining):
                running += record.weight
                if running >= pick:
                    ordered.append(remaining.pop(index))
                    break
    return ordered


def cache_seconds(ttls: Iterable[int]) -> float:
    """How long a result may be reused: the smallest TTL of the records it came from,
    clamped to [MIN_CACHE_SECONDS, MAX_CACHE_SECONDS] (no TTL at all: the minimum)."""
    smallest = min(ttls, default=0)
    return min(max(float(smallest), MIN_CACHE_SECONDS), MAX_CACHE_SECONDS)


def _ip_literal(host: str) -> str | None:
    """``host`` as a normalised IP address (brackets removed), or None for a name."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


# ---- the DNS side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """One DNS query's outcome: its records and their TTL, or why there are none."""

    qname: str
    rdtype: str
    records: tuple[dns.rdata.Rdata, ...] = ()
    ttl: int = 0
    problem: str = ""
    timed_out: bool = False

    def describe(self) -> str:
        return f"{self.rdtype} {self.qname}: {self.problem or 'no records'}"


@dataclass
class _Found:
    """What one resolution collected: targets, the TTLs they rest on, what failed."""

    targets: list[Target] = field(default_factory=list)
    ttls: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    expires: float
    targets: tuple[Target, ...]
    error: str


class SipResolver:
    """Resolves the trunk's host per RFC 3263 and caches each result for its TTL.

    ``nameservers``: ``(IP, port)`` pairs to ask, and only those; empty means the system
    resolver (``/etc/resolv.conf``, read on the first lookup). ``clock`` measures cache
    lifetimes, ``rng`` orders SRV records of equal priority, ``lifetime`` bounds each DNS
    query (seconds, retries included).
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        lifetime: float = DEFAULT_LIFETIME,
    ) -> None:
        checked: list[tuple[str, int]] = []
        for host, port in nameservers:
            address = _ip_literal(host)
            if address is None or not 0 < port < 65536:
                raise ValueError(f"a nameserver is an IP address and a port, not {host!r}:{port}")
            checked.append((address, port))
        self._nameservers = tuple(checked)
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._lifetime = lifetime
        self._dns: dns.asyncresolver.Resolver | None = None
        self._cache: dict[tuple[str, int | None, str], _CacheEntry] = {}

    async def resolve(self, host: str, port: int | None, transport: str) -> list[Target]:
        """The targets for ``host`` (name or IP literal, ``[v6]`` accepted), in the order
        to try them; ``port`` None means "look for the port in DNS".

        Raises ResolveError when there is none (ValueError for an unknown transport).
        """
        key = _transport_key(transport)
        literal = _ip_literal(host)
        if literal is not None:
            chosen = port if port is not None else _RULES[key].default_port
            return [Target(literal, chosen, key, literal)]
        name = host.strip().rstrip(".")
        if not name:
            raise ResolveError(f"cannot resolve an empty host name for {key}")
        cache_key = (name.lower(), port, key)
        cached = self._cache.get(cache_key)
        if cached is not None and self._clock() < cached.expires:
            if cached.error:
                raise ResolveError(cached.error)
            return list(cached.targets)
        try:
            found = await self._locate(name, port, key)
        except ResolveError as exc:
            self._remember(
                cache_key, _CacheEntry(self._clock() + FAILURE_CACHE_SECONDS, (), str(exc))
            )
            log.debug("resolve %s %s: %s", name, key, exc)
            raise
        seconds = cache_seconds(found.ttls)
        self._remember(cache_key, _CacheEntry(self._clock() + seconds, tuple(found.targets), ""))
        log.debug(
            "resolve %s port=%s %s -> %s (cached %.0f s)",
            name,
            port,
            key,
            ", ".join(f"{t.host}:{t.port}" for t in found.targets),
            seconds,
        )
        return found.targets

    # ---------------------------------------------------------------- the steps

    async def _locate(self, name: str, port: int | None, transport: str) -> _Found:
        self._dns_resolver()  # a missing system configuration fails here, once
        found = _Found()
        if port is not None:
            await self._add_addresses(found, name, [(name, port)], transport)
        else:
            rule = _RULES[transport]
            srv_seen = await self._follow_naptr(found, name, transport)
            if not srv_seen:
                direct = f"{rule.srv_prefix}.{name}"
                srv_seen = await self._follow_srv(found, direct, name, transport)
            if not srv_seen:
                await self._add_addresses(found, name, [(name, rule.default_port)], transport)
        if not found.targets:
            raise ResolveError(
                f"cannot resolve {name} for {transport}: " + "; ".join(found.problems)
            )
        return found

    async def _follow_naptr(self, found: _Found, name: str, transport: str) -> bool:
        """Follow the usable NAPTR records of ``name``; True if any led to SRV records."""
        answer = await self._query(name, "NAPTR")
        self._stop_on_timeout(answer, found, name, transport)
        records = [
            NaptrRecord(
                r.order,
                r.preference,
                r.flags.decode(errors="replace"),
                r.service.decode(errors="replace"),
                r.regexp.decode(errors="replace"),
                _text(r.replacement),
            )
            for r in answer.records
            if isinstance(r, NAPTR)
        ]
        selected = select_naptr(records, transport)
        if not records:
            found.problems.append(answer.describe())
        elif not selected:
            service = _RULES[transport].naptr_service
            found.problems.append(f"NAPTR {name}: no {service} record")
        srv_seen = False
        before = len(found.targets)
        for record in selected:
            if await self._follow_srv(found, record.replacement, name, transport):
                srv_seen = True
        if len(found.targets) > before:
            found.ttls.append(answer.ttl)
        return srv_seen

    async def _follow_srv(self, found: _Found, srv_name: str, name: str, transport: str) -> bool:
        """Add the targets of SRV ``srv_name``; True if it has SRV records at all."""
        answer = await self._query(srv_name, "SRV")
        self._stop_on_timeout(answer, found, name, transport)
        records = [
            SrvRecord(r.priority, r.weight, r.port, _text(r.target))
            for r in answer.records
            if isinstance(r, SRV)
        ]
        if not records:
            found.problems.append(answer.describe())
            return False
        offered = [r for r in records if r.target]
        if not offered:
            found.problems.append(f"SRV {srv_name}: the service is not offered (target '.')")
            return True
        ordered = order_srv(offered, self._rng)
        before = len(found.targets)
        await self._add_addresses(found, name, [(r.target, r.port) for r in ordered], transport)
        if len(found.targets) > before:
            found.ttls.append(answer.ttl)
        return True

    async def _add_addresses(
        self, found: _Found, name: str, hosts: Sequence[tuple[str, int]], transport: str
    ) -> None:
        """Add every A then AAAA address of each host in turn (the lookups run at once)."""
        unique = list(dict.fromkeys(host for host, _ in hosts))
        queries = [(host, rdtype) for host in unique for rdtype in ("A", "AAAA")]
        answers = await asyncio.gather(*(self._query(host, t) for host, t in queries))
        by_query = dict(zip(queries, answers, strict=True))
        for host in unique:
            v4, v6 = by_query[(host, "A")], by_query[(host, "AAAA")]
            if not v4.records and not v6.records:
                found.problems.append(f"{v4.describe()}; {v6.describe()}")
            for answer in (v4, v6):
                if answer.records:
                    found.ttls.append(answer.ttl)
        seen = {(t.host, t.port) for t in found.targets}
        for host, port in hosts:
            for answer in (by_query[(host, "A")], by_query[(host, "AAAA")]):
                for record in answer.records:
                    if not isinstance(record, A | AAAA):
                        continue
                    address = str(record.address)
                    if (address, port) not in seen:
                        seen.add((address, port))
                        found.targets.append(Target(address, port, transport, name))

    @staticmethod
    def _stop_on_timeout(answer: _Answer, found: _Found, name: str, transport: str) -> None:
        if answer.timed_out:
            problems = "; ".join([*found.problems, answer.describe()])
            raise ResolveError(f"cannot resolve {name} for {transport}: {problems}")

    # ------------------------------------------------------------------- DNS

    def _dns_resolver(self) -> dns.asyncresolver.Resolver:
        if self._dns is not None:
            return self._dns
        try:
            if self._nameservers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(host, port) for host, port in self._nameservers
                ]
            else:
                resolver = dns.asyncresolver.Resolver()
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            raise ResolveError(f"no DNS resolver configuration: {exc}") from None
        resolver.lifetime = self._lifetime
        resolver.cache = None  # results are cached here, per resolution, for their TTL
        self._dns = resolver
        return resolver

    async def _query(self, qname: str, rdtype: str) -> _Answer:
        """One lookup; never raises (a failure is an ``_Answer`` with a ``problem``)."""
        if not self._nameservers and rdtype in ("A", "AAAA"):
            return await self._system_addresses(qname, rdtype)
        resolver = self._dns_resolver()
        try:
            answer = await resolver.resolve(
                dns.name.from_text(qname), rdtype, search=False, lifetime=self._lifetime
            )
        except dns.resolver.NXDOMAIN:
            return _Answer(qname, rdtype, problem="NXDOMAIN (no such name)")
        except dns.resolver.NoAnswer:
            return _Answer(qname, rdtype, problem="no records")
        except dns.exception.Timeout:
            return _Answer(
                qname, rdtype, problem=f"timeout after {self._lifetime:g} s", timed_out=True
            )
        except dns.resolver.NoNameservers as exc:
            return _Answer(qname, rdtype, problem=f"no nameserver answered ({exc})")
        except Exception as exc:  # any other failure of the DNS client is a failed lookup
            return _Answer(qname, rdtype, problem=f"{type(exc).__name__}: {exc}")
        records = tuple(answer.rrset) if answer.rrset is not None else ()
        if not records:
            return _Answer(qname, rdtype, problem="no records")
        return _Answer(qname, rdtype, records, answer.chaining_result.minimum_ttl)

    async def _system_addresses(self, qname: str, rdtype: str) -> _Answer:
        """A/AAAA through the system's resolver (``getaddrinfo``), so that ``/etc/hosts``
        (``localhost``, names an operator pins) counts as it does for every other program;
        it gives no TTL, so the answer is kept for :data:`SYSTEM_ADDRESS_TTL` seconds."""
        family = socket.AF_INET if rdtype == "A" else socket.AF_INET6
        rdata_type = dns.rdatatype.A if rdtype == "A" else dns.rdatatype.AAAA
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(
                    qname, None, family=family, type=socket.SOCK_DGRAM
                ),
                self._lifetime,
            )
        except TimeoutError:
            return _Answer(
                qname, rdtype, problem=f"timeout after {self._lifetime:g} s", timed_out=True
            )
        except (OSError, UnicodeError) as exc:
            return _Answer(qname, rdtype, problem=f"no address ({exc})")
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        records = tuple(
            dns.rdata.from_text(dns.rdataclass.IN, rdata_type, address) for address in addresses
        )
        if not records:
            return _Answer(qname, rdtype, problem="no records")
        return _Answer(qname, rdtype, records, SYSTEM_ADDRESS_TTL)

    def _remember(self, key: tuple[str, int | None, str], entry: _CacheEntry) -> None:
        self._cache[key] = entry
        if len(self._cache) > _CACHE_PRUNE_SIZE:
            now = self._clock()
            for stale in [k for k, e in self._cache.items() if e.expires <= now]:
                del self._cache[stale]
            while len(self._cache) > _CACHE_PRUNE_SIZE:
                del self._cache[next(iter(self._cache))]


def _text(name: dns.name.Name) -> str:
    """A DNS name as text without the trailing dot (the root becomes ``""``)."""
    return name.to_text(omit_final_dot=True) if name != dns.name.root else ""
