"""The call leg's transition table (``sipdialer.engine.leg``), row by row, on a fake user
agent: each row's next state and what the leg sends and reports are checked against the
expectations written out here, and the leg is put in each state through its inputs, never
by assignment. No sockets, no clock: the leg's session timer (RFC 4028) is a fake that the
test fires by hand."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

import pytest

from sipdialer.aio.useragent import UserAgent
from sipdialer.engine.causes import SESSION_EXPIRED_REASON
from sipdialer.engine.errors import EngineError
from sipdialer.engine.leg import (
    MAX_EARLY_DIALOGS,
    Leg,
    LegInput,
    LegState,
    LegStateError,
    LegTarget,
)
from sipdialer.sip.events import (
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionTimeout,
)
from sipdialer.sip.message import Headers, Request, make_response
from sipdialer.sip.sdp import AudioOffer, build_sdp
from sipdialer.sip.transaction import ClientTransaction, ServerTransaction

S, E = LegState, LegInput
LEG_LOG = logging.getLogger("sipdialer.leg")
RIG_NUMBERS = itertools.count()
OFFER = build_sdp(address="192.0.2.1", port=40000, session_id=1, version=1, codecs=[("PCMU", 0)])
FALLBACK_OFFER = OFFER.replace(b"RTP/AVP", b"RTP/SAVP")
PEER_OFFER = build_sdp(
    address="192.0.2.5", port=50000, session_id=2, version=1, codecs=[("PCMU", 0)]
)
CHALLENGE = 'Digest realm="trunk.test", nonce="n1", qop="auth"'


@dataclass
class FakeTx:
    """Stands for the client transaction the user agent would create."""

    request: Request


class FakeUserAgent:
    """Records what the leg sends, in order: ``INVITE``, ``CANCEL``, ``BYE``, ``ACK``
    (``+digest`` when the request carries credentials) and ``<status> <METHOD>`` for
    answers; keeps the handlers the leg registers so that the test can call them."""

    def __init__(self, effects: list[str]) -> None:
        self.effects = effects
        self.transport = self  # the leg sends its ACKs with ua.transport.send_stateless
        self.requests: list[tuple[FakeTx, Callable[[Event], None]]] = []
        self.dialogs: dict[tuple[str, str], Callable[[RequestReceived], None]] = {}
        self.stray_2xx: dict[str, Callable[[ResponseReceived], None]] = {}
        self.answers: list[tuple[int, Headers]] = []
        self.acks: list[Request] = []

    def send_request(
        self,
        request: Request,
        dest: tuple[str, int],
        transport: str,
        owner: Callable[[Event], None],
    ) -> FakeTx:
        digest = " +digest" if "Authorization" in request.headers else ""
        self.effects.append(request.method + digest)
        tx = FakeTx(request)
        self.requests.append((tx, owner))
        return tx

    def send_cancel(self, invite_tx: FakeTx, reason: str | None = None) -> None:
        self.effects.append("CANCEL")

    def send_stateless(self, message: Request, dest: tuple[str, int], transport: str) -> None:
        self.effects.append(message.method)
        self.acks.append(message)

    def add_dialog(self, call_id: str, local_tag: str, handler: Callable[..., None]) -> None:
        self.dialogs[(call_id, local_tag)] = handler

    def remove_dialog(self, call_id: str, local_tag: str) -> None:
        self.dialogs.pop((call_id, local_tag), None)

    def on_stray_2xx(self, call_id: str, handler: Callable[[ResponseReceived], None]) -> None:
        self.stray_2xx[call_id] = handler

    def forget_stray_2xx(self, call_id: str) -> None:
        self.stray_2xx.pop(call_id, None)

    def answer(
        self,
        event: RequestReceived,
        status: int,
        reason: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        self.effects.append(f"{status} {event.request.method}")
        self.answers.append((status, Headers(extra or [])))


@dataclass
class FakeTimer:
    """One armed session timer of the leg: its delay, and whether it was cancelled."""

    delay: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """The leg's ``call_later``: keeps what the leg arms; :meth:`fire` runs the live one."""

    def __init__(self) -> None:
        self.armed: list[FakeTimer] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(delay, callback)
        self.armed.append(timer)
        return timer

    @property
    def live(self) -> FakeTimer | None:
        live = [t for t in self.armed if not t.cancelled]
        assert len(live) <= 1, "a leg has one session timer at a time"
        return live[0] if live else None

    def fire(self) -> None:
        timer = self.live
        if timer is not None:
            timer.cancelled = True  # it ran: no longer pending
            timer.callback()


@dataclass
class Listener:
    """A LegListener writing what the leg reports into the same list as the sends."""

    effects: list[str]
    statuses: list[int] = field(default_factory=list)
    bye_reasons: list[tuple[str, ...]] = field(default_factory=list)

    def leg_progress(self, leg: Leg, status: int, sdp: AudioOffer | None) -> None:
        self.effects.append("progress")

    def leg_answered(self, leg: Leg, sdp: AudioOffer | None) -> None:
        self.effects.append("answered")

    def leg_failed(self, leg: Leg, status: int, reason: tuple[str, ...], unreachable: bool) -> None:
        self.effects.append(f"unreachable {status}" if unreachable else f"failed {status}")

    def leg_bye(self, leg: Leg, reason: tuple[str, ...]) -> None:
        self.effects.append("bye")
        self.bye_reasons.append(reason)

    def leg_media_changed(self, leg: Leg, sdp: AudioOffer) -> None:
        self.effects.append("media")

    def leg_terminated(self, leg: Leg) -> None:
        self.effects.append("terminated")


class LogEvents(logging.Handler):
    """Writes the ``event=`` name of each log line of the leg as ``~name``."""

    def __init__(self, effects: list[str], call_tag: str) -> None:
        super().__init__(logging.INFO)
        self.effects = effects
        self.call_field = f"call={call_tag}"

    def emit(self, record: logging.LogRecord) -> None:
        words = record.getMessage().split()
        if self.call_field in words:
            self.effects.append("~" + words[0].removeprefix("event="))


class Rig:
    """One leg on a fake user agent, with a method per input the table knows."""

    def __init__(self, credentials: tuple[str, str] | None = ("dialer", "s3cret")) -> None:
        self.effects: list[str] = []
        call_tag = f"rig{next(RIG_NUMBERS)}"
        self.log_events = LogEvents(self.effects, call_tag)
        self.ua = FakeUserAgent(self.effects)
        self.timers = FakeTimers()
        self.listener = Listener(self.effects)
        target = LegTarget(
            request_uri="sip:0820001234@trunk.test",
            dest=("192.0.2.9", 5060),
            from_uri="sip:0123456789@dialer.test",
            to_uri="sip:0820001234@trunk.test",
            contact_uri="sip:dialer@192.0.2.1:5060",
            credentials=credentials,
        )
        self.leg = Leg(
            "callee",
            cast(UserAgent, self.ua),
            target,
            self.listener,
            sdp_offer=OFFER,
            answer_reinvite=lambda offer: OFFER,
            fallback_offer=lambda: FALLBACK_OFFER,
            call_tag=call_tag,
            call_later=self.timers.call_later,
        )
        LEG_LOG.addHandler(self.log_events)

    def take_effects(self) -> list[str]:
        out = list(self.effects)
        self.effects.clear()
        return out

    # ---- the way into each input -----------------------------------------------------------
    def _last(self, method: str) -> tuple[FakeTx, Callable[[Event], None]]:
        return [(tx, owner) for tx, owner in self.ua.requests if tx.request.method == method][-1]

    def respond(
        self,
        status: int,
        tag: str = "callee-1",
        extra: tuple[tuple[str, str], ...] = (),
        contact_uri: str | None = None,
    ) -> None:
        tx, owner = self._last("INVITE")
        contact = ("Contact", f"<{contact_uri or f'sip:{tag}@192.0.2.5:5060'}>")
        response = make_response(tx.request, status, to_tag=tag, extra=[contact, *extra])
        owner(ResponseReceived(response, cast(ClientTransaction, tx)))

    def invite_times_out(self) -> None:
        tx, owner = self._last("INVITE")
        owner(TransactionTimeout(cast(ClientTransaction, tx)))

    def bye_answered(self) -> None:
        tx, owner = self._last("BYE")
        owner(ResponseReceived(make_response(tx.request, 200), cast(ClientTransaction, tx)))

    def peer_sends(
        self,
        method: str,
        body: bytes = b"",
        extra: tuple[tuple[str, str], ...] = (),
        cseq: int | None = None,
    ) -> None:
        dialog = self.leg.dialog
        assert dialog is not None
        if cseq is None:
            cseq = (dialog.remote_seq or 0) + 1
        handler = self.ua.dialogs[(dialog.call_id, dialog.local_tag)]
        headers = [
            ("Via", "SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKpeer"),
            ("From", f"<sip:0820001234@trunk.test>;tag={dialog.remote_tag}"),
            ("To", f"<sip:0123456789@dialer.test>;tag={dialog.local_tag}"),
            ("Call-ID", dialog.call_id),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", "<sip:callee-1@192.0.2.5:5060>"),
        ]
        headers.extend(extra)
        if body:
            headers.append(("Content-Type", "application/sdp"))
        request = Request(method, "sip:dialer@192.0.2.1:5060", headers, body)
        server_tx = cast(ServerTransaction, object())
        handler(RequestReceived(request, server_tx, ("192.0.2.5", 5060), "UDP"))

    def peer_acks(self, body: bytes = b"") -> None:
        """The peer ACKs the 2xx to its last re-INVITE (same CSeq number)."""
        assert self.leg.dialog is not None
        self.peer_sends("ACK", body, cseq=self.leg.dialog.remote_seq)

    def offerless_reinvite_acked(self, body: bytes) -> None:
        """A re-INVITE without SDP (we offer in our 200), then its ACK with ``body``."""
        self.peer_sends("INVITE")
        assert self.take_effects() == ["200 INVITE"]
        self.peer_acks(body)


INPUTS: dict[LegInput, Callable[[Rig], None]] = {
    E.INVITE: lambda r: r.leg.invite(),
    E.HANGUP: lambda r: r.leg.hangup("Q.850;cause=16"),
    E.RECV_1XX: lambda r: r.respond(180),
    E.RECV_2XX: lambda r: r.respond(200, tag="fork-2"),
    E.RECV_CHALLENGE: lambda r: r.respond(401, extra=(("WWW-Authenticate", CHALLENGE),)),
    E.RECV_FAILURE: lambda r: r.respond(486),
    E.RECV_REDIRECT: lambda r: r.respond(302, contact_uri="sip:0820009999@trunk.test"),
    E.INVITE_UNANSWERED: lambda r: r.invite_times_out(),
    E.BYE_ENDED: lambda r: r.bye_answered(),
    E.RECV_BYE: lambda r: r.peer_sends("BYE"),
    E.RECV_REOFFER: lambda r: r.peer_sends("INVITE", PEER_OFFER),
    E.RECV_REQUEST: lambda r: r.peer_sends("OPTIONS"),
    E.RECV_INTERVAL_TOO_SMALL: lambda r: r.respond(422, extra=(("Min-SE", "120"),)),
    E.RECV_NOT_ACCEPTABLE: lambda r: r.respond(488),
    # the 2xx that confirmed the rig's leg asked us to refresh (SESSION_2XX): it is due
    E.SESSION_REFRESH_DUE: lambda r: r.timers.fire(),
    # … and our refresh went unanswered until the expiry: the effects are the expiry's
    E.SESSION_EXPIRED: lambda r: (r.timers.fire(), r.take_effects(), r.timers.fire()),
    E.RECV_ACK_ANSWER: lambda r: r.offerless_reinvite_acked(PEER_OFFER),
}

#: What the 2xx that confirms a rig's leg carries: a session timer we refresh, by UPDATE.
SESSION_2XX = (("Session-Expires", "90;refresher=uac"), ("Allow", "INVITE, ACK, BYE, UPDATE"))

SETUP: dict[LegState, list[LegInput]] = {
    S.IDLE: [],
    S.CALLING: [E.INVITE],
    S.PROCEEDING: [E.INVITE, E.RECV_1XX],
    S.CONFIRMED: [E.INVITE, E.RECV_2XX],
    S.CANCELLING: [E.INVITE, E.HANGUP],
    S.TERMINATING: [E.INVITE, E.RECV_2XX, E.HANGUP],
    S.TERMINATED: [E.INVITE, E.RECV_FAILURE],
}


@pytest.fixture(autouse=True)
def leg_log_at_info() -> Iterator[None]:
    """The leg logs at INFO; let its lines through for the test, then detach the rigs."""
    level = LEG_LOG.level
    LEG_LOG.setLevel(logging.INFO)
    yield
    LEG_LOG.setLevel(level)
    for handler in [h for h in LEG_LOG.handlers if isinstance(h, LogEvents)]:
        LEG_LOG.removeHandler(handler)


def rig_in(state: LegState) -> Rig:
    rig = Rig()
    for step in SETUP[state]:
        if step is E.RECV_2XX:
            rig.respond(200, extra=SESSION_2XX)  # the first answer: the leg's own dialog
        else:
            INPUTS[step](rig)
    assert rig.leg.state is state
    rig.take_effects()
    return rig


# (state, input, next state, what the leg sends, logs (~event) and reports, in order)
EXPECTED: list[tuple[LegState, LegInput, LegState, list[str]]] = [
    (S.IDLE, E.INVITE, S.CALLING, ["INVITE", "~leg_invite"]),
    (S.IDLE, E.HANGUP, S.TERMINATED, ["terminated"]),
    (S.CALLING, E.RECV_1XX, S.PROCEEDING, ["progress"]),
    (S.CALLING, E.RECV_CHALLENGE, S.CALLING, ["INVITE +digest", "~leg_invite"]),
    (S.CALLING, E.RECV_2XX, S.CONFIRMED, ["ACK", "~leg_answered", "answered"]),
    (S.CALLING, E.RECV_FAILURE, S.TERMINATED, ["~leg_failed", "failed 486", "terminated"]),
    (
        S.CALLING,
        E.INVITE_UNANSWERED,
        S.TERMINATED,
        ["~leg_unreachable", "unreachable 408", "terminated"],
    ),
    (S.CALLING, E.HANGUP, S.CANCELLING, ["CANCEL", "~leg_cancel"]),
    (S.CALLING, E.RECV_REDIRECT, S.CALLING, ["~leg_redirected", "INVITE", "~leg_invite"]),
    (
        S.CALLING,
        E.RECV_INTERVAL_TOO_SMALL,
        S.CALLING,
        ["~leg_interval_too_small", "INVITE", "~leg_invite"],
    ),
    (
        S.PROCEEDING,
        E.RECV_INTERVAL_TOO_SMALL,
        S.CALLING,
        ["~leg_interval_too_small", "INVITE", "~leg_invite"],
    ),
    (S.CANCELLING, E.RECV_INTERVAL_TOO_SMALL, S.TERMINATED, ["~leg_failed", "terminated"]),
    (S.CALLING, E.RECV_NOT_ACCEPTABLE, S.CALLING, ["~leg_reoffer", "INVITE", "~leg_invite"]),
    (S.PROCEEDING, E.RECV_NOT_ACCEPTABLE, S.CALLING, ["~leg_reoffer", "INVITE", "~leg_invite"]),
    (S.CANCELLING, E.RECV_NOT_ACCEPTABLE, S.TERMINATED, ["~leg_failed", "terminated"]),
    (S.CONFIRMED, E.SESSION_REFRESH_DUE, S.CONFIRMED, ["UPDATE", "~leg_session_refresh"]),
    (
        S.CONFIRMED,
        E.SESSION_EXPIRED,
        S.TERMINATING,
        ["~leg_session_expired", "BYE", "~leg_bye_sent", "bye"],
    ),
    (S.PROCEEDING, E.RECV_REDIRECT, S.CALLING, ["~leg_redirected", "INVITE", "~leg_invite"]),
    (S.CANCELLING, E.RECV_REDIRECT, S.TERMINATED, ["~leg_failed", "terminated"]),
    (S.PROCEEDING, E.RECV_1XX, S.PROCEEDING, ["progress"]),
    (S.PROCEEDING, E.RECV_CHALLENGE, S.PROCEEDING, ["INVITE +digest", "~leg_invite"]),
    (S.PROCEEDING, E.RECV_2XX, S.CONFIRMED, ["ACK", "~leg_answered", "answered"]),
    (S.PROCEEDING, E.RECV_FAILURE, S.TERMINATED, ["~leg_failed", "failed 486", "terminated"]),
    (
        S.PROCEEDING,
        E.INVITE_UNANSWERED,
        S.TERMINATED,
        ["~leg_unreachable", "unreachable 408", "terminated"],
    ),
    (S.PROCEEDING, E.HANGUP, S.CANCELLING, ["CANCEL", "~leg_cancel"]),
    (
        S.CANCELLING,
        E.RECV_2XX,
        S.TERMINATING,
        ["ACK", "~leg_answer_crossed_cancel", "BYE", "~leg_bye_sent"],
    ),
    (S.CANCELLING, E.RECV_CHALLENGE, S.TERMINATED, ["~leg_failed", "terminated"]),
    (S.CANCELLING, E.RECV_FAILURE, S.TERMINATED, ["~leg_failed", "terminated"]),
    (S.CANCELLING, E.INVITE_UNANSWERED, S.TERMINATED, ["~leg_unreachable", "terminated"]),
    (S.CANCELLING, E.HANGUP, S.CANCELLING, []),
    (S.CONFIRMED, E.HANGUP, S.TERMINATING, ["BYE", "~leg_bye_sent"]),
    (
        S.CONFIRMED,
        E.RECV_BYE,
        S.TERMINATED,
        ["200 BYE", "~leg_bye_received", "bye", "terminated"],
    ),
    (S.CONFIRMED, E.RECV_REOFFER, S.CONFIRMED, ["200 INVITE", "~leg_reinvite", "media"]),
    (S.CONFIRMED, E.RECV_REQUEST, S.CONFIRMED, ["200 OPTIONS"]),
    (S.CONFIRMED, E.RECV_ACK_ANSWER, S.CONFIRMED, ["~leg_ack_answer", "media"]),
    (S.CONFIRMED, E.RECV_2XX, S.CONFIRMED, ["ACK", "BYE", "~leg_bye_sent"]),
    (S.TERMINATING, E.BYE_ENDED, S.TERMINATED, ["terminated"]),
    (S.TERMINATING, E.RECV_BYE, S.TERMINATED, ["200 BYE", "~leg_bye_received", "terminated"]),
    (S.TERMINATING, E.RECV_REOFFER, S.TERMINATING, ["200 INVITE", "~leg_reinvite", "media"]),
    (S.TERMINATING, E.RECV_REQUEST, S.TERMINATING, ["200 OPTIONS"]),
    (S.TERMINATING, E.RECV_ACK_ANSWER, S.TERMINATING, ["~leg_ack_answer", "media"]),
    (S.TERMINATING, E.RECV_2XX, S.TERMINATING, ["ACK", "BYE", "~leg_bye_sent"]),
    (S.TERMINATING, E.HANGUP, S.TERMINATING, []),
    (S.TERMINATED, E.RECV_2XX, S.TERMINATED, ["ACK", "BYE", "~leg_bye_sent"]),
    (S.TERMINATED, E.HANGUP, S.TERMINATED, []),
]


def test_the_expectations_cover_every_row_of_the_table() -> None:
    rows = {(state, event) for state, row in Leg.TABLE.items() for event in row}
    assert {(state, event) for state, event, _, _ in EXPECTED} == rows
    assert set(Leg.TABLE) == set(LegState)
    for row in Leg.TABLE.values():
        for _, action in row.values():
            assert action is None or callable(getattr(Leg, f"_{action}", None)), action


@pytest.mark.parametrize(
    ("state", "event", "next_state", "effects"),
    EXPECTED,
    ids=[f"{s}-{e.name}" for s, e, _, _ in EXPECTED],
)
def test_row(state: LegState, event: LegInput, next_state: LegState, effects: list[str]) -> None:
    rig = rig_in(state)
    INPUTS[event](rig)
    assert rig.leg.state is next_state
    assert rig.take_effects() == effects


def test_entering_terminated_forgets_the_dialog_and_the_2xx_hook() -> None:
    rig = rig_in(S.CONFIRMED)
    assert rig.ua.dialogs and rig.ua.stray_2xx
    rig.peer_sends("BYE")
    assert rig.ua.dialogs == {} and rig.ua.stray_2xx == {}
    assert rig.leg.final_status == 200


# (state, input) pairs from the network that the state does not list: nothing happens
ABSORBED = [
    (S.CANCELLING, E.RECV_1XX),  # a 1xx after our CANCEL
    (S.CONFIRMED, E.RECV_1XX),
    (S.CONFIRMED, E.RECV_FAILURE),  # a late final of another fork
    (S.CONFIRMED, E.RECV_CHALLENGE),
    (S.CONFIRMED, E.INVITE_UNANSWERED),
    (S.TERMINATING, E.RECV_FAILURE),
    (S.TERMINATED, E.RECV_1XX),
    (S.TERMINATED, E.RECV_FAILURE),
    (S.TERMINATED, E.INVITE_UNANSWERED),
]


@pytest.mark.parametrize(("state", "event"), ABSORBED, ids=[f"{s}-{e.name}" for s, e in ABSORBED])
def test_unexpected_network_input_is_absorbed(state: LegState, event: LegInput) -> None:
    assert event not in Leg.TABLE[state]
    rig = rig_in(state)
    INPUTS[event](rig)
    assert rig.leg.state is state
    assert rig.take_effects() == []


def test_the_answer_to_a_bye_of_another_fork_is_absorbed_while_confirmed() -> None:
    rig = rig_in(S.CONFIRMED)
    rig.respond(200, tag="fork-2")  # a second fork answers: ACK and BYE it
    assert rig.take_effects() == ["ACK", "BYE", "~leg_bye_sent"]
    rig.bye_answered()
    assert rig.leg.state is S.CONFIRMED and rig.take_effects() == []


@pytest.mark.parametrize("state", [s for s in LegState if s is not S.IDLE])
def test_invite_outside_idle_raises_the_named_error(state: LegState) -> None:
    rig = rig_in(state)
    with pytest.raises(LegStateError, match="invite"):
        rig.leg.invite()
    assert issubclass(LegStateError, EngineError)
    assert rig.leg.state is state and rig.take_effects() == []


def test_a_retransmitted_2xx_is_acked_again_in_any_state() -> None:
    rig = rig_in(S.CONFIRMED)
    rig.respond(200)  # the same dialog's 2xx again: our ACK was lost
    assert rig.leg.state is S.CONFIRMED and rig.take_effects() == ["ACK"]
    rig.leg.hangup()
    rig.bye_answered()
    rig.take_effects()
    tx, _ = rig._last("INVITE")
    stray = make_response(tx.request, 200, to_tag="callee-1")
    rig.leg._on_stray_2xx(ResponseReceived(stray, None))  # after the transaction ended
    assert rig.leg.state is S.TERMINATED and rig.take_effects() == ["ACK"]


def test_a_third_challenge_is_a_failure_and_no_credentials_no_retry() -> None:
    rig = rig_in(S.CALLING)
    for _ in range(2):
        INPUTS[E.RECV_CHALLENGE](rig)
    assert rig.take_effects() == ["INVITE +digest", "~leg_invite"] * 2
    INPUTS[E.RECV_CHALLENGE](rig)
    assert rig.leg.state is S.TERMINATED
    assert rig.take_effects() == ["~leg_failed", "failed 401", "terminated"]
    bare = Rig(credentials=None)
    bare.leg.invite()
    INPUTS[E.RECV_CHALLENGE](bare)
    assert bare.leg.state is S.TERMINATED and bare.leg.final_status == 401


def test_100_trying_is_no_input() -> None:
    rig = rig_in(S.CALLING)
    rig.respond(100)
    assert rig.leg.state is S.CALLING and rig.take_effects() == []


def test_an_unusable_reoffer_is_refused_with_488() -> None:
    rig = rig_in(S.CONFIRMED)
    rig.peer_sends("INVITE", b"not sdp")
    assert rig.leg.state is S.CONFIRMED and rig.take_effects() == ["488 INVITE"]


# ---- redirects (3xx) and reliable provisional responses (RFC 3262) ---------------------------


def test_a_redirect_is_followed_to_the_same_host_only_and_at_most_three_times() -> None:
    rig = rig_in(S.CALLING)
    for n in range(3):
        rig.respond(302, contact_uri=f"sip:08200000{n:02d}@trunk.test")
        assert rig.leg.state is S.CALLING
        assert rig._last("INVITE")[0].request.uri == f"sip:08200000{n:02d}@trunk.test"
    rig.respond(302, contact_uri="sip:0820000099@trunk.test")  # a fourth: not followed
    assert rig.leg.state is S.TERMINATED
    assert rig.leg.final_status == 302
    assert rig.leg.redirects == [f"sip:08200000{n:02d}@trunk.test" for n in range(3)]


def test_a_redirect_to_another_host_is_a_failure() -> None:
    rig = rig_in(S.CALLING)
    rig.respond(302, contact_uri="sip:0820001234@evil.example")
    assert rig.leg.state is S.TERMINATED and rig.leg.redirects == []
    assert "failed 302" in rig.take_effects()


def test_a_redirect_to_the_trunk_address_or_a_configured_host_is_followed() -> None:
    rig = rig_in(S.CALLING)
    rig.respond(301, contact_uri="sip:0820001234@192.0.2.9:5060")
    assert rig.leg.state is S.CALLING and rig.leg.redirects == ["sip:0820001234@192.0.2.9:5060"]
    rig.leg.target.redirect_hosts = ("partner.example",)
    rig.respond(302, contact_uri="sip:0820001234@partner.example")
    assert rig.leg.state is S.CALLING and len(rig.leg.redirects) == 2


def reliable(rseq: int) -> tuple[tuple[str, str], ...]:
    return (("Require", "100rel"), ("RSeq", str(rseq)))


def test_a_reliable_provisional_is_pracked_once_per_rseq_and_cseq_stays_ordered() -> None:
    rig = rig_in(S.CALLING)
    assert rig._last("INVITE")[0].request.headers.get("Supported") == "100rel, timer"
    rig.respond(183, extra=reliable(1))
    assert rig.take_effects() == ["PRACK", "~leg_prack", "progress"]
    prack = rig._last("PRACK")[0].request
    invite_seq = rig._last("INVITE")[0].request.cseq()[0]
    assert prack.headers.get("RAck") == f"1 {invite_seq} INVITE"
    assert prack.cseq() == (invite_seq + 1, "PRACK")
    rig.respond(183, extra=reliable(1))  # a retransmission: discarded
    assert rig.take_effects() == []
    rig.respond(180, extra=reliable(2))
    assert rig.take_effects() == ["PRACK", "~leg_prack", "progress"]
    rig.respond(200)
    rig.take_effects()
    rig.leg.hangup("Q.850;cause=16")
    bye = rig._last("BYE")[0].request
    assert bye.cseq() == (invite_seq + 3, "BYE")  # after both PRACKs


def test_early_dialogs_are_capped_and_further_forks_are_only_progress() -> None:
    """A trunk forking to many phones, each sending a reliable 183 with its own to-tag:
    the leg keeps (and PRACKs in) at most MAX_EARLY_DIALOGS of them; later new tags are
    still progress but neither PRACKed nor kept, logged once. Before: one dialog and one
    RSeq entry per tag, without bound."""
    rig = rig_in(S.CALLING)
    for i in range(MAX_EARLY_DIALOGS):
        rig.respond(183, tag=f"fork-{i}", extra=reliable(1))
        assert rig.take_effects() == ["PRACK", "~leg_prack", "progress"]
    rig.respond(183, tag="fork-extra", extra=reliable(1))
    assert rig.take_effects() == ["~leg_early_dialogs_capped", "progress"]
    for i in range(40):
        rig.respond(183, tag=f"fork-more-{i}", extra=reliable(1))
        assert rig.take_effects() == ["progress"]
    assert len(rig.leg._early) == len(rig.leg._rseq) == MAX_EARLY_DIALOGS
    rig.respond(180, tag="fork-3", extra=reliable(2))  # a kept fork still gets its PRACK
    assert rig.take_effects() == ["PRACK", "~leg_prack", "progress"]
    rig.respond(200, tag="fork-more-7")  # a fork beyond the cap can still answer
    assert rig.leg.state is S.CONFIRMED


def test_a_plain_provisional_is_not_pracked() -> None:
    rig = rig_in(S.CALLING)
    rig.respond(180, extra=(("RSeq", "1"),))  # no Require: 100rel
    assert rig.take_effects() == ["progress"]


# ---- session timers (RFC 4028), the timer driven by hand ------------------------------------


def answered(
    session_expires: str | None, allow: str = "INVITE, ACK, BYE, UPDATE", tag: str = "callee-1"
) -> Rig:
    """A rig whose leg the peer's 2xx confirmed with that ``Session-Expires`` (None: none)."""
    rig = rig_in(S.CALLING)
    extra = [("Allow", allow)]
    if session_expires is not None:
        extra.append(("Session-Expires", session_expires))
    rig.respond(200, tag=tag, extra=tuple(extra))
    assert rig.leg.state is S.CONFIRMED
    rig.take_effects()
    return rig


def answer_last(rig: Rig, method: str, status: int, extra: tuple[tuple[str, str], ...]) -> None:
    tx, owner = rig._last(method)
    response = make_response(tx.request, status, to_tag="callee-1", extra=list(extra))
    owner(ResponseReceived(response, cast(ClientTransaction, tx)))


def test_our_invite_offers_timers_and_a_2xx_without_session_expires_arms_nothing() -> None:
    rig = rig_in(S.CALLING)
    invite = rig._last("INVITE")[0].request
    assert invite.headers.get("Supported") == "100rel, timer"
    assert "Session-Expires" not in invite.headers  # we ask for no interval of our own
    rig.respond(200)
    assert rig.leg.state is S.CONFIRMED and rig.timers.live is None


def test_we_refresh_by_update_at_half_the_interval_and_the_answer_restarts_it() -> None:
    rig = answered("90;refresher=uac")
    assert rig.leg.we_refresh and rig.timers.live is not None
    assert rig.timers.live.delay == 45
    rig.timers.fire()
    assert rig.take_effects() == ["UPDATE", "~leg_session_refresh"]
    update = rig._last("UPDATE")[0].request
    assert update.headers.get("Session-Expires") == "90;refresher=uac"
    assert update.body == b""
    live = rig.timers.live
    assert live is not None and live.delay == 15  # expiry (60 s) minus the 45 s gone
    answer_last(rig, "UPDATE", 200, (("Session-Expires", "120;refresher=uac"),))
    live = rig.timers.live
    assert live is not None and live.delay == 60 and rig.leg.session_interval == 120
    assert rig.leg.state is S.CONFIRMED and rig.take_effects() == []


def test_without_update_we_refresh_by_reinvite_with_our_sdp_and_ack_its_2xx() -> None:
    rig = answered("90", allow="INVITE, ACK, BYE")  # no refresher named: the UAC, us
    assert rig.leg.we_refresh
    rig.timers.fire()
    assert rig.take_effects() == ["INVITE", "~leg_session_refresh"]
    reinvite = rig._last("INVITE")[0].request
    assert reinvite.body == OFFER and reinvite.headers.get("To", "").endswith("tag=callee-1")
    answer_last(rig, "INVITE", 200, (("Session-Expires", "90;refresher=uac"),))
    assert rig.take_effects() == ["ACK"]
    assert rig.ua.acks[-1].cseq() == (reinvite.cseq()[0], "ACK")
    live = rig.timers.live
    assert live is not None and live.delay == 45


def test_a_refresh_answered_481_ends_the_session_with_cause_41() -> None:
    rig = answered("90;refresher=uac")
    rig.timers.fire()
    rig.take_effects()
    answer_last(rig, "UPDATE", 481, ())
    assert rig.leg.state is S.TERMINATING
    assert rig.take_effects() == ["~leg_session_expired", "BYE", "~leg_bye_sent", "bye"]


@pytest.mark.parametrize(("interval", "bye_after"), [(90, 60.0), (1800, 1768.0), (10, 10 - 10 / 3)])
def test_a_peer_that_stops_refreshing_gets_a_bye_cause_41(interval: int, bye_after: float) -> None:
    rig = answered(f"{interval};refresher=uas")
    assert not rig.leg.we_refresh
    live = rig.timers.live
    assert live is not None and live.delay == pytest.approx(bye_after)  # min(32, SE/3) early
    rig.timers.fire()
    assert rig.leg.state is S.TERMINATING
    assert rig.take_effects() == ["~leg_session_expired", "BYE", "~leg_bye_sent", "bye"]
    bye = rig._last("BYE")[0].request
    assert bye.headers.get("Reason") == SESSION_EXPIRED_REASON
    assert rig.listener.bye_reasons == [(SESSION_EXPIRED_REASON,)]
    rig.bye_answered()
    assert rig.leg.state is S.TERMINATED and rig.timers.live is None


def test_the_peers_refresh_is_answered_with_its_interval_and_restarts_the_timer() -> None:
    rig = answered("90;refresher=uas")
    first = rig.timers.live
    rig.peer_sends("UPDATE", extra=(("Session-Expires", "120"), ("Supported", "timer")))
    assert rig.take_effects() == ["200 UPDATE"]
    status, headers = rig.ua.answers[-1]
    assert status == 200
    assert headers.get("Session-Expires") == "120;refresher=uac"  # the peer keeps refreshing
    assert headers.get("Require") == "timer"
    assert first is not None and first.cancelled
    live = rig.timers.live
    assert live is not None and live.delay == 88 and not rig.leg.we_refresh
    rig.peer_sends(
        "INVITE", PEER_OFFER, extra=(("Session-Expires", "90;refresher=uas"), ("Require", "timer"))
    )
    assert rig.take_effects() == ["200 INVITE", "~leg_reinvite", "media"]
    status, headers = rig.ua.answers[-1]
    assert headers.get("Session-Expires") == "90;refresher=uas" and rig.leg.we_refresh
    live = rig.timers.live
    assert live is not None and live.delay == 45  # the peer handed the refreshing to us


def test_a_refresh_without_session_expires_turns_the_timer_off() -> None:
    rig = answered("90;refresher=uas")
    rig.peer_sends("UPDATE")
    assert rig.take_effects() == ["200 UPDATE"]
    assert "Session-Expires" not in rig.ua.answers[-1][1]
    assert rig.timers.live is None and rig.leg.session_interval is None


def test_a_peer_request_asking_less_than_our_min_se_gets_422() -> None:
    rig = answered("90;refresher=uas")
    first = rig.timers.live
    rig.peer_sends("UPDATE", extra=(("Session-Expires", "30"),))
    assert rig.take_effects() == ["422 UPDATE"]
    assert rig.ua.answers[-1][1].get("Min-SE") == "90"
    assert rig.timers.live is first  # the interval in force goes on


def test_a_422_is_retried_once_with_its_min_se_then_fails() -> None:
    rig = rig_in(S.CALLING)
    rig.respond(422, extra=(("Min-SE", "1800"),))
    assert rig.take_effects() == ["~leg_interval_too_small", "INVITE", "~leg_invite"]
    invite = rig._last("INVITE")[0].request
    assert invite.headers.get("Session-Expires") == "1800"
    assert invite.headers.get("Min-SE") == "1800"
    rig.respond(422, extra=(("Min-SE", "3600"),))
    assert rig.leg.state is S.TERMINATED
    assert rig.take_effects() == ["~leg_failed", "failed 422", "terminated"]


def test_a_488_is_retried_once_with_the_fallback_offer_then_fails() -> None:
    rig = rig_in(S.CALLING)
    first = rig._last("INVITE")[0].request
    rig.respond(488)
    assert rig.take_effects() == ["~leg_reoffer", "INVITE", "~leg_invite"]
    again = rig._last("INVITE")[0].request
    assert again.body == FALLBACK_OFFER and first.body == OFFER
    assert again.headers.get("CSeq") == "2 INVITE"
    assert again.headers.get("Call-ID") == first.headers.get("Call-ID")
    rig.respond(488)
    assert rig.leg.state is S.TERMINATED
    assert rig.take_effects() == ["~leg_failed", "failed 488", "terminated"]


def test_a_488_without_a_fallback_offer_fails_at_once() -> None:
    rig = Rig()
    rig.leg.fallback_offer = lambda: None
    rig.leg.invite()
    rig.take_effects()
    rig.respond(488)
    assert rig.leg.state is S.TERMINATED
    assert rig.take_effects() == ["~leg_failed", "failed 488", "terminated"]


def test_hanging_up_cancels_the_session_timer() -> None:
    rig = answered("90;refresher=uac")
    timer = rig.timers.live
    rig.leg.hangup("Q.850;cause=16")
    assert timer is not None and timer.cancelled and rig.timers.live is None


def test_a_refresh_from_a_peer_without_timer_support_makes_us_the_refresher() -> None:
    rig = answered("90;refresher=uas")
    rig.peer_sends("UPDATE", extra=(("Session-Expires", "100"),))  # no Supported: timer
    assert rig.take_effects() == ["200 UPDATE"]
    headers = rig.ua.answers[-1][1]
    assert headers.get("Session-Expires") == "100;refresher=uas"
    assert "Require" not in headers
    live = rig.timers.live
    assert rig.leg.we_refresh and live is not None and live.delay == 50


# ---- an SDP answer in the ACK (offerless re-INVITE, RFC 3264 §5) ---------------------------


def test_only_the_first_ack_of_the_reinvite_we_offered_in_is_an_answer() -> None:
    rig = rig_in(S.CONFIRMED)
    rig.offerless_reinvite_acked(PEER_OFFER)
    assert rig.take_effects() == ["~leg_ack_answer", "media"]
    rig.peer_acks(PEER_OFFER)  # a retransmitted ACK: the offer is settled
    assert rig.take_effects() == []
    rig.peer_sends("INVITE", PEER_OFFER)  # the peer offers: its ACK carries no answer
    assert rig.take_effects() == ["200 INVITE", "~leg_reinvite", "media"]
    rig.peer_acks(PEER_OFFER)
    assert rig.leg.state is S.CONFIRMED and rig.take_effects() == []


def test_an_ack_of_another_cseq_or_without_sdp_changes_no_media() -> None:
    rig = rig_in(S.CONFIRMED)
    rig.peer_sends("INVITE")
    rig.take_effects()
    assert rig.leg.dialog is not None
    rig.peer_sends("ACK", PEER_OFFER, cseq=(rig.leg.dialog.remote_seq or 0) - 1)
    assert rig.take_effects() == []
    rig.peer_acks()  # the right ACK, but no answer in it: logged, the media stays
    assert rig.take_effects() == ["~leg_ack_without_answer"]
    rig.peer_acks(PEER_OFFER)  # the offer was settled by the ACK without answer
    assert rig.take_effects() == []


def test_an_unparseable_answer_in_the_ack_leaves_the_media_as_it_was() -> None:
    rig = rig_in(S.CONFIRMED)
    rig.offerless_reinvite_acked(b"not sdp")
    assert rig.leg.state is S.CONFIRMED
    assert rig.take_effects() == ["~leg_ack_answer_unusable"]


def test_a_new_reoffer_replaces_our_pending_offer() -> None:
    rig = rig_in(S.CONFIRMED)
    rig.peer_sends("INVITE")  # we offer in our 200 ...
    rig.peer_sends("INVITE", PEER_OFFER)  # ... and the peer offers again before its ACK
    assert rig.take_effects() == ["200 INVITE", "200 INVITE", "~leg_reinvite", "media"]
    rig.peer_acks(PEER_OFFER)
    assert rig.take_effects() == []
