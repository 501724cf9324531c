"""The registrar for the service's own extensions (RFC 3261 §10.3, digest per RFC 7616 /
RFC 8760): the one state machine for bindings, sans-IO.

Theory of operation: :class:`Registrar` is pure. :meth:`Registrar.handle` takes a REGISTER,
where it came from and ``now`` (Unix time: bindings survive a restart, so their expiry
is wall-clock time), changes the bindings and returns the :class:`Reply` to send.
:meth:`Registrar.lookup` tells the call engine where an extension can be reached:
:attr:`Binding.target` is the address the REGISTER came *from* (received/rport), not the
Contact's host, so a phone behind NAT is reached through the pinhole it opened. The asyncio
side (:mod:`sipdialer.registrar_runtime`) carries requests and answers, persists
:meth:`dump` and sends the keep-alives that :meth:`keepalive_due` asks for.

Decision table for one REGISTER (checked in this order; the first row that applies
answers, and no row but the last changes a binding):

    #  condition                                               → answer
    1  source IP cooling down after too many failures          → 403 Forbidden
    2  no Authorization for our realm                          → 401, SHA-256 + MD5 challenges
    3  credentials unreadable (no username, nonce or opaque)   → 401, fresh challenges
                                                                 (not counted)
    4  challenge not issued to this source IP, nonce not ours  → 401 with stale=true
       (e.g. before a restart), or digest right but nonce stale   (not counted)
    5  the claimed username is backing off and the source IP   → 503 + Retry-After (the rest
       is not one it registered from                             of the back-off; not checked)
    6  digest wrong: unknown extension, wrong password,        → 401, fresh challenges; the
       replayed nonce count                                      failure counts for the source
                                                                 and for the username
    7  authenticated user ≠ user part of the To AOR            → 403 Forbidden
    8  To unreadable; Contact unreadable or not sip:/sips:;    → 400 Bad Request
       ``*`` mixed with other contacts or with Expires ≠ 0
    9  a contact asks for 0 < expires < min_expires            → 423 Interval Too Brief +
                                                                 Min-Expires
    10 a binding it touches has the same Call-ID and a CSeq    → 400 Invalid CSeq number
       ≥ the request's (out of order; nothing applied)
    11 otherwise (no Contact at all is a query)                → 200 OK listing every current
                                                                 contact with ;expires, + Date

An unknown extension and a wrong password take the same rows (2, 5 and 6): same status,
reason and headers, only the nonce and opaque differ, so a scanner (svwar) learns
nothing; unknown usernames back off exactly like extensions.

Throttles (issue 11, point 4). Two limits, because a guesser can rotate source addresses
and a spoofer can borrow the phone's:

* **Challenges are bound to the source.** Each challenge carries ``opaque`` = HMAC(secret,
  source IP, nonce), and the nonce holds its issue time under DigestServer's HMAC and
  lives ``nonce_ttl`` (30 s) only. Credentials whose opaque does not match the IP they
  arrive from are answered like a stale nonce and *never counted* (row 4). A blind
  spoofer (UDP from a forged address) never sees a challenge issued to the address it
  forges, so it cannot make a failure count against the phone's IP or its extension;
  only a guesser that receives answers at its own address can.
* **Per source IP:** ``throttle_failures`` counted failures within ``throttle_window``
  seconds block the IP for ``throttle_cooldown`` seconds (row 1; one
  ``event=registrar_throttled scope=source`` line per lock-out).
* **Per username** (extension or unknown name, whatever the source): from the
  ``extension_failures``-th counted failure on, every further failure makes the username
  back off ``extension_backoff`` · 2^(n − extension_failures) seconds, at most
  ``extension_backoff_max`` (1, 2, 4 … 60 s by default: a guesser rotating addresses gets
  one guess a minute, not 150 in 0.2 s). While it backs off, credentials for it are not
  even checked (row 5) — unless they come from a source IP that phone registered from
  (a live binding's, or the last that authenticated): a correct answer from the phone's
  own address is always accepted, so an attacker elsewhere cannot lock the phone out.
  One ``event=registrar_throttled scope=extension`` line per back-off; failures are
  forgotten ``extension_forget`` seconds after the last one.

Every counted failure logs ``event=auth_failed source=IP port=N transport=… ext=…
reason=…`` (``ext=unknown`` for names that are not extensions): the line fail2ban's
filter in the README matches.

Lifecycle of one binding (keyed by ``+sip.instance``/``reg-id`` when the phone sends them,
else by its Contact URI; either way one Contact URI is one device, so a binding under a new
key with the Contact URI of another replaces it — a phone that re-registers with a new
``+sip.instance`` but the same contact must not get two INVITEs. The cost: two phones of
one extension behind different NATs that report the very same private Contact URI count
as one, the last to register):

    state  event                                             → state  log: event=…
    -      200 to a contact with expires > 0                 → bound  registrar_bound
    bound  same contact, newer CSeq or another Call-ID       → bound  registrar_refreshed
                                                                      (_bound if it moved)
    bound  expires=0, or ``*`` with Expires: 0               → -      registrar_unbound
                                                                      reason=removed
    bound  another key registers the same Contact URI         → -      … reason=replaced
    bound  expires_at passed (:meth:`expire`)                 → -      … reason=expired
    bound  more than max_contacts for the extension (the     → -      … reason=max_contacts
           least recently refreshed goes)
    bound  ``keepalive_max_failures`` keep-alives in a row    → -      … reason=unreachable
           unanswered (UDP bindings only)

Keep-alive decision: every UDP binding gets an OPTIONS to its source address every
``keepalive_interval`` seconds (any answer counts as alive). That keeps NAT pinholes open
whether or not the phone asked for RFC 5626 outbound (we do not claim outbound support,
so a phone never starts STUN keep-alives we would not answer) and it notices dead
phones. TCP bindings live on the phone's connection; the transport answers its CRLF pings.

The domain of the AOR and the Request-URI are not checked: the service is the registrar
for whatever name its phones use for it. Passwords are never logged; neither is a claimed
username that is not an extension (people type passwords into username fields).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from sipdialer.logs import quote_value
from sipdialer.sip.address import Address, parse_address, parse_uri
from sipdialer.sip.digest import DigestError, DigestServer, parse_auth_params, parse_challenge
from sipdialer.sip.errors import SipError, SipParseError
from sipdialer.sip.message import Request, parse_uint

log = logging.getLogger("sipdialer.registrar")

Addr = tuple[str, int]

STORE_VERSION = 1
MAX_TRACKED_SOURCES = 10_000
MAX_TRACKED_USERNAMES = 10_000
"""Usernames with failures remembered (extensions are never forgotten for room)."""
MAX_USERNAME_KEY = 64
"""Characters of a claimed username used to key its back-off."""


@dataclass(frozen=True)
class Binding:
    """One registered contact of an extension. Treat as read-only (it is replaced, not
    changed, on refresh)."""

    extension: str
    """The extension (AOR user) this contact belongs to."""
    contact_uri: str
    """The Contact URI as registered (without header parameters): the Request-URI to use."""
    source: Addr
    """(IP, port) the REGISTER came from: where requests to the phone go."""
    transport: str
    """``"UDP"`` or ``"TCP"``: the transport the REGISTER came over."""
    expires_at: float
    """Unix time the binding lapses."""
    registered_at: float
    """Unix time of the first REGISTER that created it."""
    refreshed_at: float
    """Unix time of the last REGISTER that refreshed it."""
    call_id: str
    """Call-ID of the last REGISTER (RFC 3261 §10.3 ordering)."""
    cseq: int
    """CSeq number of the last REGISTER."""
    key: str
    """Identity within the extension: ``instance:<+sip.instance>;<reg-id>`` or ``uri:…``."""
    user_agent: str = ""
    """The phone's User-Agent header, if any."""
    instance: str | None = None
    """``+sip.instance`` (RFC 5626/5627), as sent (quotes removed)."""
    reg_id: str | None = None
    """``reg-id`` (RFC 5626), if sent."""
    outbound: bool = False
    """The Contact carried ``;ob`` (RFC 5626)."""

    @property
    def target(self) -> Addr:
        """Where to send an INVITE to reach the phone: the REGISTER's source address."""
        return self.source

    def expires_in(self, now: float) -> int:
        """Whole seconds left (0 once lapsed)."""
        return max(0, int(self.expires_at - now + 0.5))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (persistence and the API)."""
        return {
            "extension": self.extension,
            "contact_uri": self.contact_uri,
            "source": [self.source[0], self.source[1]],
            "transport": self.transport,
            "expires_at": self.expires_at,
            "registered_at": self.registered_at,
            "refreshed_at": self.refreshed_at,
            "call_id": self.call_id,
            "cseq": self.cseq,
            "key": self.key,
            "user_agent": self.user_agent,
            "instance": self.instance,
            "reg_id": self.reg_id,
            "outbound": self.outbound,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Binding:
        """Inverse of :meth:`to_dict`; ValueError/KeyError/TypeError on bad input."""
        host, port = data["source"]
        transport = str(data["transport"]).upper()
        if transport not in ("UDP", "TCP") or not 0 < int(port) < 65536:
            raise ValueError("bad transport or port")
        return cls(
            extension=str(data["extension"]),
            contact_uri=str(data["contact_uri"]),
            source=(str(host), int(port)),
            transport=transport,
            expires_at=float(data["expires_at"]),
            registered_at=float(data["registered_at"]),
            refreshed_at=float(data["refreshed_at"]),
            call_id=str(data["call_id"]),
            cseq=int(data["cseq"]),
            key=str(data["key"]),
            user_agent=str(data.get("user_agent") or ""),
            instance=data.get("instance"),
            reg_id=data.get("reg_id"),
            outbound=bool(data.get("outbound", False)),
        )


@dataclass(frozen=True)
class Reply:
    """The answer to one REGISTER: send it with ``ua.answer(event, status, reason,
    extra=list(headers))`` (the endpoint adds Via/From/To+tag/Call-ID/CSeq)."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class _Ping:
    next_at: float
    outstanding: bool = False
    failures: int = 0


@dataclass
class _Source:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


@dataclass
class _Username:
    """Counted failures of one claimed username (extension or not), whatever the source."""

    failures: int = 0
    last_failure: float = 0.0
    backoff_until: float = 0.0


@dataclass(frozen=True)
class _ContactRequest:
    address: Address
    uri: str
    key: str
    expires: int
    instance: str | None
    reg_id: str | None
    outbound: bool


class _Reject(SipError):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.reason)
        self.reply = reply


def contact_key(uri: str, instance: str | None = None, reg_id: str | None = None) -> str:
    """The identity of a contact within its extension (RFC 5627 instance, else the URI
    compared on scheme, user, host, port and transport). SipParseError on a bad URI."""
    if instance:
        return f"instance:{instance};{reg_id or ''}"
    sip = parse_uri(uri)
    default_port = 5061 if sip.scheme == "sips" else 5060
    return (
        f"uri:{sip.scheme}:{sip.user or ''}@{sip.host.lower()}:{sip.port or default_port}"
        f";{sip.transport}"
    )


def _device_of(uri: str) -> str:
    """The device a Contact URI names: its :func:`contact_key` without an instance (the
    URI itself when it does not parse, which a stored binding's always does)."""
    try:
        return contact_key(uri)
    except SipParseError:
        return uri


def _source_label(source: Addr) -> str:
    host, port = source
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Registrar:
    """Bindings and digest authentication for the extensions in ``[extensions]``.

    ``algorithms``: the digest challenges offered (strongest first). Some phones fail on
    any challenge they cannot compute instead of skipping it — libre before 2.x, so
    baresip 1.0 — and need ``("MD5",)``.
    """

    def __init__(
        self,
        extensions: dict[str, str],
        *,
        realm: str,
        secret: bytes,
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
        max_contacts: int = 5,
        throttle_failures: int = 10,
        throttle_window: float = 60.0,
        throttle_cooldown: float = 300.0,
        extension_failures: int = 5,
        extension_backoff: float = 1.0,
        extension_backoff_max: float = 60.0,
        extension_forget: float = 900.0,
        nonce_ttl: float = 30.0,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        extension_algorithms: Mapping[str, tuple[str, ...]] | None = None,
        keepalive_interval: float = 25.0,
        keepalive_max_failures: int = 2,
    ) -> None:
        if not 0 < min_expires <= max_expires:
            raise ValueError("need 0 < min_expires <= max_expires")
        if max_contacts < 1 or throttle_failures < 1 or extension_failures < 1:
            raise ValueError(
                "max_contacts, throttle_failures and extension_failures must be at least 1"
            )
        self.extensions = dict(extensions)
        self.realm = realm
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = min(max(default_expires, min_expires), max_expires)
        self.max_contacts = max_contacts
        self.throttle_failures = throttle_failures
        self.throttle_window = throttle_window
        self.throttle_cooldown = throttle_cooldown
        self.extension_failures = extension_failures
        self.extension_backoff = extension_backoff
        self.extension_backoff_max = extension_backoff_max
        self.extension_forget = extension_forget
        self.keepalive_interval = keepalive_interval
        self.keepalive_max_failures = keepalive_max_failures
        self.algorithms = tuple(algorithms)
        self.extension_algorithms = dict(extension_algorithms or {})
        offered = dict.fromkeys(
            [*algorithms, *(a for algos in self.extension_algorithms.values() for a in algos)]
        )
        self.digest = DigestServer(realm, secret, nonce_ttl=nonce_ttl, algorithms=tuple(offered))
        self._binding_key = hmac.new(
            secret, b"sipdialer registrar source binding", "sha256"
        ).digest()
        self.generation = 0
        """Bumped on every change of the bindings (the runtime persists when it moves)."""
        self.stats: Counter[str] = Counter()
        """Counters: ``register_<status>``, ``auth_failed``, ``throttled`` (row 1),
        ``backing_off`` (row 5), ``foreign_challenge`` (row 4, not issued to the source),
        ``unbound_<why>``."""
        self._bindings: dict[str, dict[str, Binding]] = {}  # ext -> key -> binding (LRU order)
        self._pings: dict[tuple[str, str], _Ping] = {}
        self._sources: dict[str, _Source] = {}
        self._usernames: OrderedDict[str, _Username] = OrderedDict()
        self._last_good_ip: dict[str, str] = {}  # ext -> IP of its last authenticated REGISTER

    # ---- queries ------------------------------------------------------------------------
    def is_extension(self, ext: str) -> bool:
        """True when ``ext`` is configured in ``[extensions]`` (registered or not)."""
        return ext in self.extensions

    def lookup(self, extension: str, now: float) -> list[Binding]:
        """The extension's live bindings, most recently refreshed first ([] if none)."""
        live = [b for b in self._bindings.get(extension, {}).values() if b.expires_at > now]
        newest_first = sorted(live, key=lambda b: b.refreshed_at, reverse=True)
        devices: set[str] = set()
        out: list[Binding] = []
        for binding in newest_first:  # one device, one binding (a store loaded from disk)
            device = _device_of(binding.contact_uri)
            if device not in devices:
                devices.add(device)
                out.append(binding)
        return out

    def bindings(self, now: float) -> list[Binding]:
        """Every live binding, by extension, most recently refreshed first."""
        return [b for ext in sorted(self._bindings) for b in self.lookup(ext, now)]

    def next_timer(self) -> float | None:
        """The earliest time :meth:`expire` or :meth:`keepalive_due` has work, or None."""
        times = [b.expires_at for per in self._bindings.values() for b in per.values()]
        times += [p.next_at for p in self._pings.values() if not p.outstanding]
        return min(times) if times else None

    # ---- REGISTER -----------------------------------------------------------------------
    def handle(self, request: Request, source: Addr, transport: str, now: float) -> Reply:
        """Process one REGISTER (see the decision table) and return the answer."""
        try:
            reply = self._handle(request, source, transport.upper(), now)
        except _Reject as reject:
            reply = reject.reply
        except SipParseError:  # a header the endpoint let through but we cannot read
            reply = Reply(400, "Bad Request")
        self.stats[f"register_{reply.status}"] += 1
        return reply

    def _handle(self, request: Request, source: Addr, transport: str, now: float) -> Reply:
        ip = source[0]
        if self._throttled(ip, now):
            self.stats["throttled"] += 1
            return Reply(403, "Forbidden")
        credentials = self._credentials(request)
        if credentials is None:
            return self._challenge(ip, now, ext=_aor_user(request))
        try:
            _, params = parse_auth_params(credentials)
        except DigestError:
            params = {}
        username, nonce = params.get("username"), params.get("nonce")
        if username is None or not nonce or "opaque" not in params:
            return self._challenge(
                ip, now, ext=_aor_user(request)
            )  # nothing to count a failure against
        if not hmac.compare_digest(params["opaque"], self._opaque(ip, nonce)):
            self.stats["foreign_challenge"] += 1
            return self._challenge(ip, now, stale=True, ext=_aor_user(request))
        wait = self._backoff_left(username, ip, now)
        if wait > 0:
            self.stats["backing_off"] += 1
            return Reply(503, "Service Unavailable", (("Retry-After", str(math.ceil(wait))),))
        result = self.digest.verify(
            credentials,
            method="REGISTER",
            password_for=self.extensions.get,
            now=now,
            request_uri=request.uri,
        )
        if not result.ok:
            if result.stale or result.reason == "invalid nonce":
                return self._challenge(ip, now, stale=True, ext=_aor_user(request))
            self._auth_failed(source, transport, username, result.reason, now)
            return self._challenge(ip, now, ext=_aor_user(request))
        user = result.username or ""
        try:
            aor_user = request.to_addr().sip_uri.user_unescaped
        except SipParseError:
            return Reply(400, "Bad To")
        answered_with = (params.get("algorithm") or "MD5").upper()
        if answered_with not in self._algorithms_for(user):
            # a phone held to SHA-256 must not be let in by a (weaker) MD5 answer
            self._auth_failed(source, transport, username, f"algorithm {answered_with}", now)
            return self._challenge(ip, now, ext=user)
        if aor_user != user:
            log.info(
                "event=registrar_forbidden source=%s ext=%s reason=aor_mismatch",
                _source_label(source),
                user,
            )
            return Reply(403, "Forbidden")
        self._last_good_ip[user] = ip  # the phone's own address from now on
        return self._update(request, user, source, transport, now)

    def _credentials(self, request: Request) -> str | None:
        """The Authorization value meant for our realm (others are ignored), or None."""
        values = request.headers.get_all("Authorization")
        for value in values:
            try:
                scheme, params = parse_auth_params(value)
            except DigestError:
                return value  # ours or not, it is broken: verify() reports it
            if scheme.lower() == "digest" and params.get("realm") == self.realm:
                return value
        return None

    def _algorithms_for(self, ext: str | None) -> tuple[str, ...]:
        """The digest algorithms the phone of ``ext`` is challenged with, in order."""
        if ext is not None and ext in self.extension_algorithms:
            return self.extension_algorithms[ext]
        return self.algorithms

    def _challenge(
        self, ip: str, now: float, *, stale: bool = False, ext: str | None = None
    ) -> Reply:
        """401 with one challenge per algorithm the extension gets (``[registrar]
        algorithms`` or its own), all with one nonce, bound to ``ip``."""
        by_algorithm = {
            parse_challenge(v).algorithm.upper(): v
            for v in self.digest.challenges(now, stale=stale)
        }
        values = [by_algorithm[a] for a in self._algorithms_for(ext) if a in by_algorithm]
        opaque = self._opaque(ip, parse_challenge(values[0]).nonce)
        headers = tuple(("WWW-Authenticate", f'{v}, opaque="{opaque}"') for v in values)
        return Reply(401, "Unauthorized", headers)

    def _opaque(self, ip: str, nonce: str) -> str:
        """HMAC(secret, source IP, nonce): what binds a challenge to the address it was
        sent to (the nonce carries its issue time and DigestServer's own HMAC)."""
        mac = hmac.new(self._binding_key, f"{ip}\0{nonce}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()[:16]).decode("ascii").rstrip("=")

    def _update(
        self, request: Request, ext: str, source: Addr, transport: str, now: float
    ) -> Reply:
        raw = request.headers.values("Contact")
        expires_value = request.headers.get("Expires")
        header_expires = parse_uint(expires_value) if expires_value is not None else None
        call_id = request.call_id
        cseq = request.cseq()[0]
        current = self._bindings.get(ext, {})

        if any(v.strip() == "*" for v in raw):
            if len(raw) != 1 or header_expires != 0:
                raise _Reject(Reply(400, "Bad Request (Contact * needs Expires: 0 alone)"))
            self._check_order(current.values(), call_id, cseq, source)
            for binding in list(current.values()):
                self._remove(binding, "removed", now)
            return self._ok(ext, now)

        contacts = [self._parse_contact(v, header_expires) for v in raw]
        if any(0 < c.expires < self.min_expires for c in contacts):
            raise _Reject(
                Reply(423, "Interval Too Brief", (("Min-Expires", str(self.min_expires)),))
            )
        touched = [current[c.key] for c in contacts if c.key in current]
        self._check_order(touched, call_id, cseq, source)
        user_agent = (request.headers.get("User-Agent") or "")[:200]
        for c in contacts:
            old = current.get(c.key)
            if c.expires == 0:
                if old is not None:
                    self._remove(old, "removed", now)
                continue
            binding = Binding(
                extension=ext,
                contact_uri=c.uri,
                source=source,
                transport=transport,
                expires_at=now + c.expires,
                registered_at=old.registered_at if old is not None else now,
                refreshed_at=now,
                call_id=call_id,
                cseq=cseq,
                key=c.key,
                user_agent=user_agent,
                instance=c.instance,
                reg_id=c.reg_id,
                outbound=c.outbound,
            )
            device = _device_of(c.uri)
            for other in list(self._bindings.get(ext, {}).values()):
                if other.key != c.key and _device_of(other.contact_uri) == device:
                    self._remove(other, "replaced", now)  # the same device under a new key
            self._store(binding, old, now)
        per = self._bindings.get(ext, {})
        while len(per) > self.max_contacts:
            self._remove(next(iter(per.values())), "max_contacts", now)
        return self._ok(ext, now)

    def _parse_contact(self, value: str, header_expires: int | None) -> _ContactRequest:
        try:
            address = parse_address(value)
            instance = address.params.get("+sip.instance")
            if instance is not None:
                instance = instance.strip('"')
            reg_id = address.params.get("reg-id")
            key = contact_key(address.uri, instance, reg_id)
        except SipParseError:
            raise _Reject(Reply(400, "Bad Contact")) from None
        expires: int | None = None
        if "expires" in address.params:
            expires = parse_uint(address.params["expires"] or "")
        if expires is None:
            expires = header_expires if header_expires is not None else self.default_expires
        expires = min(expires, self.max_expires)
        return _ContactRequest(
            address=address,
            uri=address.uri,
            key=key,
            expires=expires,
            instance=instance,
            reg_id=reg_id,
            outbound="ob" in address.sip_uri.params,
        )

    def _check_order(self, bindings: Any, call_id: str, cseq: int, source: Addr) -> None:
        for binding in bindings:
            if binding.call_id == call_id and cseq <= binding.cseq:
                log.info(
                    "event=registrar_out_of_order ext=%s source=%s cseq=%d stored_cseq=%d",
                    binding.extension,
                    _source_label(source),
                    cseq,
                    binding.cseq,
                )
                raise _Reject(Reply(400, "Invalid CSeq number"))

    def _ok(self, ext: str, now: float) -> Reply:
        headers: list[tuple[str, str]] = []
        for b in self.lookup(ext, now):
            value = f"<{b.contact_uri}>;expires={b.expires_in(now)}"
            if b.instance is not None:
                value += f';+sip.instance="{b.instance}"'
            if b.reg_id is not None:
                value += f";reg-id={b.reg_id}"
            headers.append(("Contact", value))
        headers.append(("Date", formatdate(now, usegmt=True)))
        return Reply(200, "OK", tuple(headers))

    # ---- binding changes (every one goes through these two) -----------------------------
    def _store(self, binding: Binding, old: Binding | None, now: float) -> None:
        per = self._bindings.setdefault(binding.extension, {})
        per.pop(binding.key, None)  # re-insert: dict order is least recently refreshed first
        per[binding.key] = binding
        self.generation += 1
        ping_key = (binding.extension, binding.key)
        if binding.transport == "UDP":
            ping = self._pings.get(ping_key)
            if ping is None:
                self._pings[ping_key] = _Ping(next_at=now + self.keepalive_interval)
            else:
                ping.failures = 0  # it just talked to us
        else:
            self._pings.pop(ping_key, None)
        moved = old is None or (old.source, old.transport, old.contact_uri) != (
            binding.source,
            binding.transport,
            binding.contact_uri,
        )
        log.log(
            logging.INFO if moved else logging.DEBUG,
            "event=%s ext=%s contact=%s source=%s transport=%s expires=%d",
            "registrar_bound" if moved else "registrar_refreshed",
            binding.extension,
            quote_value(binding.contact_uri),
            _source_label(binding.source),
            binding.transport,
            binding.expires_in(now),
        )

    def _remove(self, binding: Binding, reason: str, now: float) -> None:
        per = self._bindings.get(binding.extension, {})
        if per.get(binding.key) is not binding:
            return
        del per[binding.key]
        if not per:
            del self._bindings[binding.extension]
        self._pings.pop((binding.extension, binding.key), None)
        self.generation += 1
        self.stats[f"unbound_{reason}"] += 1
        log.info(
            "event=registrar_unbound ext=%s contact=%s source=%s reason=%s",
            binding.extension,
            quote_value(binding.contact_uri),
            _source_label(binding.source),
            reason,
        )

    def expire(self, now: float) -> list[Binding]:
        """Drop lapsed bindings (and forget idle throttle state); returns what was dropped."""
        gone = [b for per in self._bindings.values() for b in per.values() if b.expires_at <= now]
        for binding in gone:
            self._remove(binding, "expired", now)
        for ip in [ip for ip, s in self._sources.items() if self._idle(s, now)]:
            del self._sources[ip]
        for name in [n for n, c in self._usernames.items() if self._forgotten(c, now)]:
            del self._usernames[name]
        return gone

    # ---- keep-alive ---------------------------------------------------------------------
    def keepalive_due(self, now: float) -> list[Binding]:
        """UDP bindings to send an OPTIONS keep-alive to now (each marked outstanding until
        :meth:`keepalive_result`)."""
        due: list[Binding] = []
        for (ext, key), ping in self._pings.items():
            if ping.outstanding or ping.next_at > now:
                continue
            binding = self._bindings.get(ext, {}).get(key)
            if binding is None or binding.expires_at <= now:
                continue
            ping.outstanding = True
            ping.next_at = now + self.keepalive_interval
            due.append(binding)
        return due

    def keepalive_result(self, binding: Binding, ok: bool, now: float) -> Binding | None:
        """Record a keep-alive's outcome (any response: ``ok``; timeout or transport error:
        not). Returns the binding if it was dropped as unreachable."""
        ping = self._pings.get((binding.extension, binding.key))
        if ping is None:
            return None
        ping.outstanding = False
        ping.next_at = max(ping.next_at, now)
        if ok:
            ping.failures = 0
            return None
        ping.failures += 1
        current = self._bindings.get(binding.extension, {}).get(binding.key)
        log.info(
            "event=registrar_keepalive_failed ext=%s contact=%s source=%s failures=%d",
            binding.extension,
            quote_value(binding.contact_uri),
            _source_label(binding.source),
            ping.failures,
        )
        if current is not None and ping.failures >= self.keepalive_max_failures:
            self._remove(current, "unreachable", now)
            return current
        return None

    # ---- throttle -----------------------------------------------------------------------
    def _throttled(self, ip: str, now: float) -> bool:
        state = self._sources.get(ip)
        return state is not None and now < state.blocked_until

    def _auth_failed(
        self, source: Addr, transport: str, username: str, reason: str, now: float
    ) -> None:
        """A counted failure (from a challenge issued to ``source``): log it, count it for
        the source IP and for the username; lock either out once over its limit."""
        self.stats["auth_failed"] += 1
        known = username in self.extensions
        ext = username if known else "unknown"
        ip, port = source
        log.info(
            "event=auth_failed source=%s port=%d transport=%s ext=%s reason=%s",
            quote_value(ip),
            port,
            transport,
            ext,
            quote_value(reason),
        )
        state = self._sources.get(ip)
        if state is None:
            if len(self._sources) >= MAX_TRACKED_SOURCES:
                del self._sources[next(iter(self._sources))]
            state = self._sources[ip] = _Source()
        state.failures.append(now)
        while state.failures and state.failures[0] <= now - self.throttle_window:
            state.failures.popleft()
        if len(state.failures) >= self.throttle_failures:
            state.blocked_until = now + self.throttle_cooldown
            state.failures.clear()
            log.warning(
                "event=registrar_throttled scope=source source=%s failures=%d window=%g "
                "cooldown=%g",
                quote_value(ip),
                self.throttle_failures,
                self.throttle_window,
                self.throttle_cooldown,
            )
        claim = self._username(username)
        if now - claim.last_failure > self.extension_forget:
            claim.failures = 0
        claim.failures += 1
        claim.last_failure = now
        over = claim.failures - self.extension_failures
        if over >= 0:
            backoff = min(self.extension_backoff_max, self.extension_backoff * 2.0 ** min(over, 60))
            claim.backoff_until = now + backoff
            log.warning(
                "event=registrar_throttled scope=extension ext=%s source=%s failures=%d backoff=%g",
                ext,
                quote_value(ip),
                claim.failures,
                backoff,
            )

    def _username(self, username: str) -> _Username:
        """The failure record of a claimed username (created on first use). Room is made
        by forgetting the oldest name that is not an extension."""
        key = username[:MAX_USERNAME_KEY]
        claim = self._usernames.get(key)
        if claim is not None:
            self._usernames.move_to_end(key)
            return claim
        if len(self._usernames) >= MAX_TRACKED_USERNAMES:
            victim = next((k for k in self._usernames if k not in self.extensions), None)
            if victim is not None:
                del self._usernames[victim]
        claim = self._usernames[key] = _Username()
        return claim

    def _backoff_left(self, username: str, ip: str, now: float) -> float:
        """Seconds the username still backs off for this source IP (0: go ahead). Never
        for an IP the extension registered from: its phone is not locked out."""
        claim = self._usernames.get(username[:MAX_USERNAME_KEY])
        if claim is None or now >= claim.backoff_until:
            return 0.0
        if ip in self.phone_ips(username, now):
            return 0.0
        return claim.backoff_until - now

    def phone_ips(self, extension: str, now: float) -> set[str]:
        """The source IPs the extension's phones registered from: every live binding's and
        that of the last REGISTER that authenticated (empty for unknown names)."""
        ips = {b.source[0] for b in self.lookup(extension, now)}
        last = self._last_good_ip.get(extension)
        if last is not None:
            ips.add(last)
        return ips

    def _idle(self, state: _Source, now: float) -> bool:
        recent = state.failures and state.failures[-1] > now - self.throttle_window
        return not recent and now >= state.blocked_until

    def _forgotten(self, claim: _Username, now: float) -> bool:
        return now - claim.last_failure > self.extension_forget and now >= claim.backoff_until

    # ---- persistence --------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        """Every binding as JSON-ready data (:meth:`load` takes it back)."""
        return {
            "version": STORE_VERSION,
            "bindings": [b.to_dict() for per in self._bindings.values() for b in per.values()],
        }

    def load(self, data: dict[str, Any], now: float) -> int:
        """Replace the bindings with those in ``data`` (from :meth:`dump`), dropping lapsed
        ones, ones of extensions no longer configured and unreadable entries. Returns how
        many were restored. Keep-alives start spread over the next interval."""
        if not isinstance(data, dict) or data.get("version") != STORE_VERSION:
            raise ValueError("not a registrar store of a known version")
        entries = data.get("bindings")
        if not isinstance(entries, list):
            raise ValueError("no bindings list")
        self._bindings.clear()
        self._pings.clear()
        restored: list[Binding] = []
        for entry in entries:
            try:
                binding = Binding.from_dict(entry)
            except (KeyError, TypeError, ValueError) as exc:
                log.info("event=registrar_store_entry_skipped error=%s", quote_value(exc))
                continue
            if binding.expires_at <= now or binding.extension not in self.extensions:
                continue
            self._bindings.setdefault(binding.extension, {})[binding.key] = binding
            restored.append(binding)
        for binding in sorted(restored, key=lambda b: b.refreshed_at):
            self._last_good_ip[binding.extension] = binding.source[0]
        udp = [b for b in restored if b.transport == "UDP"]
        for i, binding in enumerate(udp):
            offset = self.keepalive_interval * (i + 1) / (len(udp) + 1)
            self._pings[(binding.extension, binding.key)] = _Ping(next_at=now + offset)
        self.generation += 1
        log.info(
            "event=registrar_loaded bindings=%d skipped=%d",
            len(restored),
            len(entries) - len(restored),
        )
        return len(restored)


def _aor_user(request: Request) -> str | None:
    """The extension a REGISTER is for (its To user), or None when unreadable."""
    try:
        return request.to_addr().sip_uri.user_unescaped
    except SipParseError:
        return None
