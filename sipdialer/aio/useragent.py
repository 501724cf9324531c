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
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sipdialer.aio.transport import SipTransport
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
SUPPORTED = ""
KNOWN_METHODS = frozenset(
    "INVITE ACK CANCEL BYE OPTIONS REGISTER INFO UPDATE PRACK SUBSCRIBE NOTIFY REFER "
    "MESSAGE PUBLISH".split()
)

TxHandler = Callable[[Event], None]
RequestHandler = Callable[[RequestReceived], None]


class UserAgent:
    def __init__(self) -> None:
        self.transport: SipTransport | None = None
        self._tx_owners: dict[int, TxHandler] = {}
        self._dialogs: dict[tuple[str, str], RequestHandler] = {}
        self._stray_2xx: dict[str, Callable[[ResponseReceived], None]] = {}
        self.registrar: RequestHandler | None = None

    def attach(self, transport: SipTransport) -> None:
        self.transport = transport

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

    def _on_request(self, event: RequestReceived) -> None:
        req = event.request
        try:
            to_tag = req.to_addr().tag
        except ValueError:
            to_tag = None
        if to_tag:
            handler = self._dialogs.get((req.call_id, to_tag))
            if handler is not None:
                handler(event)
                return
            if req.method != "ACK":
                self.answer(event, 481)
            return
        if req.method == "ACK":
            return  # an ACK for a non-2xx is absorbed by its transaction; others are strays
        if req.method == "CANCEL":
            self.answer(event, 481)
            return
        unsupported = self._unsupported_requirements(req)
        if unsupported and req.method != "CANCEL":
            self.answer(event, 420, extra=[("Unsupported", ", ".join(unsupported))])
            return
        if req.method == "OPTIONS":
            self.answer(
                event,
                200,
                extra=[("Allow", ALLOW), ("Accept", ACCEPT), ("Accept-Language", "en")],
            )
        elif req.method == "INVITE":
            log.info(
                "event=sip_invite_refused source=%s:%d from=%s",
                *event.source,
                req.headers.get("From"),
            )
            self.answer(event, 403, "Forbidden (no incoming calls)")
        elif req.method == "REGISTER" and self.registrar is not None:
            self.registrar(event)
        elif req.method in KNOWN_METHODS:
            self.answer(event, 405, extra=[("Allow", ALLOW)])
        else:
            self.answer(event, 501, extra=[("Allow", ALLOW)])

    @staticmethod
    def _unsupported_requirements(req: Request) -> list[str]:
        return [opt for opt in req.headers.values("Require") if opt]

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
