"""The asyncio side of the trunk registration: carries the pure
:class:`~sipdialer.sip.registration.RegistrationClient`'s requests to the trunk's working
target (:class:`~sipdialer.aio.trunk_route.TrunkRoute`), feeds it responses, timeouts and
transport errors, arms its one timer, keeps the flow to the trunk alive and logs each
state change once.

Failover (RFC 3263 §4.3): a REGISTER whose target does not answer (timeout, ICMP refused,
TCP/TLS connect or certificate failure) is sent afresh to the next target of the round;
when every target failed the client backs off, and its retry starts a new round (the
targets are re-resolved once their DNS TTL has passed). A name that does not resolve is
one log line and the same back-off, never an exception.

Keep-alive: every ``[trunk] keepalive`` seconds while registered, a CRLF ping on a TCP/TLS
flow (RFC 5626 §3.5.1; an unanswered ping closes the flow) or an OPTIONS over UDP (keeps a
NAT binding open and notices a dead trunk). A flow to the trunk that drops is
re-established at once with a fresh REGISTER, so the trunk can reach us again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine
from typing import Any

from sipdialer.aio.resolver import Target
from sipdialer.aio.transport import SipTransport
from sipdialer.aio.trunk_route import TrunkRoute
from sipdialer.aio.useragent import UserAgent
from sipdialer.config import Config
from sipdialer.logs import quote_value
from sipdialer.sip.events import Event, ResponseReceived, TransactionTimeout, TransportError
from sipdialer.sip.message import Headers, Request
from sipdialer.sip.registration import RegistrationClient, RegState

log = logging.getLogger("sipdialer.registration")


class TrunkRegistration:
    """Keeps :class:`RegistrationClient` talking to the trunk through the user agent."""

    def __init__(
        self, config: Config, ua: UserAgent, transport: SipTransport, route: TrunkRoute
    ) -> None:
        trunk = config.trunk
        self.config = config
        self.ua = ua
        self.transport = transport
        self.route = route
        self.dest: Target | None = None
        self.proto = trunk.transport.upper()
        self.keepalive_interval = trunk.keepalive
        host = config.sip.advertised_host
        tp = "" if self.proto == "UDP" else f";transport={self.proto.lower()}"
        self.client = RegistrationClient(
            domain=trunk.domain,
            username=trunk.username,
            password=trunk.password,
            contact_uri=f"sip:{trunk.username}@{host}:{transport.port}{tp}",
            expires=trunk.expires,
            registrar_label=trunk.label,
        )
        self._timer: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._last_state = self.client.state
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._options_cseq = 0
        self._options_call_id = secrets.token_hex(12)

    def start(self) -> None:
        """Resolve the trunk and send the first REGISTER (in a task: never blocks start-up)."""
        self._spawn(self._new_round(self.client.start(self.transport.now())))

    async def stop(self, timeout: float = 2.0) -> None:
        for handle in (self._timer, self._keepalive):
            if handle:
                handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        request = self.client.stop(self.transport.now())
        self._report()
        if request is None or self.dest is None:
            self._stopped.set()
            return
        self._send(request)
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            log.info("event=unregister_timeout")

    def flow_lost(self, transport: str, addr: tuple[str, int]) -> None:
        """The transport lost a TCP/TLS connection we opened; re-register over a new one when
        it was the flow to the trunk."""
        dest = self.dest
        if dest is None or (dest.transport, (dest.host, dest.port)) != (transport, addr):
            return
        if self.client.state in (RegState.REGISTERED, RegState.REGISTERING):
            log.info("event=trunk_flow_lost target=%s:%d/%s", *addr, transport.lower())
            self._send(self.client.new_flow(self.transport.now()))

    # ---- sending ----------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _new_round(self, request: Request) -> None:
        """(Re-)resolve the trunk, then send ``request`` to its first working target."""
        target = await self.route.begin_round()
        if target is None:
            self.client.on_transport_error(
                self.transport.now(), f"cannot resolve {self.route.label}"
            )
            self._rearm()
            return
        self.dest = target
        self._send(request)

    def _send(self, request: Request | None) -> None:
        if request is not None and self.dest is not None:
            if self.route.route_header is not None:
                request.headers.insert_first("Route", self.route.route_header)
            dest = self.dest
            self.ua.send_request(request, (dest.host, dest.port), dest.transport, self._on_event)
        self._rearm()

    def _on_event(self, event: Event) -> None:
        now = self.transport.now()
        if isinstance(event, ResponseReceived):
            if self.dest is not None:
                self.route.confirm(self.dest)
            self._send(self.client.on_response(event.response, now))
            return
        if not isinstance(event, TransactionTimeout | TransportError):
            return
        failing = self.client.state in (RegState.REGISTERING, RegState.REGISTERED)
        nxt = self.route.fail_over(self.dest) if failing else None
        if nxt is not None:
            self.dest = nxt
            self._send(self.client.new_flow(now))
        elif isinstance(event, TransactionTimeout):
            self.client.on_timeout(now)
            self._rearm()
        else:
            self.client.on_transport_error(now, "cannot reach the registrar")
            self._rearm()  # re-arms the back-off timer and logs the state change

    def _rearm(self) -> None:
        if self._timer:
            self._timer.cancel()
            self._timer = None
        at = self.client.get_timer()
        if at is not None:
            self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)
        self._report()
        self._arm_keepalive()

    def _on_timer(self) -> None:
        self._timer = None
        request = self.client.handle_timer(self.transport.now())
        if request is not None:
            # a refresh or a retry after the back-off starts a new round: the targets are
            # re-resolved once their DNS TTL has passed (the current one is kept if listed)
            self._spawn(self._new_round(request))
        else:
            self._rearm()

    # ---- keep-alive -------------------------------------------------------------------------
    def _arm_keepalive(self) -> None:
        registered = self.client.state is RegState.REGISTERED
        if not registered or self.keepalive_interval <= 0:
            if self._keepalive:
                self._keepalive.cancel()
                self._keepalive = None
            return
        if self._keepalive is None:
            loop = asyncio.get_running_loop()
            self._keepalive = loop.call_later(self.keepalive_interval, self._on_keepalive)

    def _on_keepalive(self) -> None:
        self._keepalive = None
        dest = self.dest
        if dest is None or self.client.state is not RegState.REGISTERED:
            return
        if dest.transport == "UDP":
            self._send_options(dest)
        else:
            self.transport.keepalive(dest.transport, (dest.host, dest.port))
        self._arm_keepalive()

    def _send_options(self, dest: Target) -> None:
        self._options_cseq += 1
        trunk = self.config.trunk
        aor = f"sip:{trunk.username}@{trunk.domain}"
        headers = Headers(
            [
                ("From", f"<{aor}>;tag={self._options_call_id[:8]}"),
                ("To", f"<sip:{trunk.domain}>"),
                ("Call-ID", self._options_call_id),
                ("CSeq", f"{self._options_cseq} OPTIONS"),
                ("Max-Forwards", "70"),
            ]
        )
        if self.route.route_header is not None:
            headers.insert_first("Route", self.route.route_header)
        request = Request("OPTIONS", f"sip:{trunk.domain}", headers)
        self.ua.send_request(request, (dest.host, dest.port), dest.transport, self._on_options)

    def _on_options(self, event: Event) -> None:
        if isinstance(event, TransactionTimeout | TransportError):
            # the trunk (or the NAT binding) is gone: find a target that answers
            log.info("event=trunk_keepalive_failed target=%s", self.route.label)
            self.flow_lost_udp()

    def flow_lost_udp(self) -> None:
        if self.client.state is not RegState.REGISTERED:
            return
        nxt = self.route.fail_over(self.dest)
        if nxt is not None:
            self.dest = nxt
        self._send(self.client.new_flow(self.transport.now()))

    # ---- logging ----------------------------------------------------------------------------
    def _report(self) -> None:
        state = self.client.state
        if state is self._last_state:
            return
        self._last_state = state
        st = self.client.status()
        now = self.transport.now()
        fields = f"event=trunk_registration state={st.state} registrar={st.registrar}"
        fields += f" aor={st.aor}"
        if self.dest is not None:
            fields += f" target={self.dest.host}:{self.dest.port}/{self.dest.transport.lower()}"
        if st.expires_at is not None:
            fields += f" expires_in={st.expires_at - now:.0f}"
        if st.last_failure:
            fields += f" failure={quote_value(st.last_failure)} failures={st.failures}"
        if st.next_attempt_at is not None and state is RegState.FAILED:
            fields += f" retry_in={st.next_attempt_at - now:.1f}"
        log.info(fields)
        if state is RegState.STOPPED:
            self._stopped.set()
