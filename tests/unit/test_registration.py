"""The pure registration state machine, driven with a fake clock and hand-made responses
(the Kamailio tests in test_trunk_registration.py check the same against the real thing),
and its transition table walked row by row against expectations written out here."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import pytest

from sipdialer.sip.digest import parse_auth_params
from sipdialer.sip.errors import SipError
from sipdialer.sip.message import Request, Response, make_response
from sipdialer.sip.registration import (
    RegInput,
    RegistrationClient,
    RegistrationStateError,
    RegState,
)

CHALLENGE = 'Digest realm="trunk.test", nonce="n1", qop="auth"'


def client(expires: int = 60) -> RegistrationClient:
    return RegistrationClient(
        domain="trunk.test",
        username="dialer",
        password="s3cret",
        contact_uri="sip:dialer@127.0.0.1:5070",
        expires=expires,
    )


def challenge(req: Request, nonce: str = "n1", stale: bool = False):
    value = f'Digest realm="trunk.test", nonce="{nonce}", qop="auth"'
    if stale:
        value += ", stale=true"
    return make_response(req, 401, extra=[("WWW-Authenticate", value)])


def ok(req: Request, expires: int | None = None):
    contact = "<sip:dialer@127.0.0.1:5070>"
    if expires is not None:
        contact += f";expires={expires}"
    return make_response(req, 200, extra=[("Contact", contact)])


def test_first_register_shape() -> None:
    c = client()
    req = c.start(0.0)
    assert req.method == "REGISTER" and req.uri == "sip:trunk.test"
    assert req.headers.get("To") == "<sip:dialer@trunk.test>"
    assert req.from_addr().tag
    assert req.headers.get("Expires") == "60"
    assert req.headers.get("Contact") == "<sip:dialer@127.0.0.1:5070>"
    assert "Authorization" not in req.headers
    assert c.state is RegState.REGISTERING


def test_challenge_answered_with_digest_then_registered_and_refreshed_early() -> None:
    c = client(expires=60)
    req = c.start(0.0)
    retry = c.on_response(challenge(req), 0.1)
    assert retry is not None
    assert retry.call_id == req.call_id
    assert retry.cseq()[0] == req.cseq()[0] + 1
    scheme, params = parse_auth_params(retry.headers.get("Authorization") or "")
    assert scheme == "Digest" and params["uri"] == "sip:trunk.test"
    assert params["qop"] == "auth" and params["nc"] == "00000001"
    ha1 = hashlib.md5(b"dialer:trunk.test:s3cret").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:trunk.test").hexdigest()
    expected = hashlib.md5(f"{ha1}:n1:00000001:{params['cnonce']}:auth:{ha2}".encode()).hexdigest()
    assert params["response"] == expected
    assert c.on_response(ok(retry, expires=40), 0.2) is None
    assert c.state is RegState.REGISTERED
    assert c.expires_at == 0.2 + 40
    timer = c.get_timer()
    assert timer is not None and 0.2 < timer < 0.2 + 40  # refreshed before expiry
    assert c.handle_timer(timer - 0.01) is None
    refresh = c.handle_timer(timer)
    assert refresh is not None and refresh.call_id == req.call_id
    assert "Authorization" in refresh.headers  # pre-emptive, same nonce, next nc
    assert parse_auth_params(refresh.headers.get("Authorization") or "")[1]["nc"] == "00000002"


def test_wrong_password_fails_with_backoff_not_a_tight_loop() -> None:
    c = client()
    req = c.start(0.0)
    retry = c.on_response(challenge(req, "n1"), 0.0)
    assert retry is not None
    assert c.on_response(challenge(retry, "n2"), 0.1) is None  # a fresh non-stale challenge
    assert c.state is RegState.FAILED
    assert c.last_failure is not None and "401" in c.last_failure
    delays = []
    now = 0.1
    for _ in range(12):
        timer = c.get_timer()
        assert timer is not None
        delays.append(timer - now)
        now = timer
        again = c.handle_timer(now)
        assert again is not None
        retry = c.on_response(challenge(again, f"x{now}"), now)
        assert retry is not None
        assert c.on_response(challenge(retry, f"y{now}"), now) is None
    assert 1.5 < delays[0] < 2.5
    assert all(b >= a * 1.5 for a, b in itertools.pairwise(delays[:6]))
    assert max(delays) <= RegistrationClient.BACKOFF_MAX * 1.1
    assert c.failures == 13


def test_stale_nonce_is_retried_at_once() -> None:
    c = client()
    req = c.start(0.0)
    retry = c.on_response(challenge(req, "n1"), 0.0)
    assert retry is not None
    again = c.on_response(challenge(retry, "n2", stale=True), 0.1)
    assert again is not None and c.state is RegState.REGISTERING


def test_interval_too_brief_uses_min_expires() -> None:
    c = client(expires=5)
    req = c.start(0.0)
    resp = make_response(req, 423, extra=[("Min-Expires", "60")])
    again = c.on_response(resp, 0.0)
    assert again is not None and again.headers.get("Expires") == "60"


def test_timeout_then_backoff_and_forbidden() -> None:
    c = client()
    c.start(0.0)
    c.on_timeout(32.0)
    assert c.state is RegState.FAILED and "timeout" in (c.last_failure or "")
    timer = c.get_timer()
    assert timer is not None and timer > 32.0
    req = c.handle_timer(timer)
    assert req is not None
    assert c.on_response(make_response(req, 403), timer) is None
    assert c.state is RegState.FAILED and c.last_failure == "403 Forbidden"


def test_unregister_on_stop() -> None:
    c = client()
    req = c.start(0.0)
    c.on_response(ok(req, 60), 0.0)
    bye = c.stop(1.0)
    assert bye is not None and bye.headers.get("Expires") == "0"
    assert c.state is RegState.UNREGISTERING
    c.on_response(ok(bye), 1.1)
    assert c.state is RegState.STOPPED and c.get_timer() is None
    assert client().stop(0.0) is None


# ---- the table, row by row ------------------------------------------------------------

S, E = RegState, RegInput
NOW = 100.0


def answer(c: RegistrationClient, status: int, *extra: tuple[str, str]) -> Response:
    assert c.last_sent is not None
    return make_response(c.last_sent, status, extra=list(extra))


def granted(c: RegistrationClient, expires: int) -> Response:
    assert c.last_sent is not None
    return ok(c.last_sent, expires)


INPUTS: dict[RegInput, Callable[[RegistrationClient], Request | None]] = {
    E.START: lambda c: c.start(NOW),
    E.STOP: lambda c: c.stop(NOW),
    E.NEW_FLOW: lambda c: c.new_flow(NOW),
    E.RECV_BINDING: lambda c: c.on_response(granted(c, 60), NOW),
    E.RECV_NO_BINDING: lambda c: c.on_response(granted(c, 0), NOW),
    E.RECV_CHALLENGE: lambda c: c.on_response(answer(c, 401, ("WWW-Authenticate", CHALLENGE)), NOW),
    E.RECV_REFUSAL: lambda c: c.on_response(answer(c, 401), NOW),  # no usable challenge
    E.RECV_TOO_BRIEF: lambda c: c.on_response(answer(c, 423, ("Min-Expires", "120")), NOW),
    E.RECV_FAILURE: lambda c: c.on_response(answer(c, 503), NOW),
    E.TIMEOUT: lambda c: c.on_timeout(NOW),
    E.TRANSPORT_ERROR: lambda c: c.on_transport_error(NOW, "boom"),
    E.TIMER: lambda c: c.handle_timer(c.get_timer() or NOW),
}


def client_in(state: RegState) -> RegistrationClient:
    """A client brought to ``state`` through its inputs (failed: a 403; stopped: after an
    answered un-REGISTER)."""
    c = client(expires=60)
    if state is not S.IDLE:
        c.start(0.0)
    if state in (S.REGISTERED, S.UNREGISTERING, S.STOPPED):
        c.on_response(granted(c, 60), 0.0)
    if state is S.FAILED:
        c.on_response(answer(c, 403), 0.0)
    if state in (S.UNREGISTERING, S.STOPPED):
        c.stop(0.0)
    if state is S.STOPPED:
        c.on_response(granted(c, 0), 0.0)
    assert c.state is state
    return c


def sent(request: Request | None) -> str | None:
    """What a request is, in short: ``REGISTER <Expires>`` (+digest with credentials)."""
    if request is None:
        return None
    digest = " +digest" if "Authorization" in request.headers else ""
    return f"{request.method} {request.headers.get('Expires')}{digest}"


# (state, input, next state, request sent, timer running after, last_failure after)
EXPECTED: list[tuple[RegState, RegInput, RegState, str | None, bool, str | None]] = [
    (S.IDLE, E.START, S.REGISTERING, "REGISTER 60", False, None),
    (S.IDLE, E.STOP, S.STOPPED, None, False, None),
    (S.REGISTERING, E.RECV_BINDING, S.REGISTERED, None, True, None),
    (
        S.REGISTERING,
        E.RECV_NO_BINDING,
        S.FAILED,
        None,
        True,
        "registrar granted no binding (expires=0)",
    ),
    (S.REGISTERING, E.RECV_CHALLENGE, S.REGISTERING, "REGISTER 60 +digest", False, None),
    (
        S.REGISTERING,
        E.RECV_REFUSAL,
        S.FAILED,
        None,
        True,
        "401 Unauthorized (credentials rejected)",
    ),
    (S.REGISTERING, E.RECV_TOO_BRIEF, S.REGISTERING, "REGISTER 120", False, None),
    (S.REGISTERING, E.RECV_FAILURE, S.FAILED, None, True, "503 Service Unavailable"),
    (
        S.REGISTERING,
        E.TIMEOUT,
        S.FAILED,
        None,
        True,
        "timeout: no answer from the registrar",
    ),
    (S.REGISTERING, E.TRANSPORT_ERROR, S.FAILED, None, True, "transport error: boom"),
    (S.REGISTERING, E.STOP, S.UNREGISTERING, "REGISTER 0", False, None),
    (S.REGISTERING, E.NEW_FLOW, S.REGISTERING, "REGISTER 60", False, None),
    (S.REGISTERED, E.NEW_FLOW, S.REGISTERING, "REGISTER 60", False, None),
    (S.REGISTERED, E.TIMER, S.REGISTERING, "REGISTER 60", False, None),
    (S.REGISTERED, E.STOP, S.UNREGISTERING, "REGISTER 0", False, None),
    (S.FAILED, E.TIMER, S.REGISTERING, "REGISTER 60", False, "403 Forbidden"),
    (S.FAILED, E.STOP, S.STOPPED, None, False, "403 Forbidden"),
    (S.UNREGISTERING, E.RECV_BINDING, S.STOPPED, None, False, None),
    (S.UNREGISTERING, E.RECV_NO_BINDING, S.STOPPED, None, False, None),
    (S.UNREGISTERING, E.RECV_CHALLENGE, S.UNREGISTERING, "REGISTER 0 +digest", False, None),
    (S.UNREGISTERING, E.RECV_REFUSAL, S.STOPPED, None, False, None),
    (S.UNREGISTERING, E.RECV_TOO_BRIEF, S.STOPPED, None, False, None),
    (S.UNREGISTERING, E.RECV_FAILURE, S.STOPPED, None, False, None),
    (S.UNREGISTERING, E.TIMEOUT, S.STOPPED, None, False, None),
    (S.UNREGISTERING, E.STOP, S.STOPPED, None, False, None),
    (S.STOPPED, E.START, S.REGISTERING, "REGISTER 60", False, None),
    (S.STOPPED, E.STOP, S.STOPPED, None, False, None),
]


def test_the_expectations_cover_every_row_of_the_table() -> None:
    rows = {(state, event) for state, row in RegistrationClient.TABLE.items() for event in row}
    assert {(row[0], row[1]) for row in EXPECTED} == rows
    assert set(RegistrationClient.TABLE) == set(RegState)
    for row in RegistrationClient.TABLE.values():
        for _, action in row.values():
            assert action is None or callable(getattr(RegistrationClient, f"_{action}", None))


@pytest.mark.parametrize(
    ("state", "event", "next_state", "sends", "timer", "failure"),
    EXPECTED,
    ids=[f"{row[0]}-{row[1].name}" for row in EXPECTED],
)
def test_row(
    state: RegState,
    event: RegInput,
    next_state: RegState,
    sends: str | None,
    timer: bool,
    failure: str | None,
) -> None:
    c = client_in(state)
    assert sent(INPUTS[event](c)) == sends
    assert c.state is next_state
    assert (c.get_timer() is not None) == timer
    assert c.last_failure == failure


def test_a_binding_sets_expiry_and_a_refusal_clears_it() -> None:
    c = client_in(S.REGISTERING)
    INPUTS[E.RECV_BINDING](c)
    assert c.expires_at == NOW + 60 and c.failures == 0
    c = client_in(S.UNREGISTERING)
    INPUTS[E.RECV_BINDING](c)
    assert c.expires_at is None
    c = client_in(S.UNREGISTERING)
    INPUTS[E.TIMEOUT](c)  # no answer to the un-REGISTER: the binding is left to expire
    assert c.expires_at == 60.0


# (state, input) from the network or the clock that the state does not list: absorbed
ABSORBED = [
    (S.IDLE, E.TIMEOUT),
    (S.IDLE, E.TRANSPORT_ERROR),
    (S.REGISTERED, E.RECV_FAILURE),  # a late answer
    (S.REGISTERED, E.RECV_CHALLENGE),
    (S.REGISTERED, E.TIMEOUT),
    (S.FAILED, E.RECV_BINDING),
    (S.FAILED, E.TRANSPORT_ERROR),
    (S.UNREGISTERING, E.TRANSPORT_ERROR),
    (S.UNREGISTERING, E.TIMER),
    (S.STOPPED, E.RECV_FAILURE),
    (S.STOPPED, E.TIMEOUT),
]


@pytest.mark.parametrize(("state", "event"), ABSORBED, ids=[f"{s}-{e.name}" for s, e in ABSORBED])
def test_unexpected_network_input_is_absorbed(state: RegState, event: RegInput) -> None:
    assert event not in RegistrationClient.TABLE[state]
    c = client_in(state)
    before = c.status()
    assert INPUTS[event](c) is None
    assert c.status() == before


def test_a_provisional_response_is_no_input() -> None:
    c = client_in(S.REGISTERING)
    assert c.on_response(answer(c, 100), NOW) is None
    assert c.state is S.REGISTERING


@pytest.mark.parametrize("state", [S.REGISTERING, S.REGISTERED, S.FAILED, S.UNREGISTERING])
def test_start_while_started_raises_the_named_error(state: RegState) -> None:
    c = client_in(state)
    before = (c.status(), c.cseq)
    with pytest.raises(RegistrationStateError, match="start"):
        c.start(NOW)
    assert issubclass(RegistrationStateError, SipError)
    assert (c.status(), c.cseq) == before
