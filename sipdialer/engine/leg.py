"""One outbound call leg: our INVITE to a phone or the trunk, and the dialog it creates.

Owns the UAC side of a leg, as a state machine over the sans-IO transaction and dialog
objects (it only sends through the :class:`UserAgent`):

    state        event                                  → state        what we do
    idle         invite()                               → calling      INVITE
    calling      1xx                                    → proceeding   tell the call (SDP?)
    calling/     401/407 (first time for this nonce)    → calling      INVITE again + digest
      proceeding
    calling/     2xx                                    → confirmed    ACK; tell the call
      proceeding
    calling/     3xx–6xx, timeout, transport error      → terminated   tell the call
      proceeding
    calling/     hangup()                               → cancelling   CANCEL (sent with the
      proceeding                                                        first 1xx if none yet)
    cancelling   2xx (crossed our CANCEL)               → terminating  ACK, then BYE
    cancelling   3xx–6xx (487), timeout                 → terminated
    confirmed    hangup()                               → terminating  BYE
    confirmed    BYE from the peer                      → terminated   200; tell the call
    confirmed    re-INVITE                              → confirmed    200 + our SDP; tell the
                                                                        call (media moved)
    confirmed    OPTIONS / INFO / UPDATE                → confirmed    200
    terminating  BYE answered or timed out              → terminated

A retransmitted 2xx (ours was lost) is ACKed again, whatever the state. The leg reports
to its :class:`LegListener` (the call engine) and never decides the call's fate itself.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from sipdialer.aio.useragent import ALLOW, UserAgent
from sipdialer.sip.dialog import Dialog
from sipdialer.sip.digest import ClientAuthenticator, DigestError
from sipdialer.sip.errors import SipParseError
from sipdialer.sip.events import (
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionTimeout,
    TransportError,
)
from sipdialer.sip.message import Headers, Request, Response
from sipdialer.sip.sdp import AudioOffer, SdpError, parse_sdp
from sipdialer.sip.transaction import ClientTransaction

log = logging.getLogger("sipdialer.leg")

Addr = tuple[str, int]


class LegState(StrEnum):
    IDLE = "idle"
    CALLING = "calling"
    PROCEEDING = "proceeding"
    CONFIRMED = "confirmed"
    CANCELLING = "cancelling"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class LegListener(Protocol):
    def leg_progress(self, leg: Leg, status: int, sdp: AudioOffer | None) -> None: ...
    def leg_answered(self, leg: Leg, sdp: AudioOffer | None) -> None: ...
    def leg_failed(
        self, leg: Leg, status: int, reason: tuple[str, ...], unreachable: bool
    ) -> None: ...
    def leg_bye(self, leg: Leg, reason: tuple[str, ...]) -> None: ...
    def leg_media_changed(self, leg: Leg, sdp: AudioOffer) -> None: ...
    def leg_terminated(self, leg: Leg) -> None: ...


@dataclass
class LegTarget:
    """Where and how to send a leg's INVITE."""

    request_uri: str
    dest: Addr
    transport: str = "UDP"
    from_uri: str = ""
    from_display: str | None = None
    to_uri: str = ""
    contact_uri: str = ""
    credentials: tuple[str, str] | None = None
    extra_headers: list[tuple[str, str]] = field(default_factory=list)


class Leg:
    """An outbound INVITE leg. ``name`` is ``"agent"`` or ``"callee"``."""

    def __init__(
        self,
        name: str,
        ua: UserAgent,
        target: LegTarget,
        listener: LegListener,
        *,
        sdp_offer: bytes,
        answer_reinvite: ReinviteAnswerer,
        call_tag: str = "",
    ) -> None:
        self.name = name
        self.ua = ua
        self.target = target
        self.listener = listener
        self.sdp_offer = sdp_offer
        self.answer_reinvite = answer_reinvite
        self.log_ctx = f"call={call_tag} leg={name}"
        self.state = LegState.IDLE
        self.call_id = secrets.token_hex(12)
        self.from_tag = secrets.token_hex(6)
        self.cseq = 0
        self.final_status: int | None = None
        self.dialog: Dialog | None = None
        self.invite_tx: ClientTransaction | None = None
        self._invite: Request | None = None
        self._auth = (
            ClientAuthenticator(*target.credentials) if target.credentials is not None else None
        )
        self._auth_tries = 0
        self._acks: dict[str, Request] = {}  # to-tag → ACK we sent for its 2xx
        self._reported_end = False

    # ---- commands from the call ----------------------------------------------------------
    def invite(self) -> None:
        assert self.state is LegState.IDLE
        self.state = LegState.CALLING
        self._send_invite()

    def hangup(self, reason: str | None = None) -> None:
        """End this leg however its state requires (CANCEL, BYE, or nothing)."""
        st = self.state
        if st in (LegState.CALLING, LegState.PROCEEDING):
            self.state = LegState.CANCELLING
            if self.invite_tx is not None:
                self.ua.send_cancel(self.invite_tx, reason)
            log.info("event=leg_cancel %s", self.log_ctx)
        elif st is LegState.CONFIRMED:
            self._send_bye(reason)
        elif st is LegState.IDLE:
            self._terminated()

    # ---- the INVITE and its responses ----------------------------------------------------
    def _send_invite(self) -> None:
        t = self.target
        self.cseq += 1
        display = f'"{t.from_display}" ' if t.from_display else ""
        headers = Headers(
            [
                ("From", f"{display}<{t.from_uri}>;tag={self.from_tag}"),
                ("To", f"<{t.to_uri}>"),
                ("Call-ID", self.call_id),
                ("CSeq", f"{self.cseq} INVITE"),
                ("Contact", f"<{t.contact_uri}>"),
                ("Allow", ALLOW),
                ("Content-Type", "application/sdp"),
            ]
        )
        for name, value in t.extra_headers:
            headers.add(name, value)
        if self._auth is not None:
            for name, value in self._auth.authorize(method="INVITE", uri=t.request_uri):
                headers.add(name, value)
        self._invite = Request("INVITE", t.request_uri, headers, self.sdp_offer)
        self.invite_tx = self.ua.send_request(self._invite, t.dest, t.transport, self._on_tx)
        self.ua.on_stray_2xx(self.call_id, self._on_stray_2xx)
        log.info("event=leg_invite %s uri=%s dest=%s:%d", self.log_ctx, t.request_uri, *t.dest)

    def _on_tx(self, event: Event) -> None:
        if isinstance(event, ResponseReceived):
            if event.transaction is self.invite_tx:
                self._on_invite_response(event.response)
            else:
                self._on_other_response(event.response)
        elif isinstance(event, TransactionTimeout | TransportError):
            if event.transaction is self.invite_tx:
                self._on_invite_unreachable(isinstance(event, TransportError))
            elif self.state is LegState.TERMINATING:
                self._terminated()

    def _on_invite_response(self, resp: Response) -> None:
        status = resp.status
        if status < 200:
            if status == 100:
                return
            if self.state is LegState.CALLING:
                self.state = LegState.PROCEEDING
            if self.state is LegState.PROCEEDING:
                self.listener.leg_progress(self, status, self._sdp_of(resp))
            return
        if status < 300:
            self._on_2xx(resp)
            return
        if self.state in (LegState.CONFIRMED, LegState.TERMINATING, LegState.TERMINATED):
            return  # a late final of another fork
        if status in (401, 407) and self._retry_with_auth(resp):
            return
        self.final_status = status
        cancelled = self.state is LegState.CANCELLING
        self.state = LegState.TERMINATED
        log.info("event=leg_failed %s status=%d cancelled=%s", self.log_ctx, status, cancelled)
        if not cancelled:
            self.listener.leg_failed(self, status, tuple(resp.headers.get_all("Reason")), False)
        self._terminated()

    def _retry_with_auth(self, resp: Response) -> bool:
        if self._auth is None or self._auth_tries >= 2 or self.state is LegState.CANCELLING:
            return False
        name = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
        try:
            self._auth.on_challenge(resp.headers.get_all(name), proxy=resp.status == 407)
        except DigestError:
            return False
        self._auth_tries += 1
        self._send_invite()
        return True

    def _on_2xx(self, resp: Response) -> None:
        assert self._invite is not None
        try:
            to_tag = resp.to_addr().tag or ""
        except SipParseError:
            return
        if to_tag in self._acks:  # a retransmission: our ACK was lost
            self._send_ack(self._acks[to_tag])
            return
        try:
            dialog = Dialog.from_uac_response(self._invite, resp)
        except SipParseError:
            return
        ack = dialog.create_ack(self._invite.cseq()[0])
        self._acks[to_tag] = ack
        self._send_ack(ack, dialog)
        if self.dialog is not None or self.state in (LegState.TERMINATING, LegState.TERMINATED):
            # a second fork answered, or we already gave up: ACK and BYE it at once
            self._bye_dialog(dialog, "Q.850;cause=16")
            return
        self.dialog = dialog
        self.final_status = resp.status
        self.ua.add_dialog(dialog.call_id, dialog.local_tag, self._on_dialog_request)
        if self.state is LegState.CANCELLING:
            log.info("event=leg_answer_crossed_cancel %s", self.log_ctx)
            self._send_bye("Q.850;cause=16")
            return
        self.state = LegState.CONFIRMED
        log.info("event=leg_answered %s", self.log_ctx)
        self.listener.leg_answered(self, self._sdp_of(resp))

    def _on_stray_2xx(self, event: ResponseReceived) -> None:
        try:
            to_tag = event.response.to_addr().tag or ""
        except SipParseError:
            return
        if to_tag in self._acks:
            self._send_ack(self._acks[to_tag])

    def _send_ack(self, ack: Request, dialog: Dialog | None = None) -> None:
        dialog = dialog or self.dialog
        dest = self._next_hop(dialog) if dialog is not None else self.target.dest
        assert self.ua.transport is not None
        self.ua.transport.send_stateless(ack, dest, self.target.transport)

    def _on_invite_unreachable(self, transport_error: bool) -> None:
        if self.state in (LegState.CONFIRMED, LegState.TERMINATING, LegState.TERMINATED):
            return
        was_cancelling = self.state is LegState.CANCELLING
        self.state = LegState.TERMINATED
        self.final_status = self.final_status or 408
        log.info("event=leg_unreachable %s transport_error=%s", self.log_ctx, transport_error)
        if not was_cancelling:
            self.listener.leg_failed(self, 408, (), True)
        self._terminated()

    # ---- BYE --------------------------------------------------------------------------
    def _send_bye(self, reason: str | None) -> None:
        assert self.dialog is not None
        self.state = LegState.TERMINATING
        self._bye_dialog(self.dialog, reason)

    def _bye_dialog(self, dialog: Dialog, reason: str | None) -> None:
        extra = [("Reason", reason)] if reason else []
        bye = dialog.create_request("BYE", extra=extra)
        dialog.terminate()
        self.ua.send_request(bye, self._next_hop(dialog), self.target.transport, self._on_tx)
        log.info("event=leg_bye_sent %s", self.log_ctx)

    def _on_other_response(self, resp: Response) -> None:
        try:
            _, method = resp.cseq()
        except SipParseError:
            return
        if method == "BYE" and resp.status >= 200 and self.state is LegState.TERMINATING:
            self._terminated()

    # ---- requests inside our dialog -----------------------------------------------------
    def _on_dialog_request(self, event: RequestReceived) -> None:
        req = event.request
        dialog = self.dialog
        if dialog is None:
            return
        if req.method == "ACK":
            return
        problem = dialog.receive_request(req)
        if problem is not None:
            self.ua.answer(event, problem)
            return
        if req.method == "BYE":
            self.ua.answer(event, 200)
            if self.state is LegState.TERMINATED:
                return
            was = self.state
            self.state = LegState.TERMINATED
            log.info("event=leg_bye_received %s", self.log_ctx)
            if was is LegState.CONFIRMED:
                self.listener.leg_bye(self, tuple(req.headers.get_all("Reason")))
            self._terminated()
        elif req.method in ("INVITE", "UPDATE") and req.body:
            self._on_reoffer(event)
        else:  # OPTIONS, INFO, UPDATE without SDP, re-INVITE without SDP (we offer again)
            extra = [("Allow", ALLOW)]
            body = b""
            if req.method == "INVITE":
                body = self.answer_reinvite(None) or b""
                extra.append(("Content-Type", "application/sdp"))
            extra.append(("Contact", f"<{self.target.contact_uri}>"))
            self.ua.answer(event, 200, extra=extra, body=body)

    def _on_reoffer(self, event: RequestReceived) -> None:
        try:
            offer = parse_sdp(event.request.body)
        except SdpError:
            self.ua.answer(event, 488)
            return
        body = self.answer_reinvite(offer)
        if body is None:
            self.ua.answer(event, 488)
            return
        extra = [("Contact", f"<{self.target.contact_uri}>"), ("Content-Type", "application/sdp")]
        self.ua.answer(event, 200, extra=extra, body=body)
        log.info("event=leg_reinvite %s direction=%s", self.log_ctx, offer.direction)
        self.listener.leg_media_changed(self, offer)

    # ---- helpers ----------------------------------------------------------------------
    def _next_hop(self, dialog: Dialog) -> Addr:
        try:
            uri = dialog.next_hop()
        except SipParseError:
            return self.target.dest
        host = uri.params.get("maddr") or uri.host
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return self.target.dest  # never resolve names: the trunk is our next hop
        return host.strip("[]"), uri.port or 5060

    @staticmethod
    def _sdp_of(resp: Response) -> AudioOffer | None:
        if not resp.body:
            return None
        try:
            return parse_sdp(resp.body)
        except SdpError:
            return None

    def _terminated(self) -> None:
        self.state = LegState.TERMINATED
        if self._reported_end:
            return
        self._reported_end = True
        self.ua.forget_stray_2xx(self.call_id)
        if self.dialog is not None:
            self.ua.remove_dialog(self.dialog.call_id, self.dialog.local_tag)
        self.listener.leg_terminated(self)


class ReinviteAnswerer(Protocol):
    def __call__(self, offer: AudioOffer | None) -> bytes | None: ...
