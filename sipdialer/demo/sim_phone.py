"""A simulated SIP phone on our own stack: registers, rings, answers, sends a tone, hangs up.

Owns one phone: a :class:`~sipdialer.sip.endpoint.SipEndpoint` driven by a
:class:`~sipdialer.transport.SipTransport` (its own UDP/TCP socket), a
:class:`~sipdialer.registration.RegistrationClient` when it registers, and per call a
:class:`~sipdialer.sip.dialog.Dialog` and a :class:`~sipdialer.demo.tone_rtp.ToneRtp`
(its own RTP socket). Any number of calls at once.

What it does with an INVITE (``answer`` decides):

    answer      event                         → what the phone does
    "answer"    INVITE with a usable offer    → 180 Ringing; after ``ring_seconds`` 200 OK
                                                with the SDP answer, starts the tone; BYE
                                                after ``hangup_after`` seconds (None: never)
    "busy"      INVITE                        → 486 Busy Here
    "no-answer" INVITE                        → 180 Ringing, and rings until CANCEL
    any         CANCEL while ringing          → 200 to the CANCEL, 487 to the INVITE
    any         INVITE without usable offer   → 488 Not Acceptable Here
    answered    BYE                           → 200 OK, tone stops
    answered    re-INVITE / UPDATE with SDP   → 200 with a fresh answer, tone re-pointed
    answered    other in-dialog request       → 200 OK
    -           OPTIONS outside a dialog      → 200 OK; other requests → 405 / 481

Each step is reported to ``on_event`` as a :class:`PhoneEvent` (the demo prints them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Literal

from sipdialer.aio.transport import SipTransport
from sipdialer.demo.ports import free_port
from sipdialer.demo.tone_rtp import ToneRtp
from sipdialer.sip.dialog import Dialog
from sipdialer.sip.endpoint import SipEndpoint
from sipdialer.sip.errors import SipParseError
from sipdialer.sip.events import (
    AckTimeout,
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionTimeout,
    TransportError,
)
from sipdialer.sip.message import Request
from sipdialer.sip.registration import RegistrationClient, RegState
from sipdialer.sip.sdp import AudioOffer, SdpError, answer_for, choose_codec, parse_sdp
from sipdialer.sip.transaction import ServerTransaction

__all__ = ["AnswerMode", "PhoneCall", "PhoneEvent", "SimPhone"]

log = logging.getLogger("sipdialer.demo.phone")

Addr = tuple[str, int]
AnswerMode = Literal["answer", "busy", "no-answer"]
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE"


@dataclass(frozen=True)
class PhoneEvent:
    """One thing a phone did or saw."""

    at: float
    """Unix time."""
    phone: str
    """The phone's name (``agent``, ``callee``…)."""
    text: str
    """What happened, one line."""


@dataclass(eq=False)
class PhoneCall:
    """One incoming call at a phone."""

    invite: Request
    transaction: ServerTransaction
    offer: AudioOffer | None
    local_tag: str
    state: str = "ringing"
    """ringing → answered → ended; or rejected (486/488) / cancelled (487)."""
    dialog: Dialog | None = None
    media: ToneRtp | None = None
    codec: str | None = None
    answered_at: float | None = None
    """``loop.time()`` of the 200 OK."""
    ended_at: float | None = None
    """``loop.time()`` the call ended (BYE sent or received, CANCEL, rejection)."""
    ended_by: str | None = None
    """``local`` (we sent BYE or rejected it) or ``remote`` (BYE or CANCEL received)."""
    bye_reason: str | None = None
    """The Reason header of the BYE received, if any."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def call_id(self) -> str:
        return self.invite.call_id

    @property
    def caller(self) -> str:
        """The calling number (From user) as shown to this phone."""
        try:
            address = self.invite.from_addr()
            return address.display or (address.sip_uri.user or address.uri)
        except SipParseError:
            return "?"


class SimPhone:
    """A phone with one SIP identity ``user``; see the module docstring."""

    def __init__(
        self,
        name: str,
        user: str,
        *,
        tone_hz: float,
        host: str = "127.0.0.1",
        answer: AnswerMode = "answer",
        ring_seconds: float = 1.0,
        hangup_after: float | None = None,
        level: float = 0.3,
        on_event: Callable[[PhoneEvent], None] | None = None,
    ) -> None:
        self.name = name
        self.user = user
        self.tone_hz = tone_hz
        self.host = host
        self.answer = answer
        self.ring_seconds = ring_seconds
        self.hangup_after = hangup_after
        self.level = level
        self.on_event = on_event
        self.events: list[PhoneEvent] = []
        self.calls: list[PhoneCall] = []
        self.endpoint = SipEndpoint(host=host, port=0, user_agent=f"sipdialer-sim-phone ({name})")
        self.transport = SipTransport(self.endpoint, self._on_sip_event, listen=(host, 0))
        self.registration: RegistrationClient | None = None
        self._registrar: Addr | None = None
        self._reg_changed = asyncio.Event()
        self._reg_timer: asyncio.TimerHandle | None = None
        self._tx_handlers: dict[int, Callable[[Event], None]] = {}
        self._by_invite_tx: dict[int, PhoneCall] = {}
        self._dialogs: dict[tuple[str, str], PhoneCall] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._new_call = asyncio.Event()
        self._taken = 0

    # ---- lifecycle --------------------------------------------------------------------
    async def start(self, port: int | None = None) -> None:
        """Bind the SIP socket, UDP and TCP: on ``port``, or a free one (retried if the
        port is taken before the phone binds it)."""
        for attempt in range(5):
            chosen = port if port is not None else free_port(self.host, tcp_too=True)
            self.transport.listen = (self.host, chosen)
            try:
                await self.transport.start()
                break
            except OSError:
                if port is not None or attempt == 4:
                    raise
        self.endpoint.port = self.transport.port

    async def stop(self) -> None:
        """Stop every call's media and timers and close the sockets (no BYE, no
        un-REGISTER: a phone switched off)."""
        if self._reg_timer is not None:
            self._reg_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for call in self.calls:
            if call.media is not None:
                call.media.close()
        await self.transport.close()

    @property
    def sip_port(self) -> int:
        return self.transport.port

    @property
    def address(self) -> Addr:
        return (self.host, self.transport.port)

    @property
    def contact_uri(self) -> str:
        return f"sip:{self.user}@{self.host}:{self.transport.port}"

    def _emit(self, text: str) -> None:
        event = PhoneEvent(time.time(), self.name, text)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def _now(self) -> float:
        return self.transport.now()

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- registration ---------------------------------------------------------------------
    async def register(
        self,
        registrar: Addr,
        *,
        domain: str,
        password: str,
        expires: int = 3600,
        timeout: float = 5.0,
    ) -> None:
        """REGISTER ``user@domain`` at ``registrar`` (digest answered); wait for the 200.
        RuntimeError if the registrar refuses; the binding is refreshed before it expires."""
        self._registrar = registrar
        self.registration = RegistrationClient(
            domain=domain,
            username=self.user,
            password=password,
            contact_uri=self.contact_uri,
            expires=expires,
            registrar_label=f"{registrar[0]}:{registrar[1]}",
        )
        self._send_register(self.registration.start(self._now()))
        deadline = self._now() + timeout
        while self.registration.state not in (RegState.REGISTERED, RegState.FAILED):
            self._reg_changed.clear()
            remaining = deadline - self._now()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reg_changed.wait(), remaining)
        if self.registration.state is not RegState.REGISTERED:
            failure = self.registration.last_failure or "no answer"
            raise RuntimeError(f"phone {self.name} could not register: {failure}")

    def _send_register(self, request: Request | None) -> None:
        if request is not None and self._registrar is not None:
            tx = self.transport.send_request(request, self._registrar, "UDP")
            self._tx_handlers[id(tx)] = self._on_register_event
        self._arm_registration()

    def _on_register_event(self, event: Event) -> None:
        reg = self.registration
        if reg is None:
            return
        now = self._now()
        if isinstance(event, ResponseReceived):
            self._send_register(reg.on_response(event.response, now))
        elif isinstance(event, TransactionTimeout):
            reg.on_timeout(now)
        elif isinstance(event, TransportError):
            reg.on_transport_error(now)
        self._arm_registration()
        self._reg_changed.set()

    def _arm_registration(self) -> None:
        if self._reg_timer is not None:
            self._reg_timer.cancel()
            self._reg_timer = None
        reg = self.registration
        at = reg.get_timer() if reg is not None else None
        if at is not None:
            self._reg_timer = asyncio.get_running_loop().call_at(at, self._on_reg_timer)

    def _on_reg_timer(self) -> None:
        self._reg_timer = None
        if self.registration is not None:
            self._send_register(self.registration.handle_timer(self._now()))

    # ---- calls --------------------------------------------------------------------------
    async def wait_for_call(self, timeout: float = 10.0) -> PhoneCall:
        """The next call this method has not returned yet (calls are kept in arrival
        order, so one that arrived before the wait began is returned at once)."""
        deadline = self._now() + timeout
        while len(self.calls) <= self._taken:
            self._new_call.clear()
            remaining = deadline - self._now()
            if remaining <= 0:
                raise TimeoutError(f"phone {self.name}: no call within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_call.wait(), remaining)
        self._taken += 1
        return self.calls[self._taken - 1]

    def hangup(self, call: PhoneCall, reason: str | None = None) -> None:
        """Send BYE on an answered call (nothing else to do otherwise)."""
        if call.state != "answered" or call.dialog is None:
            return
        extra = [("Reason", reason)] if reason else []
        bye = call.dialog.create_request("BYE", extra=extra)
        call.dialog.terminate()
        tx = self.transport.send_request(bye, self._next_hop(call.dialog), "UDP")
        self._tx_handlers[id(tx)] = lambda event: None
        self._end(call, "local")
        self._emit("hangs up -> BYE")

    def _end(self, call: PhoneCall, by: str, state: str = "ended") -> None:
        if call.ended.is_set():
            return
        call.state = state
        call.ended_by = by
        call.ended_at = self._now()
        if call.media is not None:
            call.media.stop()
        if call.dialog is not None:
            self._dialogs.pop((call.dialog.call_id, call.dialog.local_tag), None)
        call.ended.set()

    @staticmethod
    def _next_hop(dialog: Dialog) -> Addr:
        uri = dialog.next_hop()
        return uri.host.strip("[]"), uri.port or 5060

    # ---- SIP events ---------------------------------------------------------------------
    def _on_sip_event(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event)
        elif isinstance(event, ResponseReceived | TransactionTimeout | TransportError):
            tx = event.transaction
            handler = self._tx_handlers.get(id(tx)) if tx is not None else None
            if handler is not None:
                handler(event)
                if not isinstance(event, ResponseReceived) or event.response.status >= 200:
                    self._tx_handlers.pop(id(tx), None)
        elif isinstance(event, AckTimeout):
            for call in list(self._dialogs.values()):
                if call.invite.call_id == event.response.call_id:
                    self.hangup(call)

    def _respond(
        self,
        event: RequestReceived,
        status: int,
        *,
        extra: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        if event.transaction is None:
            return
        response = self.endpoint.response_to(event.request, status, extra=extra or [], body=body)
        self.transport.respond(event.transaction, response)

    def _on_request(self, event: RequestReceived) -> None:
        req = event.request
        try:
            to_tag = req.to_addr().tag
        except SipParseError:
            return
        if to_tag:
            call = self._dialogs.get((req.call_id, to_tag))
            if call is not None:
                self._on_dialog_request(call, event)
            elif req.method != "ACK":
                self._respond(event, 481)
            return
        if req.method == "INVITE":
            self._on_invite(event)
        elif req.method == "CANCEL":
            self._on_cancel(event)
        elif req.method == "OPTIONS":
            self._respond(event, 200, extra=[("Allow", ALLOW), ("Accept", "application/sdp")])
        elif req.method != "ACK":
            self._respond(event, 405, extra=[("Allow", ALLOW)])

    def _on_invite(self, event: RequestReceived) -> None:
        assert event.transaction is not None
        req = event.request
        try:
            offer: AudioOffer | None = parse_sdp(req.body)
        except SdpError:
            offer = None
        call = PhoneCall(
            invite=req,
            transaction=event.transaction,
            offer=offer,
            local_tag=self.endpoint.to_tag_for(req),
        )
        self.calls.append(call)
        self._by_invite_tx[id(event.transaction)] = call
        self._new_call.set()
        self._spawn(self._run_call(call, event))

    async def _run_call(self, call: PhoneCall, event: RequestReceived) -> None:
        offer = call.offer
        codec = choose_codec(offer) if offer is not None else None
        if offer is None or codec is None:
            self._respond(event, 488)
            self._end(call, "local", "rejected")
            self._emit(f"INVITE from {call.caller} without a usable offer -> 488")
            return
        if self.answer == "busy":
            self._respond(event, 486)
            self._end(call, "local", "rejected")
            self._emit(f"INVITE from {call.caller} -> 486 Busy Here")
            return
        contact = [("Contact", f"<{self.contact_uri}>"), ("Allow", ALLOW)]
        self._respond(event, 180, extra=contact)
        self._emit(f"INVITE from {call.caller} -> 180 Ringing")
        if self.answer == "no-answer":
            await call.cancelled.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.cancelled.wait(), self.ring_seconds)
        if call.cancelled.is_set():
            return
        media = call.media = ToneRtp(self.tone_hz, level=self.level)
        await media.open(self.host)
        answer = answer_for(
            offer,
            address=self.host,
            port=media.port,
            session_id=secrets.randbelow(2**31),
            version=1,
        )
        if answer is None or call.cancelled.is_set():
            media.close()
            if answer is None:
                self._respond(event, 488)
                self._end(call, "local", "rejected")
            return
        call.dialog = Dialog.from_uas_request(call.invite, call.local_tag, self.contact_uri)
        call.dialog.confirm()
        self._dialogs[(call.invite.call_id, call.local_tag)] = call
        extra = [*contact, ("Content-Type", "application/sdp")]
        self._respond(event, 200, extra=extra, body=answer)
        call.state = "answered"
        call.answered_at = self._now()
        call.codec = codec[0]
        media.start((offer.address, offer.port), codec[0], codec[1])
        self._emit(
            f"answers -> 200 OK ({codec[0]}); RTP {self.tone_hz:g} Hz "
            f"-> {offer.address}:{offer.port}"
        )
        if self.hangup_after is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.ended.wait(), self.hangup_after)
            if not call.ended.is_set():
                self.hangup(call)

    def _on_cancel(self, event: RequestReceived) -> None:
        invite_tx = self.endpoint.find_invite_server_transaction(event.request)
        call = self._by_invite_tx.get(id(invite_tx)) if invite_tx is not None else None
        if call is None:
            self._respond(event, 481)
            return
        self._respond(event, 200)
        if call.state != "ringing" or call.cancelled.is_set():
            return
        response = self.endpoint.response_to(call.invite, 487)
        self.transport.respond(call.transaction, response)
        call.cancelled.set()
        self._end(call, "remote", "cancelled")
        self._emit("CANCEL -> 487 Request Terminated")

    def _on_dialog_request(self, call: PhoneCall, event: RequestReceived) -> None:
        req = event.request
        dialog = call.dialog
        if dialog is None or req.method == "ACK":
            return
        problem = dialog.receive_request(req)
        if problem is not None:
            self._respond(event, problem)
            return
        if req.method == "BYE":
            self._respond(event, 200)
            call.bye_reason = req.headers.get("Reason")
            self._end(call, "remote")
            reason = f" ({call.bye_reason})" if call.bye_reason else ""
            self._emit(f"BYE{reason} -> 200 OK")
            return
        body = b""
        extra = [("Contact", f"<{self.contact_uri}>"), ("Allow", ALLOW)]
        if req.method in ("INVITE", "UPDATE") and req.body and call.media is not None:
            try:
                offer = parse_sdp(req.body)
            except SdpError:
                self._respond(event, 488)
                return
            codec = choose_codec(offer)
            answer = answer_for(
                offer,
                address=self.host,
                port=call.media.port,
                session_id=secrets.randbelow(2**31),
                version=2,
            )
            if answer is None or codec is None:
                self._respond(event, 488)
                return
            call.media.start((offer.address, offer.port), codec[0], codec[1])
            body = answer
            extra.append(("Content-Type", "application/sdp"))
        self._respond(event, 200, extra=extra, body=body)
