"""The user-agent core: who gets each SIP event, and our answer to requests nobody owns.

Owns the dispatch of endpoint events to their owners — a client transaction's owner
(registration, a call leg) and a dialog's owner (a call) — and the policy for everything
else, so the service is a good citizen and no open relay:

* OPTIONS outside a dialog → 200 with Allow, Accept and Supported;
* INVITE outside a dialog → 403: we only place calls, we never take them;
* REGISTER → 405 unless a registrar is installed (the extensions issue);
* a request that requires an extension we lack → 420 with Unsupported;
* a known but unsupported method → 405 with Allow; an unknown method → 501;
* an in-dialog request for a dialog we do not know → 481; a stray ACK → dropped.

Every one of those answers is *stateless* (RFC 3261 §8.2.7; Kamailio's ``sl_send_reply``):
:meth:`UserAgent.attach` installs :meth:`UserAgent.stateless_answer` as the endpoint's
policy, so the endpoint answers them before it creates a server transaction — nothing is
kept for 32 s, a refused INVITE's 403 is sent once (not retransmitted on Timer G to a
source that never ACKs) and a retransmitted request is simply answered again. Only
REGISTER to the registrar and requests inside our dialogs get a transaction and reach
their owner. A refused INVITE is logged at most :data:`REFUSAL_LOG_PER_SOURCE` times a
second per source (then with ``suppressed=N``), its network fields quoted.

Inside a dialog the owner (:mod:`sipdialer.engine.leg`) acts on BYE, re-INVITE, UPDATE,
OPTIONS and INFO, and answers everything else as :func:`in_dialog_refusal` decides:

    request inside a dialog                        → answer
    Require: an option we do not support           → 420 Bad Extension + Unsupported
      (any method but BYE, which always ends the call, and ACK/CANCEL, RFC 3261 §8.2.2.3;
      we support ``timer``, RFC 4028, so a refresh requiring it reaches the leg)
    REFER, SUBSCRIBE, MESSAGE, PUBLISH, REGISTER   → 405 Method Not Allowed + Allow
      (known methods we do not act on: §8.2.1; we transfer nothing, hold no
      subscription and take no messages)
    NOTIFY                                         → 481 (no subscription exists:
                                                     RFC 6665 §4.1.3)
    PRACK                                          → 481 (we never send a reliable
      provisional — we are the UAC of every INVITE and support no 100rel — so no PRACK
      can match one: RFC 3262 §3)
    a method we do not know                        → 501 Not Implemented + Allow
    BYE, INVITE, UPDATE, OPTIONS, INFO, ACK, CANCEL → None: the owner acts
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sipdialer.aio.transport import SipTransport
from sipdialer.logs import LogThrottle, quote_value
from sipdialer.sip.endpoint import UasAnswer
from sipdialer.sip.errors import SipParseError
from sipdialer.sip.events import (
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
)
from sipdialer.sip.message import Request
from sipdialer.sip.transaction import ClientTransaction

log = logging.getLogger("sipdialer.sip")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
ACCEPT = "application/sdp"
SUPPORTED = "timer"
"""Options a request may Require of us: ``timer`` (RFC 4028 session timers: the call leg
answers refreshes and runs the timer). Not ``100rel``: we never send reliable provisionals."""
KNOWN_METHODS = frozenset(
    "INVITE ACK CANCEL BYE OPTIONS REGISTER INFO UPDATE PRACK SUBSCRIBE NOTIFY REFER "
    "MESSAGE PUBLISH".split()
)

OPTIONS_HEADERS = (("Allow", ALLOW), ("Accept", ACCEPT), ("Accept-Language", "en"))
REFUSAL_LOG_PER_SOURCE = 5
"""Refused INVITEs logged per second per source IP (the rest are counted)."""
REFUSAL_LOG_TOTAL = 50
"""… and over all sources."""
LOGGED_HEADER_LIMIT = 200
"""Characters of a header value from the network that reach a log line."""

IN_DIALOG_ACTED_ON = frozenset({"BYE", "INVITE", "UPDATE", "OPTIONS", "INFO", "ACK", "CANCEL"})
IN_DIALOG_NO_MATCH = frozenset({"NOTIFY", "PRACK"})

TxHandler = Callable[[Event], None]
RequestHandler = Callable[[RequestReceived], None]


def unsupported_requirements(req: Request) -> list[str]:
    """The Require options of ``req`` that we do not support (RFC 3261 §8.2.2.3)."""
    supported = {opt.strip().lower() for opt in SUPPORTED.split(",") if opt.strip()}
    return [opt for opt in req.headers.values("Require") if opt and opt.lower() not in supported]


def in_dialog_refusal(req: Request) -> UasAnswer | None:
    """The answer to a request inside one of our dialogs that the dialog's owner does not
    act on (see the table in the module docstring), or None when the owner acts on it."""
    method = req.method
    if method in ("ACK", "CANCEL"):
        return None
    if method != "BYE":
        unsupported = unsupported_requirements(req)
        if unsupported:
            return UasAnswer(420, None, (("Unsupported", ", ".join(unsupported)),))
    if method in IN_DIALOG_ACTED_ON:
        return None
    if method in IN_DIALOG_NO_MATCH:
        return UasAnswer(481, "Call/Transaction Does Not Exist")
    if method in KNOWN_METHODS:
        return UasAnswer(405, None, (("Allow", ALLOW),))
    return UasAnswer(501, None, (("Allow", ALLOW),))


class UserAgent:
    """Dispatches one endpoint's events to their owners and answers what nobody owns."""

    def __init__(self) -> None:
        self.transport: SipTransport | None = None
        self._tx_owners: dict[int, TxHandler] = {}
        self._dialogs: dict[tuple[str, str], RequestHandler] = {}
        self._stray_2xx: dict[str, Callable[[ResponseReceived], None]] = {}
        self.registrar: RequestHandler | None = None
        self.refusal_log = LogThrottle(per_key=REFUSAL_LOG_PER_SOURCE, total=REFUSAL_LOG_TOTAL)
        """Budget of ``sip_invite_refused`` lines (its ``suppressed_total`` counts drops)."""
        self.clock: Callable[[], float] = time.monotonic
        """The time the log budget runs on."""

    def attach(self, transport: SipTransport) -> None:
        """Send and receive through ``transport``; its endpoint answers what nobody owns
        statelessly, as :meth:`stateless_answer` decides."""
        self.transport = transport
        transport.endpoint.stateless_policy = self.stateless_answer

    # ---- ownership --------------------------------------------------------------------------
    def send_request(
        self, request: Request, dest: tuple[str, int], transport: str, owner: TxHandler
    ) -> ClientTransaction:
        assert self.transport is not None
        tx = self.transport.send_request(request, dest, transport)
        self._tx_owners[id(tx)] = owner
        return tx

    def send_cancel(self, invite_tx: ClientTransaction, reason: str | None = None) -> None:
        assert self.transport is not None
        self.transport.send_cancel(invite_tx, reason)

    def add_dialog(self, call_id: str, local_tag: str, handler: RequestHandler) -> None:
        self._dialogs[(call_id, local_tag)] = handler

    def remove_dialog(self, call_id: str, local_tag: str) -> None:
        self._dialogs.pop((call_id, local_tag), None)

    def on_stray_2xx(self, call_id: str, handler: Callable[[ResponseReceived], None]) -> None:
        self._stray_2xx[call_id] = handler

    def forget_stray_2xx(self, call_id: str) -> None:
        self._stray_2xx.pop(call_id, None)

    # ---- dispatch ---------------------------------------------------------------------------
    def handle_event(self, event: Event) -> None:
        if isinstance(event, RequestReceived):
            self._on_request(event)
            return
        if isinstance(event, ResponseReceived):
            if event.transaction is None:
                handler = self._stray_2xx.get(event.response.call_id)
                if handler is not None:
                    handler(event)
                return
            owner = self._tx_owners.get(id(event.transaction))
            if owner is not None:
                owner(event)  # finals too: an INVITE's 2xx retransmissions come here
            return
        if isinstance(event, TransactionTimeout | TransportError):
            owner = self._tx_owners.pop(id(event.transaction), None)
            if owner is not None:
                owner(event)
        elif isinstance(event, TransactionTerminated):
            self._tx_owners.pop(id(event.transaction), None)

    def _owner(self, req: Request) -> RequestHandler | None:
        """Who acts on ``req``: the dialog it belongs to, or the registrar for a REGISTER
        outside any dialog; None when nobody owns it."""
        to_tag = _to_tag(req)
        if to_tag:
            return self._dialogs.get((req.call_id, to_tag))
        if req.method == "REGISTER":
            return self.registrar
        return None

    def stateless_answer(
        self, req: Request, source: tuple[str, int], transport: str
    ) -> UasAnswer | None:
        """The endpoint's stateless policy: our answer to a new request nobody owns, or
        None for one that goes to its owner in a transaction."""
        if req.method == "ACK" or self._owner(req) is not None:
            return None
        return self._answer_for_unowned(req, source)

    def _on_request(self, event: RequestReceived) -> None:
        req = event.request
        handler = self._owner(req)
        if handler is not None:
            handler(event)
            return
        if req.method == "ACK":
            return  # an ACK for a non-2xx is absorbed by its transaction; others are strays
        # only without a stateless policy (an endpoint not attached through attach())
        answer = self._answer_for_unowned(req, event.source)
        self.answer(event, answer.status, answer.reason, extra=list(answer.headers))

    def _answer_for_unowned(self, req: Request, source: tuple[str, int]) -> UasAnswer:
        if _to_tag(req) or req.method == "CANCEL":
            return UasAnswer(481)  # a dialog or transaction we do not know
        unsupported = unsupported_requirements(req)
        if unsupported:
            return UasAnswer(420, None, (("Unsupported", ", ".join(unsupported)),))
        if req.method == "OPTIONS":
            return UasAnswer(200, None, OPTIONS_HEADERS)
        if req.method == "INVITE":
            self._log_refused_invite(req, source)
            return UasAnswer(403, "Forbidden (no incoming calls)")
        if req.method in KNOWN_METHODS:
            return UasAnswer(405, None, (("Allow", ALLOW),))
        return UasAnswer(501, None, (("Allow", ALLOW),))

    def _log_refused_invite(self, req: Request, source: tuple[str, int]) -> None:
        suppressed = self.refusal_log.admit(source[0], self.clock())
        if suppressed is None:
            return
        log.info(
            "event=sip_invite_refused source=%s port=%d from=%s to=%s user_agent=%s%s",
            quote_value(source[0]),
            source[1],
            quote_value(req.headers.get("From") or "", limit=LOGGED_HEADER_LIMIT),
            quote_value(req.headers.get("To") or "", limit=LOGGED_HEADER_LIMIT),
            quote_value(req.headers.get("User-Agent") or "", limit=LOGGED_HEADER_LIMIT),
            f" suppressed={suppressed}" if suppressed else "",
        )

    def answer(
        self,
        event: RequestReceived,
        status: int,
        reason: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        assert self.transport is not None
        if event.transaction is None:
            return
        response = self.transport.endpoint.response_to(
            event.request, status, reason, extra=extra or [], body=body
        )
        self.transport.respond(event.transaction, response)


def _to_tag(req: Request) -> str | None:
    try:
        return req.to_addr().tag
    except (SipParseError, ValueError):
        return None
