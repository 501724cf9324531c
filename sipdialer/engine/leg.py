"""One outbound call leg: our INVITE to a phone or the trunk, and the dialog it creates.

Owns the UAC side of a leg, as a state machine over the sans-IO transaction and dialog
objects (it only sends through the :class:`UserAgent`). The leg reports to its
:class:`LegListener` (the call engine) and never decides the call's fate itself.

Theory of operation
-------------------
Every input — a command from the call, a response to our INVITE or BYE, a request from
the peer inside the dialog — goes through one table, :attr:`Leg.TABLE`,
``{state: {input: (next state, action)}}``, and :meth:`Leg._fire` is the one place that
changes the state. Unlike the transactions', the state changes *before* the action runs:
actions call the listener, which may call back in (hang this leg up, ask whether an
INVITE is still pending) and must find the new state.

    state         input                                  → state         action
    idle          invite()                               → calling       INVITE
    idle          hangup()                               → terminated
    calling,      1xx (100 Trying aside)                 → proceeding    tell the call (SDP?)
      proceeding
    calling,      401/407 we can answer (credentials,    → same          INVITE again + digest
      proceeding    under 2 tries, a usable challenge)
    calling,      2xx                                    → confirmed     tell the call (SDP)
      proceeding
    calling,      3xx with a Contact we may follow       → calling       INVITE the Contact
      proceeding    (same host or the trunk, ≤ 3 times)
    calling,      422 with a Min-SE, the first one       → calling       INVITE again asking
      proceeding                                                          that interval
    calling,      488/606 while a fallback offer is left → calling       INVITE again with it
      proceeding    (SRTP optional: RTP/SAVP, once)
    calling,      other 3xx–6xx                          → terminated    tell the call: failed
      proceeding
    calling,      timeout, transport error               → terminated    tell the call:
      proceeding                                                          unreachable (408)
    calling,      hangup()                               → cancelling    CANCEL (sent with the
      proceeding                                                          first 1xx if none yet)
    cancelling    2xx (crossed our CANCEL)               → terminating   BYE
    cancelling    3xx–6xx (the 487, a 422), timeout      → terminated
    confirmed     hangup()                               → terminating   BYE
    confirmed     BYE from the peer                      → terminated    tell the call
    terminating   BYE from the peer (crossed ours)       → terminated
    confirmed,    re-INVITE / UPDATE with SDP            → same          200 + our SDP (488 if
      terminating                                                         unusable); tell the
                                                                          call (media moved)
    confirmed,    OPTIONS / INFO, UPDATE or re-INVITE    → same          200 (+ our SDP to a
      terminating   without SDP                                           re-INVITE: an offer)
    confirmed,    ACK with SDP to the 2xx that carried   → same          tell the call (media
      terminating   our offer (offerless re-INVITE)                       moved)
    confirmed     session refresh due (we refresh)       → confirmed     UPDATE (re-INVITE
                                                                          with our SDP if the
                                                                          peer lacks UPDATE)
    confirmed     session expired (no refresh came)      → terminating   BYE (cause 41); tell
                                                                          the call
    confirmed,    2xx of another fork                    → same          BYE it
      terminating,
      terminated
    terminating   our BYE answered or timed out          → terminated
    cancelling,   hangup() again                         → same
      terminating,
      terminated

Entering terminated always ends with ``leg_terminated`` (and forgets the dialog). Some
work comes before the table, the same in every state: each 2xx to the INVITE is ACKed as
it arrives — a retransmission (our ACK was lost) with the same ACK again, also after the
transaction has ended, and only a 2xx that makes a new dialog goes on to the table; a
peer's BYE is answered 200, and an in-dialog request that fails the dialog's checks
gets the dialog's answer (481, 500); a reliable provisional response (``Require: 100rel``,
RFC 3262) is PRACKed in its early dialog (once per RSeq; retransmissions are discarded;
at most :data:`MAX_EARLY_DIALOGS` early dialogs are kept, further new to-tags are only
reported as progress), and its SDP is early media like any 18x's. An input from the
network that a state does not list is absorbed (a 1xx after our CANCEL, a late final of
another fork, the answer to a BYE of another fork); ``invite()`` outside idle raises
:class:`LegStateError`.

A re-INVITE without SDP asks us to offer (RFC 3261 §14.2, RFC 3264 §5): our 200 carries
the offer and the peer's answer comes in its ACK. Only the ACK of that re-INVITE (same
CSeq number, the first one to arrive) is taken as an answer; any other ACK, and its
retransmissions, are absorbed. An answer we cannot parse leaves the media as it was
(logged): an ACK cannot be refused.

Session timers (RFC 4028)
-------------------------
Our INVITEs say ``Supported: timer``; they ask for no interval until a 422 tells us the
smallest one the peer takes (then once more with ``Session-Expires`` = its ``Min-SE``). A
2xx with ``Session-Expires`` starts the leg's one timer (:attr:`Leg.call_later`, cancelled
as soon as the leg leaves confirmed): when ``refresher=uac`` (or none is named) we are the
refresher and refresh at half the interval (§10) — an UPDATE without SDP when the peer's
2xx allows UPDATE, else a re-INVITE with our current SDP — and the answer to the refresh
starts the next interval (a 408/481 or no answer ends the session like an expiry). When the
peer refreshes, each re-INVITE/UPDATE it sends restarts the interval and our 200 carries
``Session-Expires`` (its ``refresher``; when it named none, the peer if it supports timers,
else us) and, to a peer that supports timers, ``Require: timer``; a refresh request without
``Session-Expires`` turns the timer off (§9). If no refresh comes,
we send BYE with ``Reason: Q.850;cause=41`` at the expiry minus min(32 s, interval / 3)
(§10) and report it to the call as a BYE carrying :data:`SESSION_EXPIRED_REASON`, which
:mod:`sipdialer.engine.causes` reads as the ending ``session_timeout``. An interval in a 2xx
is taken as given (it is the peer's to choose, §7.2); a peer *request* asking for less than
:data:`MIN_SESSION_EXPIRES` gets 422 with our ``Min-SE`` (§9).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from typing import ClassVar, Protocol

from sipdialer.aio.useragent import ALLOW, UserAgent, in_dialog_refusal
from sipdialer.engine.causes import SESSION_EXPIRED_REASON
from sipdialer.engine.errors import EngineError
from sipdialer.logs import quote_value
from sipdialer.sip import ids
from sipdialer.sip.address import parse_address, parse_uri, split_commas
from sipdialer.sip.dialog import Dialog
from sipdialer.sip.digest import ClientAuthenticator, DigestError, pick_challenge
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

#: Early dialogs (to-tags of reliable 18x) a leg keeps and PRACKs in; a reliable 18x of a
#: further new tag is still reported as progress but neither PRACKed nor kept (its
#: sender retransmits it until it gives up), so a forking storm costs no memory.
MAX_EARLY_DIALOGS = 16

#: 3xx responses a leg follows at most (RFC 3261 §8.1.3.4 leaves the count to us).
MAX_REDIRECTS = 3
#: The smallest session interval (seconds) we accept in a peer's request: our Min-SE
#: (RFC 4028 §4 and §5: 90 s is the floor every implementation must accept).
MIN_SESSION_EXPIRES = 90
#: How long before the expiry the side that does not refresh sends its BYE, at most
#: (RFC 4028 §10: min(32 s, a third of the interval)).
BYE_BEFORE_EXPIRY = 32.0


class TimerHandle(Protocol):
    """What :attr:`Leg.call_later` returns: something to cancel (an asyncio TimerHandle)."""

    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], TimerHandle]


def _loop_call_later(delay: float, callback: Callable[[], None]) -> TimerHandle:
    """The default :attr:`Leg.call_later`: the running loop's (legs live in the loop)."""
    return asyncio.get_running_loop().call_later(delay, callback)


def session_expires_of(headers: Headers) -> tuple[int, str | None] | None:
    """(interval, refresher) of a ``Session-Expires`` header (RFC 4028 §4), refresher
    ``uac``/``uas`` or None; None when there is no usable header."""
    value = headers.get("Session-Expires")
    if not value:
        return None
    first, *params = (p.strip() for p in value.split(";"))
    try:
        interval = int(first)
    except ValueError:
        return None
    if interval <= 0:
        return None
    refresher = None
    for param in params:
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher" and val.strip().lower() in ("uac", "uas"):
            refresher = val.strip().lower()
    return interval, refresher


def _min_se_of(headers: Headers) -> int | None:
    try:
        value = int((headers.get("Min-SE") or "").split(";")[0].strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _options_of(headers: Headers, name: str) -> set[str]:
    return {v.strip().lower() for line in headers.get_all(name) for v in split_commas(line)}


def _ignore(_: Event) -> None:
    """Owner of our PRACK transactions: their outcome changes nothing (RFC 3262 §4)."""


Addr = tuple[str, int]


class LegStateError(EngineError):
    """The call asked a leg for something its state does not allow."""


class LegState(StrEnum):
    IDLE = "idle"
    CALLING = "calling"
    PROCEEDING = "proceeding"
    CONFIRMED = "confirmed"
    CANCELLING = "cancelling"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class LegInput(Enum):
    # from the call
    INVITE = "invite()"
    HANGUP = "hangup()"
    # from our INVITE's transaction
    RECV_1XX = "1xx to the INVITE (but 100)"
    RECV_2XX = "2xx to the INVITE making a new dialog"
    RECV_CHALLENGE = "401/407 to the INVITE that we can answer"
    RECV_REDIRECT = "3xx to the INVITE with a Contact we may follow"
    RECV_INTERVAL_TOO_SMALL = "422 to the INVITE with a Min-SE, the first one"
    RECV_NOT_ACCEPTABLE = "488/606 to the INVITE while a fallback offer is left"
    RECV_FAILURE = "3xx-6xx to the INVITE"
    INVITE_UNANSWERED = "INVITE timed out or could not be sent"
    # from our BYE's transaction
    BYE_ENDED = "our BYE answered or timed out"
    # from the peer, inside the dialog
    RECV_BYE = "BYE from the peer"
    RECV_REOFFER = "re-INVITE or UPDATE with SDP"
    RECV_REQUEST = "other in-dialog request"
    RECV_ACK_ANSWER = "ACK with SDP answering the offer in our 2xx to a re-INVITE"
    # from the leg's session timer (RFC 4028)
    SESSION_REFRESH_DUE = "half the session interval passed: we refresh"
    SESSION_EXPIRED = "the peer's refresh did not come (or ours failed)"


PROGRAM_INPUTS = frozenset({LegInput.INVITE, LegInput.HANGUP})

IDLE = LegState.IDLE
CALLING = LegState.CALLING
PROCEEDING = LegState.PROCEEDING
CONFIRMED = LegState.CONFIRMED
CANCELLING = LegState.CANCELLING
TERMINATING = LegState.TERMINATING
TERMINATED = LegState.TERMINATED

LegTable = dict[LegState, dict[LegInput, tuple[LegState, str | None]]]


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
    redirect_hosts: tuple[str, ...] = ()
    """Hosts besides the Request-URI's and ``dest`` a 3xx may send this leg to."""


class Leg:
    """An outbound INVITE leg. ``name`` is ``"agent"`` or ``"callee"``."""

    TABLE: ClassVar[LegTable] = {
        IDLE: {
            LegInput.INVITE: (CALLING, "send_invite"),
            LegInput.HANGUP: (TERMINATED, "report_end"),
        },
        CALLING: {
            LegInput.RECV_1XX: (PROCEEDING, "progress"),
            LegInput.RECV_CHALLENGE: (CALLING, "invite_with_digest"),
            LegInput.RECV_REDIRECT: (CALLING, "follow_redirect"),
            LegInput.RECV_INTERVAL_TOO_SMALL: (CALLING, "invite_with_min_se"),
            LegInput.RECV_NOT_ACCEPTABLE: (CALLING, "invite_with_fallback_offer"),
            LegInput.RECV_2XX: (CONFIRMED, "answered"),
            LegInput.RECV_FAILURE: (TERMINATED, "failed"),
            LegInput.INVITE_UNANSWERED: (TERMINATED, "unreachable"),
            LegInput.HANGUP: (CANCELLING, "send_cancel"),
        },
        PROCEEDING: {
            LegInput.RECV_1XX: (PROCEEDING, "progress"),
            LegInput.RECV_CHALLENGE: (PROCEEDING, "invite_with_digest"),
            LegInput.RECV_REDIRECT: (CALLING, "follow_redirect"),
            LegInput.RECV_INTERVAL_TOO_SMALL: (CALLING, "invite_with_min_se"),
            LegInput.RECV_NOT_ACCEPTABLE: (CALLING, "invite_with_fallback_offer"),
            LegInput.RECV_2XX: (CONFIRMED, "answered"),
            LegInput.RECV_FAILURE: (TERMINATED, "failed"),
            LegInput.INVITE_UNANSWERED: (TERMINATED, "unreachable"),
            LegInput.HANGUP: (CANCELLING, "send_cancel"),
        },
        CANCELLING: {
            LegInput.RECV_2XX: (TERMINATING, "answered_after_cancel"),
            LegInput.RECV_CHALLENGE: (TERMINATED, "cancelled"),
            LegInput.RECV_REDIRECT: (TERMINATED, "cancelled"),
            LegInput.RECV_INTERVAL_TOO_SMALL: (TERMINATED, "cancelled"),
            LegInput.RECV_NOT_ACCEPTABLE: (TERMINATED, "cancelled"),
            LegInput.RECV_FAILURE: (TERMINATED, "cancelled"),
            LegInput.INVITE_UNANSWERED: (TERMINATED, "unanswered_after_cancel"),
            LegInput.HANGUP: (CANCELLING, None),
        },
        CONFIRMED: {
            LegInput.HANGUP: (TERMINATING, "send_bye"),
            LegInput.RECV_BYE: (TERMINATED, "bye_received"),
            LegInput.RECV_REOFFER: (CONFIRMED, "answer_reoffer"),
            LegInput.RECV_REQUEST: (CONFIRMED, "answer_request"),
            LegInput.RECV_ACK_ANSWER: (CONFIRMED, "take_ack_answer"),
            LegInput.RECV_2XX: (CONFIRMED, "bye_other_fork"),
            LegInput.SESSION_REFRESH_DUE: (CONFIRMED, "send_refresh"),
            LegInput.SESSION_EXPIRED: (TERMINATING, "session_expired"),
        },
        TERMINATING: {
            LegInput.BYE_ENDED: (TERMINATED, "report_end"),
            LegInput.RECV_BYE: (TERMINATED, "bye_crossed"),
            LegInput.RECV_REOFFER: (TERMINATING, "answer_reoffer"),
            LegInput.RECV_REQUEST: (TERMINATING, "answer_request"),
            LegInput.RECV_ACK_ANSWER: (TERMINATING, "take_ack_answer"),
            LegInput.RECV_2XX: (TERMINATING, "bye_other_fork"),
            LegInput.HANGUP: (TERMINATING, None),
        },
        TERMINATED: {
            LegInput.RECV_2XX: (TERMINATED, "bye_other_fork"),
            LegInput.HANGUP: (TERMINATED, None),
        },
    }

    def __init__(
        self,
        name: str,
        ua: UserAgent,
        target: LegTarget,
        listener: LegListener,
        *,
        sdp_offer: bytes,
        answer_reinvite: ReinviteAnswerer,
        fallback_offer: Callable[[], bytes | None] | None = None,
        call_tag: str = "",
        call_later: CallLater = _loop_call_later,
    ) -> None:
        self.name = name
        self.ua = ua
        self.target = target
        self.listener = listener
        self.sdp_offer = sdp_offer
        self.answer_reinvite = answer_reinvite
        self.fallback_offer = fallback_offer
        """Gives the offer to INVITE with once more after a 488/606 (None: none left),
        e.g. an RTP/SAVP offer after a best-effort SRTP one was refused."""
        self.fallback_offered = False
        """Whether the leg's INVITE went out again with the fallback offer."""
        self.log_ctx = f"call={call_tag} leg={name}"
        self.state = IDLE
        self.call_id = ids.token_hex(12)
        self.from_tag = ids.token_hex(6)
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
        self._early: dict[str, Dialog] = {}  # to-tag → early dialog we PRACKed in
        self._rseq: dict[str, int] = {}  # to-tag → highest RSeq PRACKed
        self._early_capped = False  # a reliable 18x of a new tag beyond the cap was seen
        self._offered_in: int | None = None  # CSeq of the re-INVITE our 2xx offered to
        self.redirects: list[str] = []
        """Request-URIs we followed 3xx responses to, in order (for the CDR)."""
        self.call_later = call_later
        """Arms the session timer: ``call_later(seconds, callback)`` → a handle to cancel."""
        self.session_interval: int | None = None
        """The session interval in force (RFC 4028), None while there is none."""
        self.we_refresh = False
        """Whether we are the refresher of the current interval."""
        self._session_timer: TimerHandle | None = None
        self._asked_interval: int | None = None  # Session-Expires our INVITE asks (after 422)
        self._peer_allows_update = False

    # ---- commands from the call ----------------------------------------------------------
    def invite(self) -> None:
        """Send the INVITE; raises LegStateError unless the leg is idle."""
        self._fire(LegInput.INVITE)

    def hangup(self, reason: str | None = None) -> None:
        """End this leg however its state requires (CANCEL, BYE, or nothing)."""
        self._fire(LegInput.HANGUP, reason=reason)

    # ---- the machine ----------------------------------------------------------------------
    def _fire(self, event: LegInput, /, **payload: object) -> None:
        """Take ``event``'s row for the current state: change the state, then act."""
        row = self.TABLE[self.state]
        if event not in row:
            if event in PROGRAM_INPUTS:
                raise LegStateError(
                    f"{self.name} leg: {event.value} is not allowed in {self.state}"
                )
            return  # absorbed
        self.state, action = row[event]
        if self.state is not CONFIRMED:
            self._stop_session_timer()
        if action is not None:
            getattr(self, f"_{action}")(**payload)

    # ---- what the network says, sorted into inputs ---------------------------------------
    def _on_tx(self, event: Event) -> None:
        if isinstance(event, ResponseReceived):
            if event.transaction is self.invite_tx:
                self._on_invite_response(event.response)
            else:
                self._on_other_response(event.response)
        elif isinstance(event, TransactionTimeout | TransportError):
            if event.transaction is self.invite_tx:
                self._fire(
                    LegInput.INVITE_UNANSWERED, transport_error=isinstance(event, TransportError)
                )
            else:
                self._fire(LegInput.BYE_ENDED)

    def _on_invite_response(self, resp: Response) -> None:
        status = resp.status
        if status < 200:
            if status != 100 and self._take_reliably(resp):
                self._fire(LegInput.RECV_1XX, response=resp)
        elif status < 300:
            dialog = self._ack_2xx(resp)
            if dialog is not None:
                self._fire(LegInput.RECV_2XX, response=resp, dialog=dialog)
        elif status in (401, 407) and self._can_answer(resp):
            self._fire(LegInput.RECV_CHALLENGE, response=resp)
        elif status == 422 and self._asked_interval is None and _min_se_of(resp.headers):
            self._fire(LegInput.RECV_INTERVAL_TOO_SMALL, response=resp)
        elif status < 400 and (uri := self._redirect_target(resp)) is not None:
            self._fire(LegInput.RECV_REDIRECT, response=resp, uri=uri)
        elif status in (488, 606) and (offer := self._take_fallback_offer()) is not None:
            self._fire(LegInput.RECV_NOT_ACCEPTABLE, response=resp, offer=offer)
        else:
            self._fire(LegInput.RECV_FAILURE, response=resp)

    def _take_fallback_offer(self) -> bytes | None:
        """The fallback offer, taken once (None: none, or already used)."""
        if self.fallback_offer is None or self.fallback_offered:
            return None
        offer = self.fallback_offer()
        if offer is not None:
            self.fallback_offered = True
        return offer

    def _can_answer(self, resp: Response) -> bool:
        """A 401/407 we have credentials for, have not answered twice, and can read."""
        if self._auth is None or self._auth_tries >= 2:
            return False
        try:
            pick_challenge(resp.headers.get_all(_challenge_header(resp)))
        except DigestError:
            return False
        return True

    def _take_reliably(self, resp: Response) -> bool:
        """A 1xx is taken (True) unless it is a retransmitted reliable one; a new reliable
        one (RFC 3262: ``Require: 100rel`` and an RSeq) is PRACKed in its early dialog."""
        required = {v.strip().lower() for v in split_commas(resp.headers.get("Require") or "")}
        if "100rel" not in required:
            return True
        try:
            rseq = int((resp.headers.get("RSeq") or "").strip())
            to_tag = resp.to_addr().tag or ""
        except (ValueError, SipParseError):
            return True  # unusable as reliable: taken as a plain provisional
        if not to_tag or rseq <= self._rseq.get(to_tag, -1):
            return False  # a retransmission (our PRACK is on its way) or no dialog
        assert self._invite is not None
        dialog = self._early.get(to_tag)
        if dialog is None and len(self._early) >= MAX_EARLY_DIALOGS:
            if not self._early_capped:  # a forking storm: progress only, no state kept
                self._early_capped = True
                log.warning(
                    "event=leg_early_dialogs_capped %s max=%d", self.log_ctx, MAX_EARLY_DIALOGS
                )
            return True
        if dialog is None:
            try:
                dialog = Dialog.from_uac_response(self._invite, resp)
            except SipParseError:
                return True
            self._early[to_tag] = dialog
        else:
            dialog.update_from_response(resp)
        self._rseq[to_tag] = rseq
        invite_seq = self._invite.cseq()[0]
        prack = dialog.create_request("PRACK", extra=[("RAck", f"{rseq} {invite_seq} INVITE")])
        self.ua.send_request(prack, self._next_hop(dialog), self.target.transport, _ignore)
        log.info("event=leg_prack %s rseq=%d", self.log_ctx, rseq)
        return True

    def _redirect_target(self, resp: Response) -> str | None:
        """The Contact of a 3xx to follow: a sip: URI on the host we called or the trunk's
        address, at most :data:`MAX_REDIRECTS` times; None when there is none."""
        if len(self.redirects) >= MAX_REDIRECTS:
            return None
        allowed = {parse_uri(self.target.request_uri).host.lower(), self.target.dest[0].lower()}
        allowed |= {u.lower() for u in self.target.redirect_hosts}
        candidates: list[tuple[float, str]] = []
        for value in resp.headers.values("Contact"):
            try:
                address = parse_address(value)
                uri = address.sip_uri
            except SipParseError:
                continue
            try:
                q = float(address.params.get("q") or 1.0)
            except ValueError:
                q = 0.0
            if uri.scheme == "sip" and uri.host.strip("[]").lower() in allowed:
                candidates.append((q, address.uri))
        seen = {self.target.request_uri, *self.redirects}
        for _, uri_text in sorted(candidates, key=lambda c: -c[0]):
            if uri_text not in seen:
                return uri_text
        return None

    def _ack_2xx(self, resp: Response) -> Dialog | None:
        """ACK a 2xx to our INVITE: again with the same ACK for a retransmission (None),
        else with a new one for the new dialog it makes, which is returned."""
        assert self._invite is not None
        try:
            to_tag = resp.to_addr().tag or ""
        except SipParseError:
            return None
        if to_tag in self._acks:  # a retransmission: our ACK was lost
            self._send_ack(self._acks[to_tag])
            return None
        try:
            dialog = Dialog.from_uac_response(self._invite, resp)
        except SipParseError:
            return None
        early = self._early.get(to_tag)
        if early is not None and (early.local_seq or 0) > (dialog.local_seq or 0):
            dialog.local_seq = early.local_seq  # our PRACKs used CSeq numbers of the dialog
        ack = dialog.create_ack(self._invite.cseq()[0])
        self._acks[to_tag] = ack
        self._send_ack(ack, dialog)
        return dialog

    def _on_stray_2xx(self, event: ResponseReceived) -> None:
        try:
            to_tag = event.response.to_addr().tag or ""
        except SipParseError:
            return
        if to_tag in self._acks:
            self._send_ack(self._acks[to_tag])

    def _on_other_response(self, resp: Response) -> None:
        try:
            _, method = resp.cseq()
        except SipParseError:
            return
        if method == "BYE" and resp.status >= 200:
            self._fire(LegInput.BYE_ENDED)

    def _on_dialog_request(self, event: RequestReceived) -> None:
        """A request inside our dialog: the dialog's checks first (481, 500), then the
        methods we do not act on get :func:`in_dialog_refusal`'s answer (405, 481, 420,
        501: the table in :mod:`sipdialer.aio.useragent`); the rest go to the table."""
        req = event.request
        dialog = self.dialog
        if dialog is None:
            return
        if req.method == "ACK":
            if self._answers_our_offer(dialog, req):
                self._fire(LegInput.RECV_ACK_ANSWER, received=event)
            return
        problem = dialog.receive_request(req)
        refusal = in_dialog_refusal(req) if problem is None else None
        if problem is not None:
            self.ua.answer(event, problem)
        elif refusal is not None:  # REFER, SUBSCRIBE, NOTIFY, MESSAGE, PRACK, Require: …
            self.ua.answer(event, refusal.status, refusal.reason, extra=list(refusal.headers))
        elif req.method == "BYE":
            self.ua.answer(event, 200)
            self._fire(LegInput.RECV_BYE, received=event)
        elif req.method in ("INVITE", "UPDATE") and req.body:
            self._fire(LegInput.RECV_REOFFER, received=event)
        else:  # OPTIONS, INFO, UPDATE without SDP, re-INVITE without SDP (we offer again)
            self._fire(LegInput.RECV_REQUEST, received=event)

    def _answers_our_offer(self, dialog: Dialog, ack: Request) -> bool:
        """Whether ``ack`` is the first ACK of the re-INVITE whose 2xx carried our offer
        (then it carries the answer); that offer is settled either way."""
        if self._offered_in is None or not dialog.matches(ack):
            return False
        try:
            number, _ = ack.cseq()
        except SipParseError:
            return False
        if number != self._offered_in:
            return False
        self._offered_in = None
        if not ack.body:
            log.warning("event=leg_ack_without_answer %s", self.log_ctx)
            return False
        return True

    # ---- actions ----------------------------------------------------------------------------
    def _send_invite(self, **_: object) -> None:
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
                ("Supported", "100rel, timer"),
                ("Content-Type", "application/sdp"),
            ]
        )
        if self._asked_interval is not None:
            headers.add("Session-Expires", str(self._asked_interval))
            headers.add("Min-SE", str(self._asked_interval))
        for name, value in t.extra_headers:
            headers.add(name, value)
        if self._auth is not None:
            for name, value in self._auth.authorize(method="INVITE", uri=t.request_uri):
                headers.add(name, value)
        self._invite = Request("INVITE", t.request_uri, headers, self.sdp_offer)
        self.invite_tx = self.ua.send_request(self._invite, t.dest, t.transport, self._on_tx)
        self.ua.on_stray_2xx(self.call_id, self._on_stray_2xx)
        log.info(
            "event=leg_invite %s uri=%s dest=%s:%d transport=%s",
            self.log_ctx,
            t.request_uri,
            *t.dest,
            t.transport.lower(),
        )

    def _invite_with_digest(self, *, response: Response, **_: object) -> None:
        assert self._auth is not None
        self._auth.on_challenge(
            response.headers.get_all(_challenge_header(response)), proxy=response.status == 407
        )
        self._auth_tries += 1
        self._send_invite()

    def _invite_with_min_se(self, *, response: Response, **_: object) -> None:
        """422 Session Interval Too Small (RFC 4028 §7.4): ask once more with its Min-SE."""
        self._asked_interval = _min_se_of(response.headers)
        log.info("event=leg_interval_too_small %s min_se=%s", self.log_ctx, self._asked_interval)
        self._send_invite()

    def _invite_with_fallback_offer(self, *, response: Response, offer: bytes, **_: object) -> None:
        """488/606 to our offer: INVITE once more with the fallback offer (RFC 3261 §21.4.26:
        the Warning says why; a best-effort SRTP offer refused by an RTP/SAVP-only callee)."""
        log.info("event=leg_reoffer %s status=%d", self.log_ctx, response.status)
        self.sdp_offer = offer
        self._send_invite()

    def _follow_redirect(self, *, response: Response, uri: str, **_: object) -> None:
        log.info(
            "event=leg_redirected %s status=%d to=%s",
            self.log_ctx,
            response.status,
            quote_value(uri),
        )
        self.redirects.append(uri)
        self.target = replace(self.target, request_uri=uri)
        self._auth_tries = 0
        self._send_invite()

    def _progress(self, *, response: Response, **_: object) -> None:
        self.listener.leg_progress(self, response.status, self._sdp_of(response))

    def _answered(self, *, response: Response, dialog: Dialog, **_: object) -> None:
        self._adopt(dialog, response)
        log.info("event=leg_answered %s", self.log_ctx)
        self._peer_allows_update = "update" in _options_of(response.headers, "Allow")
        self._start_session(session_expires_of(response.headers), we_sent_it=True)
        self.listener.leg_answered(self, self._sdp_of(response))

    def _answered_after_cancel(self, *, response: Response, dialog: Dialog, **_: object) -> None:
        self._adopt(dialog, response)
        log.info("event=leg_answer_crossed_cancel %s", self.log_ctx)
        self._bye_dialog(dialog, "Q.850;cause=16")

    def _bye_other_fork(self, *, dialog: Dialog, **_: object) -> None:
        """A second fork answered, or we had already given up: BYE it at once."""
        self._bye_dialog(dialog, "Q.850;cause=16")

    def _failed(self, *, response: Response, **_: object) -> None:
        self.final_status = response.status
        log.info("event=leg_failed %s status=%d cancelled=False", self.log_ctx, response.status)
        reason = tuple(response.headers.get_all("Reason"))
        self.listener.leg_failed(self, response.status, reason, False)
        self._report_end()

    def _cancelled(self, *, response: Response, **_: object) -> None:
        self.final_status = response.status
        log.info("event=leg_failed %s status=%d cancelled=True", self.log_ctx, response.status)
        self._report_end()

    def _unreachable(self, *, transport_error: bool, **_: object) -> None:
        self._note_unanswered(transport_error)
        self.listener.leg_failed(self, 408, (), True)
        self._report_end()

    def _unanswered_after_cancel(self, *, transport_error: bool, **_: object) -> None:
        self._note_unanswered(transport_error)
        self._report_end()

    def _send_cancel(self, *, reason: str | None, **_: object) -> None:
        if self.invite_tx is not None:
            self.ua.send_cancel(self.invite_tx, reason)
        log.info("event=leg_cancel %s", self.log_ctx)

    def _send_bye(self, *, reason: str | None, **_: object) -> None:
        assert self.dialog is not None
        self._bye_dialog(self.dialog, reason)

    def _bye_received(self, *, received: RequestReceived, **_: object) -> None:
        log.info("event=leg_bye_received %s", self.log_ctx)
        self.listener.leg_bye(self, tuple(received.request.headers.get_all("Reason")))
        self._report_end()

    def _bye_crossed(self, **_: object) -> None:
        log.info("event=leg_bye_received %s", self.log_ctx)
        self._report_end()

    def _answer_reoffer(self, *, received: RequestReceived, **_: object) -> None:
        if self._refused_interval(received):
            return
        if received.request.method == "INVITE":
            self._offered_in = None  # a new offer from the peer replaces the one we made
        try:
            offer = parse_sdp(received.request.body)
        except SdpError:
            self.ua.answer(received, 488)
            return
        body = self.answer_reinvite(offer)
        if body is None:
            self.ua.answer(received, 488)
            return
        extra = [("Contact", f"<{self.target.contact_uri}>"), ("Content-Type", "application/sdp")]
        extra += self._peer_refreshed(received.request)
        self.ua.answer(received, 200, extra=extra, body=body)
        log.info("event=leg_reinvite %s direction=%s", self.log_ctx, offer.direction)
        self.listener.leg_media_changed(self, offer)

    def _answer_request(self, *, received: RequestReceived, **_: object) -> None:
        if self._refused_interval(received):
            return
        extra = [("Allow", ALLOW)]
        body = b""
        if received.request.method == "INVITE":
            body = self.answer_reinvite(None) or b""
            extra.append(("Content-Type", "application/sdp"))
            self._offered_in = received.request.cseq()[0] if body else None
        extra.append(("Contact", f"<{self.target.contact_uri}>"))
        extra += self._peer_refreshed(received.request)
        self.ua.answer(received, 200, extra=extra, body=body)

    def _send_refresh(self, **_: object) -> None:
        """We are the refresher and half the interval has passed (RFC 4028 §10)."""
        dialog = self.dialog
        assert dialog is not None and self.session_interval is not None
        extra = [
            ("Session-Expires", f"{self.session_interval};refresher=uac"),
            ("Supported", "timer"),
        ]
        if self._peer_allows_update:
            request = dialog.create_request("UPDATE", extra=extra)
        else:
            body = self.answer_reinvite(None) or self.sdp_offer
            extra += [("Allow", ALLOW), ("Content-Type", "application/sdp")]
            request = dialog.create_request("INVITE", body=body, extra=extra)
        self.ua.send_request(
            request, self._next_hop(dialog), self.target.transport, self._on_refresh_tx
        )
        # until its answer starts the next interval, the session runs out as it would
        self._arm_session_timer(self._expiry_delay() - self.session_interval / 2)
        log.info(
            "event=leg_session_refresh %s method=%s interval=%d",
            self.log_ctx,
            request.method,
            self.session_interval,
        )

    def _session_expired(self, **_: object) -> None:
        assert self.dialog is not None
        log.info("event=leg_session_expired %s interval=%s", self.log_ctx, self.session_interval)
        self._bye_dialog(self.dialog, SESSION_EXPIRED_REASON)
        self.listener.leg_bye(self, (SESSION_EXPIRED_REASON,))

    def _take_ack_answer(self, *, received: RequestReceived, **_: object) -> None:
        """The peer's answer to our offer, in its ACK: the media follows it."""
        try:
            answer = parse_sdp(received.request.body)
        except SdpError as exc:
            log.warning(
                "event=leg_ack_answer_unusable %s error=%s", self.log_ctx, quote_value(str(exc))
            )
            return
        log.info("event=leg_ack_answer %s direction=%s", self.log_ctx, answer.direction)
        self.listener.leg_media_changed(self, answer)

    def _report_end(self, **_: object) -> None:
        """The leg has ended: forget its 2xx hook and dialog, and tell the call."""
        self.ua.forget_stray_2xx(self.call_id)
        if self.dialog is not None:
            self.ua.remove_dialog(self.dialog.call_id, self.dialog.local_tag)
        self.listener.leg_terminated(self)

    # ---- the session timer (RFC 4028) --------------------------------------------------------
    def _start_session(self, params: tuple[int, str | None] | None, *, we_sent_it: bool) -> None:
        """A 2xx to our (re-)INVITE/UPDATE, or a peer's refresh we answer, sets the interval
        in force (None: no timer): ``refresher=uac`` names the side that sent the request
        (a 2xx naming none leaves it to us, the UAC: §7.2)."""
        if params is None:
            self.session_interval = None
            self._stop_session_timer()
            return
        self.session_interval, refresher = params
        self.we_refresh = (refresher or "uac") == ("uac" if we_sent_it else "uas")
        if self.we_refresh:
            self._arm_session_timer(self.session_interval / 2, LegInput.SESSION_REFRESH_DUE)
        else:
            self._arm_session_timer(self._expiry_delay())

    def _expiry_delay(self) -> float:
        """From the start of an interval to our BYE if no refresh comes (§10)."""
        assert self.session_interval is not None
        interval = self.session_interval
        return interval - min(BYE_BEFORE_EXPIRY, interval / 3)

    def _arm_session_timer(self, delay: float, event: LegInput = LegInput.SESSION_EXPIRED) -> None:
        self._stop_session_timer()
        self._session_timer = self.call_later(max(delay, 0.0), lambda: self._session_due(event))

    def _session_due(self, event: LegInput) -> None:
        self._session_timer = None
        self._fire(event)

    def _stop_session_timer(self) -> None:
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None

    def _on_refresh_tx(self, event: Event) -> None:
        """The answer to our refresh: a 2xx starts the next interval (and a re-INVITE's is
        ACKed); 408, 481 or no answer end the session (RFC 4028 §10); a 422 asks again
        with its Min-SE; any other failure leaves the expiry armed."""
        if isinstance(event, TransactionTimeout | TransportError):
            if self.state is CONFIRMED:
                self._fire(LegInput.SESSION_EXPIRED)
            return
        if not isinstance(event, ResponseReceived) or self.dialog is None:
            return
        resp = event.response
        try:
            seq, method = resp.cseq()
        except SipParseError:
            return
        if resp.status < 200:
            return
        if method == "INVITE" and resp.status < 300:
            self._send_ack(self.dialog.create_ack(seq))
        if self.state is not CONFIRMED:
            return
        if resp.status < 300:
            self._start_session(session_expires_of(resp.headers), we_sent_it=True)
        elif resp.status in (408, 481):
            self._fire(LegInput.SESSION_EXPIRED)
        elif (
            resp.status == 422
            and (min_se := _min_se_of(resp.headers)) is not None
            and self.session_interval is not None
            and min_se > self.session_interval
        ):
            self.session_interval = min_se  # ask again with the peer's minimum
            self._fire(LegInput.SESSION_REFRESH_DUE)

    def _refused_interval(self, received: RequestReceived) -> bool:
        """A peer's request asking for a session interval under our Min-SE is answered 422
        (RFC 4028 §9) and changes nothing; True when it was."""
        params = session_expires_of(received.request.headers)
        if params is None or params[0] >= MIN_SESSION_EXPIRES:
            return False
        extra = [("Min-SE", str(MIN_SESSION_EXPIRES))]
        self.ua.answer(received, 422, "Session Interval Too Small", extra=extra)
        return True

    def _peer_refreshed(self, req: Request) -> list[tuple[str, str]]:
        """A re-INVITE/UPDATE we answer 200 is a refresh (RFC 4028 §9): restart the
        interval it names and return the headers our 200 carries for it."""
        if self.state is not CONFIRMED:
            return []
        params = session_expires_of(req.headers)
        if params is None:
            self._start_session(None, we_sent_it=False)
            return []
        interval, refresher = params
        peer_has_timers = "timer" in (
            _options_of(req.headers, "Supported") | _options_of(req.headers, "Require")
        )
        if refresher is None:  # ours to choose: the peer if it knows timers, else us (§9)
            refresher = "uac" if peer_has_timers else "uas"
        self._start_session((interval, refresher), we_sent_it=False)
        headers = [("Session-Expires", f"{interval};refresher={refresher}")]
        if peer_has_timers:
            headers.append(("Require", "timer"))
        return headers

    # ---- what the actions share ----------------------------------------------------------
    def _adopt(self, dialog: Dialog, response: Response) -> None:
        self.dialog = dialog
        self.final_status = response.status
        self.ua.add_dialog(dialog.call_id, dialog.local_tag, self._on_dialog_request)

    def _note_unanswered(self, transport_error: bool) -> None:
        self.final_status = self.final_status or 408
        log.info("event=leg_unreachable %s transport_error=%s", self.log_ctx, transport_error)

    def _bye_dialog(self, dialog: Dialog, reason: str | None) -> None:
        extra = [("Reason", reason)] if reason else []
        bye = dialog.create_request("BYE", extra=extra)
        dialog.terminate()
        self.ua.send_request(bye, self._next_hop(dialog), self.target.transport, self._on_tx)
        log.info("event=leg_bye_sent %s", self.log_ctx)

    def _send_ack(self, ack: Request, dialog: Dialog | None = None) -> None:
        dialog = dialog or self.dialog
        dest = self._next_hop(dialog) if dialog is not None else self.target.dest
        assert self.ua.transport is not None
        self.ua.transport.send_stateless(ack, dest, self.target.transport)

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


def _challenge_header(resp: Response) -> str:
    return "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"


class ReinviteAnswerer(Protocol):
    def __call__(self, offer: AudioOffer | None) -> bytes | None: ...
