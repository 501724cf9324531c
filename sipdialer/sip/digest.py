"""Digest authentication (RFC 7616/8760/2617, RFC 3261 §22) for SIP.

Owns: parsing WWW-Authenticate/Proxy-Authenticate challenges, building
Authorization/Proxy-Authorization values (client side, with nonce-count tracking),
and issuing/verifying stateless-nonce challenges (server side, for the registrar).
Pure: no I/O; time is passed in as ``now``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

from sipdialer.sip.errors import SipError

__all__ = [
    "Challenge",
    "ClientAuthenticator",
    "DigestError",
    "DigestServer",
    "VerifyResult",
    "build_authorization",
    "parse_auth_params",
    "parse_challenge",
    "pick_challenge",
]


class DigestError(SipError, ValueError):
    """A malformed or unsupported challenge / credentials header."""


# canonical name -> (hashlib name, strength rank used to prefer challenges)
_HASHES = {"MD5": ("md5", 1), "SHA-256": ("sha256", 2), "SHA-512-256": ("sha512_256", 3)}
try:
    hashlib.new("sha512_256")
except ValueError:  # pragma: no cover - depends on the OpenSSL build
    del _HASHES["SHA-512-256"]
# lower-case -> canonical, e.g. "sha-256-sess" -> "SHA-256-sess"
_ALGORITHMS = {name.lower(): name for base in _HASHES for name in (base, f"{base}-sess")}

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WS = " \t\r\n"


def _canonical_algorithm(name: str) -> str:
    try:
        return _ALGORITHMS[name.lower()]
    except KeyError:
        raise DigestError(f"unsupported digest algorithm {name!r}") from None


def _base(algorithm: str) -> str:
    return algorithm.removesuffix("-sess")


def _h(algorithm: str, data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.new(_HASHES[_base(algorithm)][0], raw).hexdigest()


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """Split ``'Digest realm="x", qop="auth,auth-int", algorithm=SHA-256'``.

    Returns ``(scheme, {lower-cased name: unquoted value})``. Handles quoted strings with
    backslash escapes, commas inside quotes, tokens and LWS around ``=`` and ``,``.
    Raises DigestError on anything else (including duplicate parameters).
    """
    n, i = len(value), 0

    def skip_ws(j: int) -> int:
        while j < n and value[j] in _WS:
            j += 1
        return j

    def token(j: int) -> tuple[str, int]:
        start = j
        while j < n and value[j] in _TCHAR:
            j += 1
        if j == start:
            raise DigestError(f"expected a token at offset {start} in {value!r}")
        return value[start:j], j

    i = skip_ws(i)
    scheme, i = token(i)
    if i < n and value[i] not in _WS:
        raise DigestError(f"bad auth scheme in {value!r}")
    params: dict[str, str] = {}
    i = skip_ws(i)
    while i < n:
        if value[i] == ",":  # empty list elements are allowed (RFC 7230 §7)
            i = skip_ws(i + 1)
            continue
        name, i = token(i)
        i = skip_ws(i)
        if i >= n or value[i] != "=":
            raise DigestError(f"expected '=' after {name!r}")
        i = skip_ws(i + 1)
        if i < n and value[i] == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise DigestError(f"unterminated quoted string for {name!r}")
                c = value[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    if i + 1 >= n:
                        raise DigestError(f"unterminated quoted string for {name!r}")
                    c = value[i + 1]
                    i += 1
                chars.append(c)
                i += 1
            param = "".join(chars)
        else:  # a token; be lenient about sloppy unquoted values such as base64 nonces
            start = i
            while i < n and value[i] not in _WS and value[i] not in ',"' and value[i].isprintable():
                i += 1
            if i == start:
                raise DigestError(f"missing value for {name!r}")
            param = value[start:i]
        key = name.lower()
        if key in params:
            raise DigestError(f"duplicate parameter {name!r}")
        params[key] = param
        i = skip_ws(i)
        if i < n:
            if value[i] != ",":
                raise DigestError(f"expected ',' at offset {i} in {value!r}")
            i = skip_ws(i + 1)
    return scheme, params


@dataclass(frozen=True)
class Challenge:
    """One parsed Digest challenge. ``algorithm`` is canonical (e.g. "SHA-256")."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()  # supported options only, in offered order: "auth", "auth-int"
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    algorithm_named: bool = False  # the challenge carried an explicit algorithm= parameter


def parse_challenge(value: str) -> Challenge:
    """Parse one WWW-Authenticate / Proxy-Authenticate value into a Challenge.

    DigestError if not Digest, realm or nonce missing, or the algorithm / qop set is
    unsupported.
    """
    scheme, params = parse_auth_params(value)
    if scheme.lower() != "digest":
        raise DigestError(f"not a Digest challenge: {scheme!r}")
    if "realm" not in params or not params.get("nonce"):
        raise DigestError("challenge lacks realm or nonce")
    algorithm = _canonical_algorithm(params.get("algorithm", "MD5"))
    qop: tuple[str, ...] = ()
    if "qop" in params:
        offered = [q.strip().lower() for q in params["qop"].split(",")]
        qop = tuple(q for q in offered if q in ("auth", "auth-int"))
        if not qop:
            raise DigestError(f"no supported qop in {params['qop']!r}")
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=algorithm,
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "").lower() == "true",
        domain=params.get("domain"),
        algorithm_named="algorithm" in params,
    )


def pick_challenge(values: list[str]) -> Challenge:
    """Pick the strongest usable challenge (SHA-512-256 > SHA-256 > MD5; ties: first offered).

    Unparseable or unsupported challenges are skipped; DigestError if none is usable.
    """
    best: Challenge | None = None
    for value in values:
        try:
            challenge = parse_challenge(value)
        except DigestError:
            continue
        if best is None or _rank(challenge) > _rank(best):
            best = challenge
    if best is None:
        raise DigestError("no usable Digest challenge")
    return best


def _rank(challenge: Challenge) -> int:
    return _HASHES[_base(challenge.algorithm)][1]


def _response(
    algorithm: str,
    *,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str,
    cnonce: str,
    body: bytes,
) -> str:
    """The request-digest (RFC 7616 §3.4.1; qop=None gives the RFC 2069 form)."""
    ha1 = _h(algorithm, f"{username}:{realm}:{password}")
    if algorithm.endswith("-sess"):
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + _h(algorithm, body)
    ha2 = _h(algorithm, a2)
    if qop is None:
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _quote(text: str) -> str:
    if "\r" in text or "\n" in text:
        raise DigestError("CR/LF not allowed in a digest parameter")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_authorization(
    challenge: Challenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    body: bytes = b"",
    cnonce: str | None = None,
    nc: int = 1,
) -> str:
    """Return the Authorization / Proxy-Authorization header value answering ``challenge``.

    ``uri`` is the Request-URI exactly as sent. qop=auth is preferred over auth-int; with
    no qop offered the RFC 2069 form (no cnonce/nc/qop) is produced.
    """
    algorithm = _canonical_algorithm(challenge.algorithm)
    if not 1 <= nc <= 0xFFFFFFFF:
        raise DigestError(f"nonce count out of range: {nc}")
    if challenge.qop and not {"auth", "auth-int"} & set(challenge.qop):
        raise DigestError(f"no supported qop in {challenge.qop!r}")
    qop = ("auth" if "auth" in challenge.qop else "auth-int") if challenge.qop else None
    if qop is not None or algorithm.endswith("-sess"):
        cnonce = cnonce if cnonce is not None else secrets.token_hex(16)
    else:
        cnonce = ""
    nc_hex = f"{nc:08x}"
    response = _response(
        algorithm,
        username=username,
        realm=challenge.realm,
        password=password,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_hex,
        cnonce=cnonce,
        body=body,
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
    ]
    if challenge.algorithm_named or algorithm != "MD5":
        parts.append(f"algorithm={algorithm}")
    if cnonce:
        parts.append(f"cnonce={_quote(cnonce)}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop is not None:
        parts += [f"qop={qop}", f"nc={nc_hex}"]
    return "Digest " + ", ".join(parts)


@dataclass
class _ClientSlot:
    challenge: Challenge
    header: str
    cnonce: str
    nc: int = 0


class ClientAuthenticator:
    """One account's digest state: the last challenge per realm and its nonce count.

    Feed it 401/407 challenges with :meth:`on_challenge`; :meth:`authorize` then yields
    headers for the retried request and pre-emptively for later ones (e.g. REGISTER
    refreshes), incrementing nc while the nonce stays the same. A new nonce resets nc
    and picks a fresh cnonce (kept for the nonce's life, so -sess HA1 stays stable).
    Loop protection (a second non-stale challenge for the same request) is the caller's.
    """

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self._slots: dict[str, _ClientSlot] = {}

    def on_challenge(self, values: list[str], *, proxy: bool = False) -> Challenge:
        """Remember the best challenge of a 401 (``proxy=False``) or 407 (``proxy=True``)."""
        challenge = pick_challenge(values)
        header = "Proxy-Authorization" if proxy else "Authorization"
        old = self._slots.get(challenge.realm)
        if old is not None and old.challenge.nonce == challenge.nonce:
            old.challenge, old.header = challenge, header
        else:
            self._slots[challenge.realm] = _ClientSlot(challenge, header, secrets.token_hex(16))
        return challenge

    def authorize(self, *, method: str, uri: str, body: bytes = b"") -> list[tuple[str, str]]:
        """(header name, value) pairs for every remembered realm; empty if none."""
        headers = []
        for slot in self._slots.values():
            slot.nc += 1
            value = build_authorization(
                slot.challenge,
                method=method,
                uri=uri,
                username=self.username,
                password=self.password,
                body=body,
                cnonce=slot.cnonce,
                nc=slot.nc,
            )
            headers.append((slot.header, value))
        return headers

    def forget(self, realm: str | None = None) -> None:
        """Drop one realm's state, or all of it."""
        if realm is None:
            self._slots.clear()
        else:
            self._slots.pop(realm, None)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of DigestServer.verify.

    ``username`` is the *claimed* username whenever the header parsed; trust it only if
    ``ok``. ``stale`` means the digest was right but the nonce expired: re-challenge with
    ``stale=True``.
    """

    ok: bool
    username: str | None = None
    stale: bool = False
    reason: str = ""


_NONCE_RAW = 8 + 8 + 16  # timestamp (ms) + salt + truncated HMAC-SHA256


class DigestServer:
    """Issue and verify Digest challenges for one realm with stateless nonces.

    A nonce is base64url(timestamp_ms | 8 random bytes | HMAC-SHA256(secret, realm,
    timestamp, salt)[:16]), so it verifies without storage and expires after
    ``nonce_ttl`` seconds. With ``qop`` the server offers qop="auth" and requires a qop
    answer (auth or auth-int); without it only the RFC 2069 form is accepted.

    Replay: for qop answers the highest nc seen per nonce is remembered (bounded, pruned
    as nonces expire) and a response with nc not above it is rejected. RFC 2069 answers
    carry no nc and are replayable within the nonce lifetime.
    """

    MAX_TRACKED = 10_000

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_ttl: float = 300.0,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        qop: bool = True,
    ) -> None:
        if not algorithms:
            raise ValueError("at least one algorithm is required")
        canonical = dict.fromkeys(_canonical_algorithm(a) for a in algorithms)
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.algorithms = tuple(sorted(canonical, key=lambda a: -_HASHES[_base(a)][1]))
        self.qop = qop
        self._secret = secret
        self._seen_nc: dict[str, tuple[int, float]] = {}  # nonce -> (highest nc, expiry)

    def _mac(self, payload: bytes) -> bytes:
        msg = self.realm.encode("utf-8") + b"\x00" + payload
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:16]

    def make_nonce(self, now: float) -> str:
        payload = struct.pack(">Q", max(0, int(now * 1000))) + secrets.token_bytes(8)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode("ascii").rstrip("=")

    def _nonce_time(self, nonce: str) -> float | None:
        """The nonce's issue time in seconds, or None if it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return None
        if len(raw) != _NONCE_RAW or not hmac.compare_digest(raw[16:], self._mac(raw[:16])):
            return None
        issued_ms: int = struct.unpack(">Q", raw[:8])[0]
        return issued_ms / 1000

    def challenges(self, now: float, *, stale: bool = False) -> list[str]:
        """Header values for WWW-Authenticate / Proxy-Authenticate, strongest algorithm first."""
        nonce = self.make_nonce(now)
        tail = (', qop="auth"' if self.qop else "") + (", stale=true" if stale else "")
        return [
            f"Digest realm={_quote(self.realm)}, nonce={_quote(nonce)}, algorithm={alg}{tail}"
            for alg in self.algorithms
        ]

    def verify(
        self,
        header_value: str,
        *,
        method: str,
        password_for: Callable[[str], str | None],
        now: float,
        body: bytes = b"",
        request_uri: str | None = None,
    ) -> VerifyResult:
        """Check an Authorization / Proxy-Authorization value. Never raises on bad input."""
        try:
            scheme, p = parse_auth_params(header_value)
        except DigestError:
            return VerifyResult(False, reason="malformed credentials")
        if scheme.lower() != "digest":
            return VerifyResult(False, reason="not Digest credentials")
        if any(k not in p for k in ("username", "realm", "nonce", "uri", "response")):
            return VerifyResult(False, reason="malformed credentials")
        username = p["username"]

        def fail(reason: str) -> VerifyResult:
            return VerifyResult(False, username=username, reason=reason)

        if p["realm"] != self.realm:
            return fail("wrong realm")
        algorithm = _ALGORITHMS.get(p.get("algorithm", "MD5").lower())
        if algorithm is None or algorithm not in self.algorithms:
            return fail("unsupported algorithm")
        if request_uri is not None and p["uri"] != request_uri:
            return fail("uri mismatch")
        qop, nc_hex, cnonce = p.get("qop"), p.get("nc", ""), p.get("cnonce", "")
        if self.qop:
            if qop not in ("auth", "auth-int") or not cnonce:
                return fail("missing or unsupported qop")
            if len(nc_hex) != 8 or not all(c in "0123456789abcdefABCDEF" for c in nc_hex):
                return fail("malformed nonce count")
        elif qop is not None:
            return fail("unexpected qop")
        if algorithm.endswith("-sess") and not cnonce:
            return fail("missing cnonce")
        issued = self._nonce_time(p["nonce"])
        if issued is None:
            return fail("invalid nonce")

        password = password_for(username)
        expected = _response(
            algorithm,
            username=username,
            realm=self.realm,
            # unknown user: hash a random password anyway so timing and outcome match
            password=password if password is not None else secrets.token_hex(16),
            nonce=p["nonce"],
            method=method,
            uri=p["uri"],
            qop=qop,
            nc=nc_hex.lower(),
            cnonce=cnonce,
            body=body,
        )
        good = hmac.compare_digest(expected.encode(), p["response"].lower().encode("utf-8"))
        if not good or password is None:
            return fail("invalid credentials")
        if not 0 <= now - issued <= self.nonce_ttl:
            return VerifyResult(False, username=username, stale=True, reason="stale nonce")
        if qop is not None and not self._accept_nc(p["nonce"], int(nc_hex, 16), issued, now):
            return fail("replayed nonce count")
        return VerifyResult(True, username=username, reason="ok")

    def _accept_nc(self, nonce: str, nc: int, issued: float, now: float) -> bool:
        seen = self._seen_nc.get(nonce)
        if seen is not None and nc <= seen[0]:
            return False
        if len(self._seen_nc) >= self.MAX_TRACKED:
            self._seen_nc = {k: v for k, v in self._seen_nc.items() if v[1] >= now}
            while len(self._seen_nc) >= self.MAX_TRACKED:  # still full: drop the oldest
                del self._seen_nc[next(iter(self._seen_nc))]
        self._seen_nc[nonce] = (nc, issued + self.nonce_ttl)
        return True
