"""asyncio adapters for SIP over UDP, TCP and TLS around the sans-IO :class:`SipEndpoint`.

Owns the sockets and nothing else: bytes that arrive are fed to the endpoint with the
loop's clock as ``now``; what the endpoint queues is written out (UDP datagrams, or the
TCP/TLS connection to that address, opened on demand); its single earliest timer is armed
with ``loop.call_at``; its events are handed to the application callback. Stream messages
are framed with Content-Length (:class:`StreamFramer`); CRLF keep-alive pings get a CRLF
pong. No SIP semantics live here (aioquic's ``asyncio/protocol.py`` shape).

Connections are keyed by ``(transport, address)``: a request the trunk sends back over
the TLS connection we opened (its BYE, a re-INVITE) is answered over that connection, and
whatever we send to that address and transport reuses it (RFC 5923's intent; the trunk
tags our Contact with ``alias``). Flows we open are *outbound*; they are kept alive with
RFC 5626 §3.5.1 CRLF pings on request (:meth:`SipTransport.keepalive`) and their loss is
reported to ``on_flow_lost`` so the registration can re-establish them.

Every peer is a suspect (issue 10, item 5): connections that others open to us are
bounded in number (``ConnectionLimits.total``: the least recently active inbound one is
evicted to admit a new one; ``per_source``: a new one from a source that holds that many is
refused), closed when idle (``idle_timeout``) and when a started message is not complete
in ``message_timeout`` (a peer trickling one byte a second cannot hold a slot). One
sweep a second checks all of them; no timer per connection.

Written against the loop's public API only: uvloop's transports are not subclasses of
asyncio's classes, so nothing here tests ``isinstance`` on a transport (the bug that made
TCP fail under ``sipdialer serve``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sipdialer.sip.endpoint import Outgoing, SipEndpoint
from sipdialer.sip.errors import SipParseError
from sipdialer.sip.events import Event
from sipdialer.sip.message import Request, Response, StreamFramer
from sipdialer.sip.transaction import ClientTransaction, ServerTransaction

log = logging.getLogger("sipdialer.transport")

Addr = tuple[str, int]
FlowKey = tuple[str, Addr]
EventHandler = Callable[[Event], None]
FlowHandler = Callable[[str, Addr], None]
STREAMS = ("TCP", "TLS")
SWEEP_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Bounds on the TCP/TLS connections peers open to us (outbound flows are exempt)."""

    total: int = 1024
    """Inbound connections at once; the least recently active is evicted beyond it."""
    per_source: int = 64
    """Inbound connections from one IP address; more are refused."""
    idle_timeout: float = 900.0
    """An inbound connection with no bytes for this long is closed (phones re-register
    or send CRLF keep-alives well within it)."""
    message_timeout: float = 10.0
    """A message whose first byte arrived must be complete within this."""
    connect_timeout: float = 5.0
    """TCP connect + TLS handshake of a flow we open."""
    pong_timeout: float = 10.0
    """A CRLF ping we sent on an outbound flow must be answered within this."""


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.feed(data, (addr[0], addr[1]), "UDP")

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable and the like
        log.debug("event=udp_error error=%s", exc)


class _Stream(asyncio.Protocol):
    """One TCP or TLS connection, inbound or outbound."""

    def __init__(self, owner: SipTransport, proto: str, peer: Addr | None = None) -> None:
        self.owner = owner
        self.proto = proto
        self.peer = peer
        self.inbound = peer is None
        self.transport: asyncio.Transport | None = None
        self.framer = StreamFramer()
        self.last_rx = 0.0
        self.partial_since: float | None = None
        self.ping_sent_at: float | None = None
        self.closed = False

    @property
    def key(self) -> FlowKey:
        assert self.peer is not None
        return (self.proto, self.peer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's TCPTransport is not an asyncio.Transport subclass
        self.transport = cast(asyncio.Transport, transport)
        self.last_rx = self.owner.now()
        if self.peer is None:
            info = transport.get_extra_info("peername")
            self.peer = (info[0], info[1])
        if self.inbound and not self.owner._admit(self):
            self.closed = True
            self.transport.abort()
            return
        self.owner._streams[self.key] = self

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        now = self.owner.now()
        self.last_rx = now
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            log.info("event=stream_framing_error peer=%s:%d error=%s", *self.key[1], exc)
            self.close()
            return
        if self.framer.pongs:
            self.framer.pongs = 0
            self.ping_sent_at = None
        if self.framer.pings and self.transport:
            self.transport.write(b"\r\n" * self.framer.pings)
            self.framer.pings = 0
        self.partial_since = (self.partial_since or now) if self.framer.pending else None
        assert self.peer is not None
        for message in messages:
            self.owner.feed(message, self.peer, self.proto)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None and self.owner._streams.get(self.key) is self:
            del self.owner._streams[self.key]
            self.owner._lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class SipTransport:
    """UDP and TCP sockets on one listen address (and optionally TLS on another), driving
    one :class:`SipEndpoint`.

    ``client_tls`` is the context used to verify servers we connect to over TLS
    (:func:`client_tls_context`); :meth:`set_server_name` says which name to send as SNI
    and check the certificate against for an address (the configured trunk name, RFC
    5922 §4), the address's IP otherwise. ``tls_listen`` + ``server_tls`` accept TLS
    connections from phones or trunks.
    """

    def __init__(
        self,
        endpoint: SipEndpoint,
        on_event: EventHandler,
        *,
        listen: Addr,
        tls_listen: Addr | None = None,
        server_tls: ssl.SSLContext | None = None,
        client_tls: ssl.SSLContext | None = None,
        limits: ConnectionLimits | None = None,
        on_flow_lost: FlowHandler | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.on_event = on_event
        self.listen = listen
        self.tls_listen = tls_listen
        self.server_tls = server_tls
        self.client_tls = client_tls
        self.limits = limits or ConnectionLimits()
        self.on_flow_lost = on_flow_lost
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._streams: dict[FlowKey, _Stream] = {}
        self._pending: dict[FlowKey, list[bytes]] = {}
        self._server_names: dict[Addr, str] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._pumping = False
        self._again = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        host, port = self.listen
        # Port 0: the kernel picks a free UDP port, and TCP listens on the same number; that
        # number may be some TCP connection's local port already (a busy machine's ephemeral
        # ports): then pick another, a few times.
        for attempt in range(8 if port == 0 else 1):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, port)
            )
            udp_port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await loop.create_server(
                    lambda: _Stream(self, "TCP"), host, udp_port, reuse_address=True
                )
            except OSError as exc:
                udp.close()
                if exc.errno != errno.EADDRINUSE or attempt == 7 or port != 0:
                    raise
                continue
            break
        self._udp = udp
        self._servers.append(tcp)
        port = udp_port
        try:
            if self.tls_listen is not None:
                if self.server_tls is None:
                    raise ValueError("tls_listen needs a server TLS context (certificate, key)")
                tls_host, tls_port = self.tls_listen
                server = await loop.create_server(
                    lambda: _Stream(self, "TLS"),
                    tls_host,
                    tls_port,
                    ssl=self.server_tls,
                    reuse_address=True,
                    ssl_handshake_timeout=self.limits.message_timeout,
                )
                self._servers.append(server)
                self.tls_listen = (tls_host, server.sockets[0].getsockname()[1])
        except (OSError, ValueError):
            await self.close()
            raise
        self.listen = (host, port)
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)
        tls = "" if self.tls_listen is None else " tls={}:{}".format(*self.tls_listen)
        log.info("event=sip_listening udp=%s:%d tcp=%s:%d%s", host, port, host, port, tls)

    async def close(self) -> None:
        if self._timer:
            self._timer.cancel()
        if self._sweeper:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        for stream in list(self._streams.values()):
            stream.close()
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._udp:
            self._udp.close()
            # the socket is closed on the loop's next turn; let it, so a restart can bind
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    @property
    def port(self) -> int:
        return self.listen[1]

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def set_server_name(self, addr: Addr, name: str) -> None:
        """Verify the TLS server at ``addr`` as ``name`` (and send it as SNI)."""
        self._server_names[addr] = name

    def has_flow(self, transport: str, addr: Addr) -> bool:
        """Whether a TCP/TLS connection to ``addr`` is open now."""
        return (transport.upper(), addr) in self._streams

    def keepalive(self, transport: str, addr: Addr) -> None:
        """Send a CRLF ping on the flow to ``addr`` (RFC 5626 §3.5.1); a flow that does not
        answer within ``limits.pong_timeout`` is closed and reported lost."""
        stream = self._streams.get((transport.upper(), addr))
        if stream is None or stream.closed:
            return
        if stream.ping_sent_at is None:
            stream.ping_sent_at = self.now()
        stream.write(b"\r\n\r\n")

    def connection_counts(self) -> tuple[int, int]:
        """(inbound, outbound) TCP/TLS connections open now."""
        inbound = sum(1 for s in self._streams.values() if s.inbound)
        return inbound, len(self._streams) - inbound

    # ---- calls into the endpoint, each followed by a pump ---------------------------------
    def feed(self, data: bytes, source: Addr, transport: str) -> None:
        self.endpoint.receive(data, source, transport, self.now())
        self.pump()

    def send_request(self, request: Request, dest: Addr, transport: str) -> ClientTransaction:
        tx = self.endpoint.send_request(request, dest, transport.upper(), self.now())
        self.pump()
        return tx

    def send_cancel(
        self, invite_tx: ClientTransaction, reason: str | None = None
    ) -> ClientTransaction | None:
        tx = self.endpoint.send_cancel(invite_tx, self.now(), reason)
        self.pump()
        return tx

    def respond(self, transaction: ServerTransaction, response: Response) -> None:
        self.endpoint.respond(transaction, response, self.now())
        self.pump()

    def send_stateless(self, message: Request | Response, dest: Addr, transport: str) -> None:
        self.endpoint.send_stateless(message, dest, transport.upper())
        self.pump()

    def pump(self) -> None:
        """Write what the endpoint queued, deliver its events, re-arm its timer.

        Re-entrant: an event handler that sends something only marks another round.
        """
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        try:
            while True:
                self._again = False
                for out in self.endpoint.messages_to_send():
                    self._write(out)
                while (event := self.endpoint.next_event()) is not None:
                    try:
                        self.on_event(event)
                    except Exception:  # one bad handler must not stop the SIP stack
                        log.exception("event=handler_error sip_event=%s", type(event).__name__)
                if not self._again:
                    break
        finally:
            self._pumping = False
        self._arm_timer()

    def _arm_timer(self) -> None:
        at = self.endpoint.get_timer()
        if at == self._timer_at:
            return
        if self._timer:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None and self._loop is not None:
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.endpoint.handle_timer(self.now())
        self.pump()

    # ---- connection bookkeeping -----------------------------------------------------------
    def _admit(self, stream: _Stream) -> bool:
        """May this new inbound connection stay? Evicts the stalest one at the total cap."""
        assert stream.peer is not None
        source = stream.peer[0]
        inbound = [s for s in self._streams.values() if s.inbound]
        if sum(1 for s in inbound if s.peer is not None and s.peer[0] == source) >= (
            self.limits.per_source
        ):
            self.refused += 1
            log.info("event=connection_refused source=%s reason=per_source_limit", source)
            return False
        if len(inbound) >= self.limits.total:
            stalest = min(inbound, key=lambda s: s.last_rx)
            self.evicted += 1
            log.info("event=connection_evicted peer=%s:%d", *stalest.key[1])
            stalest.close()
            self._streams.pop(stalest.key, None)
        return True

    def _lost(self, stream: _Stream) -> None:
        if not stream.inbound and self.on_flow_lost is not None:
            try:
                self.on_flow_lost(stream.proto, stream.key[1])
            except Exception:
                log.exception("event=flow_lost_handler_error")

    def _sweep(self) -> None:
        assert self._loop is not None
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)
        now = self.now()
        limits = self.limits
        for stream in list(self._streams.values()):
            reason = None
            if stream.partial_since is not None and now - stream.partial_since > (
                limits.message_timeout
            ):
                reason = "message_timeout"
            elif stream.inbound and now - stream.last_rx > limits.idle_timeout:
                reason = "idle"
            elif stream.ping_sent_at is not None and now - stream.ping_sent_at > (
                limits.pong_timeout
            ):
                reason = "no_pong"
            if reason is not None:
                self.timed_out += 1
                log.info("event=connection_closed peer=%s:%d reason=%s", *stream.key[1], reason)
                stream.close()

    # ---- output -----------------------------------------------------------------------------
    def _write(self, out: Outgoing) -> None:
        proto = out.transport.upper()
        if proto in STREAMS:
            key = (proto, out.addr)
            stream = self._streams.get(key)
            if stream is not None and not stream.closed:
                stream.write(out.data)
                return
            pending = self._pending.get(key)
            if pending is not None:
                pending.append(out.data)
                return
            self._pending[key] = [out.data]
            task = asyncio.ensure_future(self._connect(proto, out.addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if self._udp is not None:
            try:
                self._udp.sendto(out.data, out.addr)
            except (OSError, ValueError) as exc:  # ValueError: uvloop given a host name
                log.info("event=udp_send_failed dest=%s:%d error=%s", *out.addr, exc)
                self.endpoint.transport_error(out.addr, "UDP", self.now())

    async def _connect(self, proto: str, addr: Addr) -> None:
        assert self._loop is not None
        key = (proto, addr)
        tls: dict[str, Any] = {}
        if proto == "TLS":
            tls = {
                "ssl": self.client_tls or client_tls_context(),
                "server_hostname": self._server_names.get(addr, addr[0]),
                "ssl_handshake_timeout": self.limits.connect_timeout,
            }
        try:
            await asyncio.wait_for(
                self._loop.create_connection(lambda: _Stream(self, proto, addr), *addr, **tls),
                self.limits.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            event = (
                "tls_verify_failed"
                if isinstance(exc, ssl.SSLCertVerificationError)
                else ("connect_failed")
            )
            log.warning(
                "event=%s transport=%s dest=%s:%d error=%s",
                event,
                proto,
                *addr,
                getattr(exc, "verify_message", None) or exc,
            )
            self._pending.pop(key, None)
            self.endpoint.transport_error(addr, proto, self.now())
            self.pump()
            return
        stream = self._streams.get(key)
        for data in self._pending.pop(key, []):
            if stream is not None:
                stream.write(data)


def client_tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A TLS client context that verifies the server's certificate and host name against
    the system CAs, or only against ``ca_file`` when given. TLS 1.2 at least."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A TLS server context for ``tls_listen`` (no client certificates asked)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context
