"""asyncio adapters for SIP over UDP and TCP around the sans-IO :class:`SipEndpoint`.

Owns the sockets and nothing else: bytes that arrive are fed to the endpoint with the
loop's clock as ``now``; what the endpoint queues is written out (UDP datagrams, or the
TCP connection to that address, opened on demand); its single earliest timer is armed with
``loop.call_at``; its events are handed to the application callback. TCP messages are
framed with Content-Length (:class:`StreamFramer`); CRLF keep-alive pings get a CRLF pong.
No SIP semantics live here (aioquic's ``asyncio/protocol.py`` shape).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sipdialer.sip.endpoint import Outgoing, SipEndpoint
from sipdialer.sip.errors import SipParseError
from sipdialer.sip.events import Event
from sipdialer.sip.message import Request, Response, StreamFramer
from sipdialer.sip.transaction import ClientTransaction, ServerTransaction

log = logging.getLogger("sipdialer.transport")

Addr = tuple[str, int]
EventHandler = Callable[[Event], None]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.feed(data, (addr[0], addr[1]), "UDP")

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable and the like
        log.debug("event=udp_error error=%s", exc)


class _TcpConnection(asyncio.Protocol):
    def __init__(self, owner: SipTransport, peer: Addr | None = None) -> None:
        self.owner = owner
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.framer = StreamFramer()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.peer is None:
            info = transport.get_extra_info("peername")
            self.peer = (info[0], info[1])
        self.owner._tcp[self.peer] = self

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            log.info("event=tcp_framing_error peer=%s error=%s", self.peer, exc)
            if self.transport:
                self.transport.close()
            return
        if self.framer.pings and self.transport:
            self.transport.write(b"\r\n" * self.framer.pings)
            self.framer.pings = 0
        assert self.peer is not None
        for message in messages:
            self.owner.feed(message, self.peer, "TCP")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.owner._tcp.get(self.peer) is self:
            del self.owner._tcp[self.peer]

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


class SipTransport:
    """UDP and TCP sockets on one listen address, driving one :class:`SipEndpoint`."""

    def __init__(
        self,
        endpoint: SipEndpoint,
        on_event: EventHandler,
        *,
        listen: Addr,
    ) -> None:
        self.endpoint = endpoint
        self.on_event = on_event
        self.listen = listen
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tcp: dict[Addr, _TcpConnection] = {}
        self._pending: dict[Addr, list[bytes]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._again = False
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        host, port = self.listen
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
        self._udp = udp
        port = udp.get_extra_info("sockname")[1]
        try:
            self._server = await loop.create_server(
                lambda: _TcpConnection(self), host, port, reuse_address=True
            )
        except OSError:
            udp.close()
            raise
        self.listen = (host, port)
        log.info("event=sip_listening udp=%s:%d tcp=%s:%d", host, port, host, port)

    async def close(self) -> None:
        if self._timer:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._tcp.values()):
            if conn.transport:
                conn.transport.close()
        if self._server:
            self._server.close()
            await self._server.wait_closed()
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

    # ---- output -----------------------------------------------------------------------------
    def _write(self, out: Outgoing) -> None:
        if out.transport == "TCP":
            conn = self._tcp.get(out.addr)
            if conn is not None:
                conn.write(out.data)
                return
            pending = self._pending.get(out.addr)
            if pending is not None:
                pending.append(out.data)
                return
            self._pending[out.addr] = [out.data]
            task = asyncio.ensure_future(self._connect(out.addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if self._udp is not None:
            try:
                self._udp.sendto(out.data, out.addr)
            except OSError as exc:
                log.info("event=udp_send_failed dest=%s:%d error=%s", *out.addr, exc)
                self.endpoint.transport_error(out.addr, "UDP", self.now())

    async def _connect(self, addr: Addr) -> None:
        assert self._loop is not None
        try:
            await asyncio.wait_for(
                self._loop.create_connection(lambda: _TcpConnection(self, addr), *addr), 5.0
            )
        except (OSError, TimeoutError) as exc:
            log.info("event=tcp_connect_failed dest=%s:%d error=%s", *addr, exc)
            self._pending.pop(addr, None)
            self.endpoint.transport_error(addr, "TCP", self.now())
            self.pump()
            return
        for data in self._pending.pop(addr, []):
            self._tcp[addr].write(data)
