"""The pure registration state machine, driven with a fake clock and hand-made responses
(the Kamailio tests in test_trunk_registration.py check the same against the real thing)."""

from __future__ import annotations

import hashlib
import itertools

from sipdialer.sip.digest import parse_auth_params
from sipdialer.sip.message import Request, make_response
from sipdialer.sip.registration import RegistrationClient, RegState

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
