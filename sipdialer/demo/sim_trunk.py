"""A simulated SIP trunk: a registrar with digest auth and a stateless proxy, over UDP.

Owns one UDP socket and what a small carrier's edge does with what arrives on it. The
registrar is the service's own sans-IO :class:`~sipdialer.registrar.Registrar` (digest
SHA-256 and MD5 with qop=auth), so REGISTERs from the service and from the simulated
phones get a real 401 challenge. Everything else is proxied **statelessly** (RFC 3261
§16.11): no transaction state, the branch of our Via derived from the request's own
branch, so a retransmission — and the CANCEL or non-2xx ACK of an INVITE — is forwarded
with the same branch as the original.

What happens to a request (first matching row):

    #  request                                          → the trunk
    1  retransmission of one the trunk answered itself  → the same answer again
       (ACK of such an answer: absorbed)
    2  Max-Forwards 0                                   → 483 Too Many Hops
    3  top Route is the trunk                           → that Route removed (loose routing)
    4  a Route is left                                  → forwarded to it
    5  REGISTER for our domain                          → the registrar (401 / 200 / …)
    6  OPTIONS to our domain without a user             → 200 OK (keep-alive)
    7  Request-URI user has no binding / static route   → 404 Not Found
    8  dialog-initial INVITE without valid              → 407 Proxy Authentication Required
       Proxy-Authorization (when authenticating)
    9  for our domain                                   → Request-URI := the user's contact,
                                                         Record-Route added to an initial
                                                         INVITE, forwarded to the contact
   10  for another host (an IP literal: in-dialog)      → forwarded there
   11  another host that is a name                      → 404 (the trunk resolves no names)

Forwarding adds our Via (``rport``) on top, takes one off Max-Forwards and removes
Proxy-Authorization. Requests are stamped ``received``/``rport`` on arrival (RFC 3581).
A response whose top Via is ours loses it and goes to the next Via's received/rport
address; any other response is dropped. The trunk sends no requests of its own.

:class:`TrunkEvent` lines (``on_event``) tell what the trunk did with each REGISTER,
INVITE, CANCEL and BYE; ``stats`` counts everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipdialer.sip.address import SipUri, Via, parse_address, parse_uri, split_commas
from sipdialer.sip.errors import SipParseError
from sipdialer.sip.message import (
    Headers,
    Request,
    Response,
    make_response,
    parse_message,
    parse_uint,
)
from sipdialer.sip.registrar import Registrar
from sipdialer.sip.transaction import MAGIC_COOKIE

__all__ = ["SimTrunk", "TrunkEvent"]

log = logging.getLogger("sipdialer.demo.trunk")

Addr = tuple[str, int]
_ANSWERS_KEPT = 512


@dataclass(frozen=True)
class TrunkEvent:
    """One routing decision of the trunk."""

    at: float
    """Unix time."""
    text: str
    """What the trunk did, one line."""


def _pop_first(message: Request | Response, name: str) -> str | None:
    """Remove the first element of a comma-list header (``Via``, ``Route``) in place."""
    items = list(message.headers)
    for i, (n, v) in enumerate(items):
        if n.lower() == name.lower():
            elements = split_commas(v)
            rest = [e for e in elements[1:] if e]
            kept = [(n, ", ".join(rest))] if rest else []
            message.headers = Headers(items[:i] + kept + items[i + 1 :])
            return elements[0] if elements else None
    return None


def _replace_first(message: Request | Response, name: str, value: str) -> None:
    """Replace the first element of a comma-list header in place."""
    items = list(message.headers)
    for i, (n, v) in enumerate(items):
        if n.lower() == name.lower():
            items[i] = (n, ", ".join([value, *split_commas(v)[1:]]))
            message.headers = Headers(items)
            return


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, trunk: SimTrunk) -> None:
        self.trunk = trunk

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.trunk.receive(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass


class SimTrunk:
    """See the module docstring. ``accounts`` maps user → password (the service's trunk
    account and the phones); ``static_routes`` maps a number to a contact address for
    phones that do not register."""

    def __init__(
        self,
        accounts: dict[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        domain: str = "sim-trunk.invalid",
        authenticate_invites: bool = True,
        on_event: Callable[[TrunkEvent], None] | None = None,
    ) -> None:
        self.accounts = dict(accounts)
        self.host = host
        self.port = port
        self.domain = domain.lower()
        self.authenticate_invites = authenticate_invites
        self.on_event = on_event
        self.registrar = Registrar(
            self.accounts,
            realm=self.domain,
            secret=secrets.token_bytes(32),
            min_expires=1,
            max_expires=3600,
        )
        self.static_routes: dict[str, Addr] = {}
        self.events: list[TrunkEvent] = []
        self.stats: Counter[str] = Counter()
        self._secret = secrets.token_bytes(16)
        self._answered: OrderedDict[tuple[str, str], tuple[bytes, Addr]] = OrderedDict()
        self._transport: asyncio.DatagramTransport | None = None

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            await asyncio.sleep(0)

    @property
    def address(self) -> Addr:
        return (self.host, self.port)

    def add_route(self, user: str, address: Addr) -> None:
        """Route requests for ``user`` to ``address`` without a registration."""
        self.static_routes[user] = address

    def _emit(self, text: str) -> None:
        event = TrunkEvent(time.time(), text)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _send(self, data: bytes, dest: Addr) -> None:
        if self._transport is not None:
            self._transport.sendto(data, dest)

    # ---- input ---------------------------------------------------------------------------
    def receive(self, data: bytes, source: Addr) -> None:
        """One datagram from ``source``. Never raises."""
        try:
            message = parse_message(data)
        except SipParseError:
            self.stats["dropped_unparsable"] += 1
            return
        try:
            if isinstance(message, Response):
                self._on_response(message)
            else:
                self._on_request(message, source)
        except (SipParseError, ValueError) as exc:
            self.stats["dropped_unroutable"] += 1
            log.debug("event=sim_trunk_drop error=%s", exc)

    def _on_response(self, response: Response) -> None:
        top = response.top_via()
        if not self._is_our_via(top):
            self.stats["dropped_foreign_response"] += 1
            return
        _pop_first(response, "Via")
        if "Via" not in response.headers:
            self.stats["dropped_response_for_us"] += 1
            return
        self._send(response.to_bytes(), self._via_address(response.top_via()))
        self.stats["responses_forwarded"] += 1

    def _on_request(self, req: Request, source: Addr) -> None:
        top = req.top_via()
        stamped = top
        if top.host.strip("[]") != source[0]:
            stamped = stamped.with_params(received=source[0])
        if top.wants_rport:
            stamped = stamped.with_params(rport=str(source[1]))
        _replace_first(req, "Via", str(stamped))
        reply_to = self._via_address(stamped)
        branch = top.branch or str(top)

        if req.method == "ACK" and (branch, "INVITE") in self._answered:
            return  # the ACK of an INVITE we answered ourselves (407, 404…)
        again = self._answered.get((branch, req.method))
        if again is not None:
            self._send(*again)
            self.stats["answers_repeated"] += 1
            return

        max_forwards = parse_uint(req.headers.get("Max-Forwards") or "70")
        if max_forwards is None:
            max_forwards = 70
        if max_forwards <= 0:
            self._answer(req, branch, reply_to, 483)
            return

        routes = req.headers.values("Route")
        if routes and self._is_us(parse_address(routes[0]).sip_uri):
            _pop_first(req, "Route")
            routes = routes[1:]
        if routes:
            self._forward(req, branch, self._uri_address(parse_address(routes[0]).sip_uri))
            return

        try:
            uri = parse_uri(req.uri)
        except SipParseError:
            self._answer(req, branch, reply_to, 416)
            return
        if not self._is_us(uri):
            if not _is_ip(uri.host):
                self._answer(req, branch, reply_to, 404, "Not Found (no name resolution)")
                return
            self._forward(req, branch, self._uri_address(uri))
            self._note_in_dialog(req, uri)
            return
        if req.method == "REGISTER":
            self._register(req, branch, reply_to, source)
            return
        if uri.user is None:
            status = 200 if req.method == "OPTIONS" else 404
            if req.method != "ACK":
                self._answer(req, branch, reply_to, status)
            return
        self._route_to_user(req, uri, branch, reply_to)

    # ---- what the trunk itself answers ----------------------------------------------------
    def _answer(
        self,
        req: Request,
        branch: str,
        reply_to: Addr,
        status: int,
        reason: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> Response:
        tag = hashlib.blake2s(branch.encode(), key=self._secret, digest_size=6).hexdigest()
        response = make_response(req, status, reason, to_tag=tag, extra=extra or [])
        response.headers.add("Server", "sipdialer-sim-trunk")
        data = response.to_bytes()
        self._answered[(branch, req.method)] = (data, reply_to)
        while len(self._answered) > _ANSWERS_KEPT:
            self._answered.popitem(last=False)
        self._send(data, reply_to)
        self.stats[f"answered_{status}"] += 1
        return response

    def _register(self, req: Request, branch: str, reply_to: Addr, source: Addr) -> None:
        reply = self.registrar.handle(req, source, "UDP", time.time())
        self._answer(req, branch, reply_to, reply.status, reply.reason, list(reply.headers))
        try:
            user = req.to_addr().sip_uri.user or "?"
        except SipParseError:
            user = "?"
        authorized = "Authorization" in req.headers
        expires = req.headers.get("Expires")
        what = "un-REGISTER" if expires == "0" else "REGISTER"
        if reply.status == 401:
            self._emit(f"{what} {user} -> 401 Unauthorized (digest challenge)")
        elif reply.status == 200 and authorized:
            self._emit(f"{what} {user} (digest ok) -> 200 OK")
        else:
            self._emit(f"{what} {user} -> {reply.status} {reply.reason}")

    def _authenticated_user(self, req: Request) -> str | None:
        for value in req.headers.get_all("Proxy-Authorization"):
            result = self.registrar.digest.verify(
                value,
                method=req.method,
                password_for=self.accounts.get,
                now=time.time(),
                request_uri=req.uri,
            )
            if result.ok:
                return result.username
        return None

    # ---- routing ----------------------------------------------------------------------------
    def _locate(self, user: str) -> tuple[str, Addr] | None:
        """(contact URI, address) for ``user``: its newest binding, else a static route."""
        bindings = self.registrar.lookup(user, time.time())
        if bindings:
            return bindings[0].contact_uri, bindings[0].target
        address = self.static_routes.get(user)
        if address is not None:
            return f"sip:{user}@{address[0]}:{address[1]}", address
        return None

    def _route_to_user(self, req: Request, uri: SipUri, branch: str, reply_to: Addr) -> None:
        user = uri.user or ""
        location = self._locate(user)
        if location is None:
            if req.method != "ACK":
                self._answer(req, branch, reply_to, 404)
                self._emit(f"{req.method} {req.uri} -> 404 Not Found (nobody registered)")
            return
        initial_invite = req.method == "INVITE" and not req.to_addr().tag
        who = ""
        if initial_invite and self.authenticate_invites:
            username = self._authenticated_user(req)
            if username is None:
                now = time.time()
                challenges = self.registrar.digest.challenges(now)
                self._answer(
                    req,
                    branch,
                    reply_to,
                    407,
                    extra=[("Proxy-Authenticate", c) for c in challenges],
                )
                self._emit(f"INVITE {req.uri} -> 407 Proxy Authentication Required")
                return
            who = f" (digest ok: {username})"
        contact, address = location
        req.uri = contact
        if initial_invite:
            req.headers.insert_first("Record-Route", f"<sip:{self.host}:{self.port};lr>")
        self._forward(req, branch, address)
        if req.method in ("INVITE", "CANCEL", "BYE"):
            self._emit(f"{req.method} sip:{user}@{self.domain}{who} -> {address[0]}:{address[1]}")

    def _note_in_dialog(self, req: Request, uri: SipUri) -> None:
        if req.method in ("BYE", "CANCEL") or (req.method == "INVITE" and req.to_addr().tag):
            self._emit(f"{req.method} in dialog -> {uri.host}:{uri.port or 5060}")

    def _forward(self, req: Request, branch: str, dest: Addr) -> None:
        max_forwards = parse_uint(req.headers.get("Max-Forwards") or "70")
        req.headers.set("Max-Forwards", str((70 if max_forwards is None else max_forwards) - 1))
        req.headers.remove("Proxy-Authorization")
        ours = hashlib.blake2s(branch.encode(), key=self._secret, digest_size=10).hexdigest()
        via = f"SIP/2.0/UDP {self.host}:{self.port};branch={MAGIC_COOKIE}{ours};rport"
        req.headers.insert_first("Via", via)
        self._send(req.to_bytes(), dest)
        self.stats["requests_forwarded"] += 1

    # ---- addresses ------------------------------------------------------------------------
    def _is_us(self, uri: SipUri) -> bool:
        if uri.host == self.domain:
            return True
        return uri.host.strip("[]") == self.host and (uri.port or 5060) == self.port

    def _is_our_via(self, via: Via) -> bool:
        return via.host.strip("[]") == self.host and (via.port or 5060) == self.port

    @staticmethod
    def _via_address(via: Via) -> Addr:
        """Where a response to the request with this (stamped) top Via goes (§18.2.2)."""
        host = (via.received or via.host).strip("[]")
        return host, via.rport or via.port or 5060

    @staticmethod
    def _uri_address(uri: SipUri) -> Addr:
        host = (uri.params.get("maddr") or uri.host).strip("[]")
        if not _is_ip(host):
            raise ValueError(f"not an IP address: {host!r}")
        return host, uri.port or 5060
