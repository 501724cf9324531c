"""Registration with the SIP trunk (RFC 3261 §10): the one state machine that keeps us
registered, sans-IO.

Theory of operation: :class:`RegistrationClient` is pure. It builds REGISTER requests
(without Via: the endpoint stamps that) and is told what happened to each one
(``on_response``, ``on_timeout``); it says when it wants to run next (``get_timer``) and
``handle_timer`` returns the next request to send, if any. The asyncio side only carries
requests and responses between it and the SIP endpoint.

    state        event                               → state        action
    idle         start                               → registering  REGISTER
    registering  2xx                                 → registered   refresh timer at
                                                                     granted - margin
    registering  401/407, credentials not yet tried  → registering  REGISTER + digest
                 (or the nonce went stale)
    registering  401/407 again, 403, other ≥300,     → failed       back-off timer
                 timeout
    registering  423 + Min-Expires                   → registering  REGISTER, longer expiry
    registered   refresh timer                       → registering  REGISTER (same Call-ID)
    failed       back-off timer (2 s doubling ≤ 5 min) → registering  REGISTER
    any          stop                                → unregistering REGISTER Expires: 0
    unregistering any answer or timeout              → stopped

The last failure is kept (``last_failure``) for logs and the health endpoint.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sipdialer.sip.digest import ClientAuthenticator, DigestError
from sipdialer.sip.message import Headers, Request, Response, parse_uint


class RegState(StrEnum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"
    UNREGISTERING = "unregistering"
    STOPPED = "stopped"


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
    BACKOFF_MIN = 2.0
    BACKOFF_MAX = 300.0

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
        self.state = RegState.IDLE
        self.expires_at: float | None = None
        self.last_failure: str | None = None
        self.failures = 0
        self._timer: float | None = None
        self._tried_nonces: set[str] = set()
        self._expires = expires
        self.last_sent: Request | None = None

    # ---- inputs ---------------------------------------------------------------------------
    def start(self, now: float) -> Request:
        self.state = RegState.REGISTERING
        self._tried_nonces.clear()
        return self._register(self._expires)

    def stop(self, now: float) -> Request | None:
        """Un-REGISTER when we hold a binding; None when there is nothing to remove."""
        was = self.state
        self._timer = None
        if was in (RegState.REGISTERED, RegState.REGISTERING):
            self.state = RegState.UNREGISTERING
            return self._register(0)
        self.state = RegState.STOPPED
        return None

    def on_response(self, response: Response, now: float) -> Request | None:
        if response.status < 200:
            return None
        if self.state is RegState.UNREGISTERING:
            if response.status in (401, 407) and self._accept_challenge(response):
                return self._register(0)
            self.state = RegState.STOPPED
            self.expires_at = None
            return None
        if self.state is not RegState.REGISTERING:
            return None
        if 200 <= response.status < 300:
            return self._registered(response, now)
        if response.status in (401, 407) and self._accept_challenge(response):
            return self._register(self._expires)
        if response.status == 423:
            min_expires = parse_uint(response.headers.get("Min-Expires") or "")
            if min_expires is not None and self._expires < min_expires <= 86400:
                self._expires = min_expires
                return self._register(self._expires)
        reason = f"{response.status} {response.reason}".strip()
        if response.status in (401, 407):
            reason += " (credentials rejected)"
        self._fail(reason, now)
        return None

    def on_timeout(self, now: float) -> None:
        if self.state is RegState.UNREGISTERING:
            self.state = RegState.STOPPED
        elif self.state is RegState.REGISTERING:
            self._fail("timeout: no answer from the registrar", now)

    def on_transport_error(self, now: float, detail: str = "") -> None:
        if self.state is RegState.REGISTERING:
            self._fail(f"transport error{': ' + detail if detail else ''}", now)

    def get_timer(self) -> float | None:
        return self._timer

    def handle_timer(self, now: float) -> Request | None:
        if self._timer is None or now < self._timer:
            return None
        self._timer = None
        if self.state in (RegState.REGISTERED, RegState.FAILED):
            self.state = RegState.REGISTERING
            self._tried_nonces.clear()
            return self._register(self._expires)
        return None

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

    # ---- internals ------------------------------------------------------------------------
    def _register(self, expires: int) -> Request:
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

    def _accept_challenge(self, response: Response) -> bool:
        """Take the challenge if it is worth one (more) try: a new nonce or a stale one."""
        name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        try:
            challenge = self._auth.on_challenge(
                response.headers.get_all(name), proxy=response.status == 407
            )
        except DigestError:
            return False
        if challenge.nonce in self._tried_nonces and not challenge.stale:
            return False
        # a second non-stale challenge right after we answered one means wrong credentials
        if self._tried_nonces and not challenge.stale:
            return False
        self._tried_nonces.add(challenge.nonce)
        return True

    def _registered(self, response: Response, now: float) -> Request | None:
        granted = self._granted_expiry(response)
        self.state = RegState.REGISTERED
        self.failures = 0
        self.last_failure = None
        self._tried_nonces.clear()
        if granted <= 0:
            self._fail("registrar granted no binding (expires=0)", now)
            return None
        self.expires_at = now + granted
        margin = min(30.0, granted / 2)
        self._timer = now + max(1.0, granted - margin)
        return None

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

    def _fail(self, reason: str, now: float) -> None:
        self.state = RegState.FAILED
        self.failures += 1
        self.last_failure = reason
        self.expires_at = None
        delay = min(self.BACKOFF_MAX, self.BACKOFF_MIN * 2 ** (self.failures - 1))
        self._timer = now + delay * random.uniform(0.9, 1.1)
