"""Tests for sipdialer.sip.digest (RFC 7616/2617 vectors, parsing, client and server)."""

import hashlib

import pytest

from sipdialer.sip.digest import (
    Challenge,
    ClientAuthenticator,
    DigestError,
    DigestServer,
    VerifyResult,
    build_authorization,
    parse_auth_params,
    parse_challenge,
    pick_challenge,
)

# --- RFC 7616 §3.9.1 -------------------------------------------------------------------

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def rfc7616_challenge(algorithm: str) -> str:
    return (
        'Digest\r\n    realm="http-auth@example.org",\r\n    qop="auth, auth-int",\r\n'
        f"    algorithm={algorithm},\r\n"
        f'    nonce="{RFC7616_NONCE}",\r\n    opaque="{RFC7616_OPAQUE}"'
    )


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm: str, response: str) -> None:
    challenge = parse_challenge(rfc7616_challenge(algorithm))
    assert challenge.algorithm == algorithm
    assert challenge.qop == ("auth", "auth-int")
    value = build_authorization(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        cnonce=RFC7616_CNONCE,
    )
    assert value.startswith("Digest ")
    for part in (
        'username="Mufasa"',
        'realm="http-auth@example.org"',
        'uri="/dir/index.html"',
        f"algorithm={algorithm}",
        f'nonce="{RFC7616_NONCE}"',
        "nc=00000001",
        f'cnonce="{RFC7616_CNONCE}"',
        "qop=auth",
        f'response="{response}"',
        f'opaque="{RFC7616_OPAQUE}"',
    ):
        assert part in value.split(", ") or f"Digest {part}" in value, part
    _, params = parse_auth_params(value)
    assert params["response"] == response
    assert params["qop"] == "auth"


# --- RFC 2617 §3.5 ---------------------------------------------------------------------


def test_rfc2617_example() -> None:
    challenge = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value = build_authorization(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle Of Life",
        cnonce="0a4f113b",
        nc=1,
    )
    _, params = parse_auth_params(value)
    assert params["response"] == "6629fae49393a05397450978507c4ef1"
    assert params["nc"] == "00000001"
    assert params["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"
    assert "algorithm" not in params  # the challenge did not name one
    assert "nc=00000001" in value and "qop=auth" in value  # unquoted


# --- no qop (RFC 2069 style) -----------------------------------------------------------


def test_no_qop_rfc2069() -> None:
    challenge = parse_challenge('Digest realm="biloxi.com", nonce="abc123"')
    value = build_authorization(
        challenge, method="INVITE", uri="sip:bob@biloxi.com", username="bob", password="zanzibar"
    )

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    expected = md5(md5("bob:biloxi.com:zanzibar") + ":abc123:" + md5("INVITE:sip:bob@biloxi.com"))
    _, params = parse_auth_params(value)
    assert params["response"] == expected
    assert not {"cnonce", "nc", "qop", "algorithm", "opaque"} & params.keys()
    assert 'uri="sip:bob@biloxi.com"' in value


def test_auth_int_only_hashes_body() -> None:
    challenge = Challenge(realm="r", nonce="n", algorithm="SHA-256", qop=("auth-int",))
    body = b"v=0\r\n"

    def sha(s: str | bytes) -> str:
        return hashlib.sha256(s.encode() if isinstance(s, str) else s).hexdigest()

    value = build_authorization(
        challenge, method="INVITE", uri="sip:x@y", username="u", password="p", body=body,
        cnonce="c", nc=2,
    )  # fmt: skip
    ha2 = sha("INVITE:sip:x@y:" + sha(body))
    expected = sha(f"{sha('u:r:p')}:n:00000002:c:auth-int:{ha2}")
    _, params = parse_auth_params(value)
    assert params["qop"] == "auth-int" and params["response"] == expected
    assert params["algorithm"] == "SHA-256"  # non-MD5 always named


def test_sess_variant() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", algorithm=MD5-sess, qop="auth"')

    def md5(s: str) -> str:
        return hashlib.md5(s.encode()).hexdigest()

    value = build_authorization(
        challenge, method="REGISTER", uri="sip:r", username="u", password="p", cnonce="c"
    )
    ha1 = md5(f"{md5('u:r:p')}:n:c")
    expected = md5(f"{ha1}:n:00000001:c:auth:{md5('REGISTER:sip:r')}")
    _, params = parse_auth_params(value)
    assert params["response"] == expected and params["algorithm"] == "MD5-sess"


def test_random_cnonce_and_quoting() -> None:
    challenge = Challenge(realm='we"ird', nonce="n", qop=("auth",))
    value = build_authorization(challenge, method="M", uri="sip:a", username='a\\b"c', password="p")
    assert 'username="a\\\\b\\"c"' in value and 'realm="we\\"ird"' in value
    _, params = parse_auth_params(value)
    assert params["username"] == 'a\\b"c'
    assert len(params["cnonce"]) == 32 and int(params["cnonce"], 16) >= 0
    with pytest.raises(DigestError):
        build_authorization(challenge, method="M", uri="sip:a", username="a\r\nX: y", password="p")
    with pytest.raises(DigestError):
        build_authorization(challenge, method="M", uri="sip:a", username="a", password="p", nc=0)


# --- parsing -----------------------------------------------------------------------------


def test_parse_kamailio_style() -> None:
    c = parse_challenge('Digest realm="trunk.test", nonce="XyZ9aBcDeF0123456789abcdef", qop="auth"')
    assert c == Challenge(realm="trunk.test", nonce="XyZ9aBcDeF0123456789abcdef", qop=("auth",))
    assert c.algorithm == "MD5" and not c.algorithm_named


def test_parse_opaque_stale_lowercase_algorithm() -> None:
    c = parse_challenge(
        'digest   realm = "trunk.test" ,nonce="n1",opaque="op,aque" , stale=TRUE ,'
        ' algorithm=sha-256 , qop="auth-int , auth", domain="sip:trunk.test"'
    )
    assert c.algorithm == "SHA-256" and c.algorithm_named
    assert c.opaque == "op,aque" and c.stale is True
    assert c.qop == ("auth-int", "auth") and c.domain == "sip:trunk.test"
    assert parse_challenge('Digest realm="r", nonce="n", stale=false').stale is False


def test_parse_auth_params_escapes_and_tokens() -> None:
    scheme, params = parse_auth_params(
        'Digest realm="a \\"quoted\\" realm\\\\", NONCE=abc/def==, ,, qop="auth,auth-int"'
    )
    assert scheme == "Digest"
    assert params == {
        "realm": 'a "quoted" realm\\',
        "nonce": "abc/def==",
        "qop": "auth,auth-int",
    }
    assert parse_auth_params("Digest") == ("Digest", {})


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        "=",
        '"Digest"',
        "Digest realm",
        "Digest realm=",
        'Digest realm="unterminated',
        'Digest realm="x\\',
        'Digest realm="x" nonce="y"',
        'Digest realm="x", realm="y"',
        'Digest realm="x", =y',
        "Digest, realm=x",
        "Digest realm=x, Digest realm=y",
        "Dig\x00est realm=x",
    ],
)
def test_parse_auth_params_garbage(garbage: str) -> None:
    with pytest.raises(DigestError):
        parse_auth_params(garbage)


@pytest.mark.parametrize(
    "bad",
    [
        'Basic realm="x"',
        'Digest nonce="n"',
        'Digest realm="r"',
        'Digest realm="r", nonce=""',
        'Digest realm="r", nonce="n", algorithm=AKAv1-MD5',
        'Digest realm="r", nonce="n", qop="auth-conf"',
        "\x00\x01\xff",
        'Digest realm="r", nonce="n" garbage',
    ],
)
def test_parse_challenge_rejects(bad: str) -> None:
    with pytest.raises(DigestError):
        parse_challenge(bad)


def test_pick_challenge_prefers_sha256() -> None:
    values = [
        'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"',
        "not a challenge at all",
        'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"',
        'Digest realm="r", nonce="n3", algorithm=AKAv1-MD5',
    ]
    assert pick_challenge(values).algorithm == "SHA-256"
    assert pick_challenge(values[:2]).nonce == "n1"
    with pytest.raises(DigestError):
        pick_challenge(["Basic realm=x", "junk"])
    with pytest.raises(DigestError):
        pick_challenge([])


# --- client nonce counting ---------------------------------------------------------------


def test_client_authenticator_counts_nonces() -> None:
    client = ClientAuthenticator("alice", "secret")
    assert client.authorize(method="REGISTER", uri="sip:r") == []
    client.on_challenge(['Digest realm="r", nonce="n1", qop="auth"'], proxy=True)
    first = client.authorize(method="REGISTER", uri="sip:r")
    second = client.authorize(method="REGISTER", uri="sip:r")
    assert [h for h, _ in first] == ["Proxy-Authorization"]
    p1, p2 = parse_auth_params(first[0][1])[1], parse_auth_params(second[0][1])[1]
    assert (p1["nc"], p2["nc"]) == ("00000001", "00000002")
    assert p1["cnonce"] == p2["cnonce"]
    client.on_challenge(['Digest realm="r", nonce="n2", qop="auth", stale=true'])
    p3 = parse_auth_params(client.authorize(method="REGISTER", uri="sip:r")[0][1])[1]
    assert p3["nonce"] == "n2" and p3["nc"] == "00000001" and p3["cnonce"] != p1["cnonce"]
    client.forget("r")
    assert client.authorize(method="REGISTER", uri="sip:r") == []


# --- server ------------------------------------------------------------------------------

USERS = {"alice": "wonderland", "bob": "builder"}
T0 = 1_700_000_000.0


def make_server(
    *, nonce_ttl: float = 300.0, algorithms: tuple[str, ...] = ("SHA-256", "MD5"), qop: bool = True
) -> DigestServer:
    return DigestServer("pbx.test", b"k" * 32, nonce_ttl=nonce_ttl, algorithms=algorithms, qop=qop)


def answer(server: DigestServer, now: float, algorithm: str, **kwargs: str) -> str:
    challenges = [parse_challenge(v) for v in server.challenges(now)]
    challenge = next(c for c in challenges if c.algorithm == algorithm)
    creds = {"method": "REGISTER", "uri": "sip:pbx.test", "username": "alice"}
    creds.update(kwargs)
    password = creds.pop("password", "wonderland")
    return build_authorization(challenge, password=password, **creds)


def verify(
    server: DigestServer,
    value: str,
    now: float = T0 + 1,
    *,
    method: str = "REGISTER",
    body: bytes = b"",
    request_uri: str | None = None,
) -> VerifyResult:
    return server.verify(
        value, method=method, password_for=USERS.get, now=now, body=body, request_uri=request_uri
    )


def test_server_challenges_shape() -> None:
    values = make_server(algorithms=("MD5", "SHA-256")).challenges(T0)
    parsed = [parse_challenge(v) for v in values]
    assert [c.algorithm for c in parsed] == ["SHA-256", "MD5"]
    assert all(c.realm == "pbx.test" and c.qop == ("auth",) and not c.stale for c in parsed)
    assert parse_challenge(make_server().challenges(T0, stale=True)[0]).stale
    assert make_server().challenges(T0)[0] != make_server().challenges(T0)[0]  # salted nonces


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_server_round_trip(algorithm: str) -> None:
    server = make_server()
    result = verify(server, answer(server, T0, algorithm), request_uri="sip:pbx.test")
    assert result.ok and result.username == "alice" and not result.stale


def test_server_round_trip_without_qop() -> None:
    server = make_server(qop=False, algorithms=("MD5",))
    value = answer(server, T0, "MD5")
    assert "qop" not in parse_auth_params(value)[1]
    assert verify(server, value).ok


def test_server_auth_int_checks_body() -> None:
    server = make_server()
    challenge = Challenge(realm="pbx.test", nonce=server.make_nonce(T0), qop=("auth-int",))
    value = build_authorization(
        challenge, method="INVITE", uri="sip:x", username="bob", password="builder", body=b"sdp"
    )
    assert verify(server, value, method="INVITE", body=b"sdp").ok
    value = build_authorization(
        challenge, method="INVITE", uri="sip:x", username="bob", password="builder", body=b"sdp",
        nc=2,
    )  # fmt: skip
    assert verify(server, value, method="INVITE", body=b"other").reason == "invalid credentials"
    assert verify(server, value, method="INVITE", body=b"sdp").ok


def test_server_wrong_password_and_unknown_user_look_the_same() -> None:
    server = make_server()
    wrong = verify(server, answer(server, T0, "SHA-256", password="nope"))
    unknown = verify(server, answer(server, T0, "SHA-256", username="mallory"))
    assert not wrong.ok and not unknown.ok
    assert wrong.reason == unknown.reason == "invalid credentials"
    assert not wrong.stale and not unknown.stale


def test_server_expired_nonce_is_stale() -> None:
    server = make_server(nonce_ttl=60)
    value = answer(server, T0, "SHA-256")
    result = verify(server, value, now=T0 + 61)
    assert not result.ok and result.stale and result.username == "alice"
    # stale is only signalled when the digest itself was right
    bad = verify(server, answer(server, T0, "SHA-256", password="x"), now=T0 + 61)
    assert not bad.ok and not bad.stale


def test_server_tampered_nonce() -> None:
    server = make_server()
    nonce = server.make_nonce(T0)
    tampered = nonce[:-2] + ("AA" if nonce[-2:] != "AA" else "BB")
    for bad_nonce in (tampered, "short", "!!!!", DigestServer("pbx.test", b"x").make_nonce(T0)):
        challenge = Challenge(realm="pbx.test", nonce=bad_nonce, algorithm="SHA-256", qop=("auth",))
        value = build_authorization(
            challenge,
            method="REGISTER",
            uri="sip:pbx.test",
            username="alice",
            password="wonderland",
        )
        result = verify(server, value)
        assert not result.ok and not result.stale and result.reason == "invalid nonce"


def test_server_rejects_wrong_realm_uri_algorithm_and_replay() -> None:
    server = make_server(algorithms=("SHA-256",))
    nonce = server.make_nonce(T0)
    other_realm = Challenge(realm="evil.test", nonce=nonce, algorithm="SHA-256", qop=("auth",))
    value = build_authorization(
        other_realm, method="REGISTER", uri="sip:pbx.test", username="alice", password="wonderland"
    )
    assert verify(server, value).reason == "wrong realm"
    md5 = Challenge(realm="pbx.test", nonce=nonce, algorithm="MD5", qop=("auth",))
    value = build_authorization(
        md5, method="REGISTER", uri="sip:pbx.test", username="alice", password="wonderland"
    )
    assert verify(server, value).reason == "unsupported algorithm"

    value = answer(server, T0, "SHA-256")
    assert verify(server, value, request_uri="sip:other.test").reason == "uri mismatch"
    assert not verify(server, value, method="INVITE").ok
    assert verify(server, value).ok
    assert verify(server, value).reason == "replayed nonce count"


def test_server_nc_increments_accepted() -> None:
    server = make_server()
    client = ClientAuthenticator("alice", "wonderland")
    client.on_challenge(server.challenges(T0))
    for i in range(3):
        [(header, value)] = client.authorize(method="REGISTER", uri="sip:pbx.test")
        assert header == "Authorization"
        assert verify(server, value, now=T0 + i).ok


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "Digest",
        'Basic YWxhZGRpbjpvcGVuc2VzYW1l"',
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        'Digest username="alice", realm="pbx.test"',
        'Digest username="alice", realm="pbx.test", nonce="x", uri="sip:a", response="\u00e9"',
        'Digest username="alice", realm="pbx.test", nonce="x", uri="sip:a", response="r", '
        'qop=auth, nc=zz, cnonce="c", algorithm=SHA-256',
        'Digest username="alice", realm="pbx.test", nonce="x", uri="sip:a", response="r", '
        "algorithm=SHA-256",
        'Digest username="alice", realm="pbx.test", nonce="x", uri="sip:a", response="r", '
        'qop=auth-conf, nc=00000001, cnonce="c", algorithm=SHA-256',
        "\x00\xff garbage \"'",
    ],
)
def test_server_garbage_never_raises(garbage: str) -> None:
    result = verify(make_server(), garbage)
    assert not result.ok and not result.stale and result.reason
