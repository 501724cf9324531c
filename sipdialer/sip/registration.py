"""Registration with the SIP trunk (RFC 3261 §10): the one state machine that keeps us
registered, sans-IO.

Theory of operation
-------------------
:class:`RegistrationClient` is pure. It builds REGISTER requests (without Via: the
endpoint stamps that) and is told what happened to each one (``on_response``,
``on_timeout``, ``on_transport_error``); it says when it wants to run next
(``get_timer``) and ``handle_timer`` returns the next request to send, if any. The
asyncio side only carries requests and responses between it and the SIP endpoint.

Every input goes through one table, :attr:`RegistrationClient.TABLE`,
``{state: {input: (next state, action)}}``; :meth:`RegistrationClient._fire` is the one
place that changes the state. A final response is first sorted into one input by what it
means (``_classify``: a 2xx granting a binding or none, a challenge worth answering or
not, a 423 whose Min-Expires we can meet, any other failure), so that each row has one
outcome. The action runs before the state changes and returns the request to send.

    state          input                                  → state          action
    idle           start()                                → registering    REGISTER
    registering    2xx granting a binding                 → registered     refresh timer at
                                                                            granted − margin
    registering    2xx granting none (expires=0)          → failed         back-off timer
    registering    401/407, new nonce (or a stale one)    → registering    REGISTER + digest
    registering    401/407 again (credentials rejected)   → failed         back-off timer
    registering    423 with a Min-Expires we can meet     → registering    REGISTER, longer expiry
    registering    other 3xx–6xx, timeout, transport error → failed        back-off timer
    registered     refresh timer                          → registering    REGISTER (same Call-ID)
    registering,   new_flow() (another target, or the     → registering    REGISTER
      registered     TCP/TLS flow to the trunk dropped)
    failed         back-off timer (2 s doubling ≤ 5 min)  → registering    REGISTER
    registering,   stop()                                 → unregistering  REGISTER Expires: 0
      registered
    unregistering  401/407, new nonce (or a stale one)    → unregistering  Expires: 0 + digest
    unregistering  any other final, timeout               → stopped
    idle, failed,  stop()                                 → stopped
      unregistering, stopped
    stopped        start()                                → registering    REGISTER

The one timer runs only in registered (refresh) and failed (back-off): entering any other
state cancels it. An input from the network or the timer that a state does not list is
absorbed (a 1xx, a late answer, a transport error while unregistering); ``start()`` while
already started raises :class:`RegistrationStateError`. The last failure is kept
(``last_failure``) for logs and the health endpoint.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import ClassVar

from sipdialer.sip.digest import ClientAuthenticator, DigestError, pick_challenge
from sipdialer.sip.errors import SipError
from sipdialer.sip.message import Headers, Request, Response, parse_uint


class RegistrationStateError(SipError):
    """The program asked the registration client for something its state does not allow."""


class RegState(StrEnum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"
    UNREGISTERING = "unregistering"
    STOPPED = "stopped"


class RegInput(Enum):
    # from the program
    START = "start()"
    STOP = "stop()"
    NEW_FLOW = "new_flow()"
    # from the network: what a final response to our REGISTER means
    RECV_BINDING = "2xx granting a binding"
    RECV_NO_BINDING = "2xx granting no binding (expires=0)"
    RECV_CHALLENGE = "401/407 worth answering (new or stale nonce)"
    RECV_REFUSAL = "401/407 again (credentials rejected)"
    RECV_TOO_BRIEF = "423 with a Min-Expires we can meet"
    RECV_FAILURE = "other 3xx-6xx"
    # from the transaction and the clock
    TIMEOUT = "no answer (transaction timeout)"
    TRANSPORT_ERROR = "transport error"
    TIMER = "refresh / back-off timer"


PROGRAM_INPUTS = frozenset({RegInput.START, RegInput.STOP, RegInput.NEW_FLOW})

IDLE = RegState.IDLE
REGISTERING = RegState.REGISTERING
REGISTERED = RegState.REGISTERED
FAILED = RegState.FAILED
UNREGISTERING = RegState.UNREGISTERING
STOPPED = RegState.STOPPED

_TIMER_STATES = frozenset({REGISTERED, FAILED})
"""The states in which the one timer runs; entering any other cancels it."""

RegTable = dict[RegState, dict[RegInput, tuple[RegState, str | None]]]


@dataclass(frozen=True)
class RegistrationStatus:
    """What the health endpoint and the logs show about the registration."""

    state: str
    registrar: str
    aor: str
    expires_at: float | None
    last_failure: str | None
    failures: int
    next_attempt_at: float | None


class RegistrationClient:
    """Keeps one binding of ``username@domain`` to ``contact_uri`` alive (see the module
    docstring for the table it follows)."""

    BACKOFF_MIN = 2.0
    BACKOFF_MAX = 300.0

    TABLE: ClassVar[RegTable] = {
        IDLE: {
            RegInput.START: (REGISTERING, "register"),
            RegInput.STOP: (STOPPED, None),
        },
        REGISTERING: {
            RegInput.RECV_BINDING: (REGISTERED, "bound"),
            RegInput.RECV_NO_BINDING: (FAILED, "fail_no_binding"),
            RegInput.RECV_CHALLENGE: (REGISTERING, "register_with_digest"),
            RegInput.RECV_REFUSAL: (FAILED, "fail_refused"),
            RegInput.RECV_TOO_BRIEF: (REGISTERING, "register_longer"),
            RegInput.RECV_FAILURE: (FAILED, "fail_response"),
            RegInput.TIMEOUT: (FAILED, "fail_timeout"),
            RegInput.TRANSPORT_ERROR: (FAILED, "fail_transport"),
            RegInput.STOP: (UNREGISTERING, "unregister"),
            RegInput.NEW_FLOW: (REGISTERING, "register"),
        },
        REGISTERED: {
            RegInput.TIMER: (REGISTERING, "register"),
            RegInput.NEW_FLOW: (REGISTERING, "register"),
            RegInput.STOP: (UNREGISTERING, "unregister"),
        },
        FAILED: {
            RegInput.TIMER: (REGISTERING, "register"),
            RegInput.STOP: (STOPPED, None),
        },
        UNREGISTERING: {
            RegInput.RECV_BINDING: (STOPPED, "unbound"),
            RegInput.RECV_NO_BINDING: (STOPPED, "unbound"),
            RegInput.RECV_CHALLENGE: (UNREGISTERING, "unregister_with_digest"),
            RegInput.RECV_REFUSAL: (STOPPED, "unbound"),
            RegInput.RECV_TOO_BRIEF: (STOPPED, "unbound"),
            RegInput.RECV_FAILURE: (STOPPED, "unbound"),
            RegInput.TIMEOUT: (STOPPED, None),
            RegInput.STOP: (STOPPED, None),
        },
        STOPPED: {
            RegInput.START: (REGISTERING, "register"),
            RegInput.STOP: (STOPPED, None),
        },
    }

    def __init__(
        self,
        *,
        domain: str,
        username: str,
        password: str,
        contact_uri: str,
        expires: int = 300,
        registrar_label: str = "",
    ) -> None:
        self.request_uri = f"sip:{domain}"
        self.aor = f"sip:{username}@{domain}"
        self.contact_uri = contact_uri
        self.registrar_label = registrar_label or domain
        self._auth = ClientAuthenticator(username, password)
        self.call_id = secrets.token_hex(12)
        self.from_tag = secrets.token_hex(6)
        self.cseq = 0
        self.state = IDLE
        self.expires_at: float | None = None
        self.last_failure: str | None = None
        self.failures = 0
        self._timer: float | None = None
        self._tried_nonces: set[str] = set()
        self._expires = expires
        self.last_sent: Request | None = None

    # ---- inputs ---------------------------------------------------------------------------
    def start(self, now: float) -> Request:
        """The first REGISTER; raises RegistrationStateError unless idle or stopped."""
        request = self._fire(RegInput.START, now)
        assert request is not None  # every START row registers
        return request

    def new_flow(self, now: float) -> Request:
        """A fresh REGISTER because the next hop changed (failover to another target) or the
        connection to the trunk dropped; allowed while registering or registered."""
        request = self._fire(RegInput.NEW_FLOW, now)
        assert request is not None  # every NEW_FLOW row registers
        return request

    def stop(self, now: float) -> Request | None:
        """Un-REGISTER when we hold a binding; None when there is nothing to remove."""
        return self._fire(RegInput.STOP, now)

    def on_response(self, response: Response, now: float) -> Request | None:
        if response.status < 200:
            return None  # a 1xx: the transaction keeps waiting, and so do we
        return self._fire(self._classify(response), now, response=response)

    def on_timeout(self, now: float) -> None:
        self._fire(RegInput.TIMEOUT, now)

    def on_transport_error(self, now: float, detail: str = "") -> None:
        self._fire(RegInput.TRANSPORT_ERROR, now, detail=detail)

    def get_timer(self) -> float | None:
        return self._timer

    def handle_timer(self, now: float) -> Request | None:
        if self._timer is None or now < self._timer:
            return None
        self._timer = None
        return self._fire(RegInput.TIMER, now)

    def status(self) -> RegistrationStatus:
        return RegistrationStatus(
            state=self.state.value,
            registrar=self.registrar_label,
            aor=self.aor,
            expires_at=self.expires_at,
            last_failure=self.last_failure,
            failures=self.failures,
            next_attempt_at=self._timer,
        )

    # ---- the machine ------------------------------------------------------------------------
    def _fire(
        self, event: RegInput, now: float, *, response: Response | None = None, detail: str = ""
    ) -> Request | None:
        """Run ``event``'s row for the current state: its action, then the state change."""
        row = self.TABLE[self.state]
        if event not in row:
            if event in PROGRAM_INPUTS:
                raise RegistrationStateError(
                    f"registration: {event.value} is not allowed in {self.state.value}"
                )
            return None  # absorbed
        new_state, action = row[event]
        request: Request | None = None
        if action is not None:
            run: Callable[..., Request | None] = getattr(self, f"_{action}")
            request = run(now=now, response=response, detail=detail)
        self.state = new_state
        if new_state not in _TIMER_STATES:
            self._timer = None
        return request

    def _classify(self, response: Response) -> RegInput:
        """What a final response means, decided without changing anything."""
        status = response.status
        if 200 <= status < 300:
            bound = self._granted_expiry(response) > 0
            return RegInput.RECV_BINDING if bound else RegInput.RECV_NO_BINDING
        if status in (401, 407):
            worth = self._challenge_worth_answering(response)
            return RegInput.RECV_CHALLENGE if worth else RegInput.RECV_REFUSAL
        if status == 423:
            min_expires = parse_uint(response.headers.get("Min-Expires") or "")
            if min_expires is not None and self._expires < min_expires <= 86400:
                return RegInput.RECV_TOO_BRIEF
        return RegInput.RECV_FAILURE

    def _challenge_worth_answering(self, response: Response) -> bool:
        """One (more) try for a usable challenge with a new nonce, or a stale one; a
        second non-stale challenge right after we answered one means wrong credentials."""
        try:
            challenge = pick_challenge(response.headers.get_all(_challenge_header(response)))
        except DigestError:
            return False
        if challenge.stale:
            return True
        return not self._tried_nonces

    # ---- actions (each returns the request to send, if any) -----------------------------
    def _register(self, **_: object) -> Request:
        self._tried_nonces.clear()
        return self._build(self._expires)

    def _register_with_digest(self, *, response: Response, **_: object) -> Request:
        self._take_challenge(response, answered=True)
        return self._build(self._expires)

    def _register_longer(self, *, response: Response, **_: object) -> Request:
        self._expires = parse_uint(response.headers.get("Min-Expires") or "") or self._expires
        return self._build(self._expires)

    def _unregister(self, **_: object) -> Request:
        return self._build(0)

    def _unregister_with_digest(self, *, response: Response, **_: object) -> Request:
        self._take_challenge(response, answered=True)
        return self._build(0)

    def _bound(self, *, now: float, response: Response, **_: object) -> None:
        granted = self._granted_expiry(response)
        self._succeeded()
        self.expires_at = now + granted
        margin = min(30.0, granted / 2)
        self._timer = now + max(1.0, granted - margin)

    def _unbound(self, *, response: Response, **_: object) -> None:
        self._take_challenge(response, answered=False)
        self.expires_at = None

    def _fail_no_binding(self, *, now: float, **_: object) -> None:
        self._succeeded()  # the registrar did answer 2xx: the failure count starts again
        self._fail("registrar granted no binding (expires=0)", now)

    def _fail_refused(self, *, now: float, response: Response, **_: object) -> None:
        self._take_challenge(response, answered=False)
        self._fail(f"{response.status} {response.reason}".strip() + " (credentials rejected)", now)

    def _fail_response(self, *, now: float, response: Response, **_: object) -> None:
        self._fail(f"{response.status} {response.reason}".strip(), now)

    def _fail_timeout(self, *, now: float, **_: object) -> None:
        self._fail("timeout: no answer from the registrar", now)

    def _fail_transport(self, *, now: float, detail: str, **_: object) -> None:
        self._fail(f"transport error{': ' + detail if detail else ''}", now)

    # ---- internals ------------------------------------------------------------------------
    def _build(self, expires: int) -> Request:
        self.cseq += 1
        headers = Headers(
            [
                ("From", f"<{self.aor}>;tag={self.from_tag}"),
                ("To", f"<{self.aor}>"),
                ("Call-ID", self.call_id),
                ("CSeq", f"{self.cseq} REGISTER"),
                ("Contact", f"<{self.contact_uri}>"),
                ("Expires", str(expires)),
                ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"),
            ]
        )
        for name, value in self._auth.authorize(method="REGISTER", uri=self.request_uri):
            headers.add(name, value)
        self.last_sent = Request("REGISTER", self.request_uri, headers)
        return self.last_sent

    def _take_challenge(self, response: Response, *, answered: bool) -> None:
        """Remember a 401/407's challenge for the next REGISTER (even one we do not answer
        now); note its nonce as tried when we answer it."""
        if response.status not in (401, 407):
            return
        try:
            challenge = self._auth.on_challenge(
                response.headers.get_all(_challenge_header(response)), proxy=response.status == 407
            )
        except DigestError:
            return
        if answered:
            self._tried_nonces.add(challenge.nonce)

    def _granted_expiry(self, response: Response) -> int:
        ours = self.contact_uri
        try:
            for contact in response.contacts():
                if contact.uri == ours or contact.uri.split(";")[0] == ours.split(";")[0]:
                    value = parse_uint(contact.params.get("expires") or "")
                    if value is not None:
                        return value
        except ValueError:
            pass
        header = parse_uint(response.headers.get("Expires") or "")
        if header is not None:
            return header
        return self._expires

    def _succeeded(self) -> None:
        self.failures = 0
        self.last_failure = None
        self._tried_nonces.clear()

    def _fail(self, reason: str, now: float) -> None:
        self.failures += 1
        self.last_failure = reason
        self.expires_at = None
        delay = min(self.BACKOFF_MAX, self.BACKOFF_MIN * 2 ** (self.failures - 1))
        self._timer = now + delay * random.uniform(0.9, 1.1)


def _challenge_header(response: Response) -> str:
    return "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
