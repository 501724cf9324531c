"""SDES keys in SDP (RFC 4568): the ``a=crypto`` attribute, parsed and written.

    a=crypto:<tag> <crypto-suite> <key-params> [<session-params> …]
    key-params = key-param *(";" key-param)
    key-param  = "inline:" <base64 of master key || master salt> ["|" lifetime] ["|" MKI ":" length]

Owns the syntax and the sizes of the suites we speak (those libsrtp offers through
pylibsrtp): ``AES_CM_128_HMAC_SHA1_80``, ``AES_CM_128_HMAC_SHA1_32`` (RFC 4568 §6.2),
``AEAD_AES_128_GCM``, ``AEAD_AES_256_GCM`` (RFC 7714 §12). A line we cannot use (an
unknown suite, a key of the wrong length, an MKI — libsrtp's stream API here takes
none) parses into a :class:`CryptoAttribute` whose :attr:`~CryptoAttribute.usable` says
so and why, so an answerer can pick the next line; only malformed syntax raises
:class:`~sipdialer.sip.sdp.SdpError`. Keys never appear in ``repr`` or ``str`` of these
objects (only :meth:`CryptoAttribute.to_sdp` writes them), so they cannot reach a log line
by accident. Pure: no IO, no randomness (:func:`new_key_salt` takes the bytes source).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sipdialer.sip.errors import SipError

__all__ = [
    "SUITES",
    "CryptoAttribute",
    "CryptoError",
    "CryptoKey",
    "Suite",
    "new_key_salt",
    "parse_crypto",
]


class CryptoError(SipError, ValueError):
    """An ``a=crypto`` value that is not RFC 4568 syntax."""


@dataclass(frozen=True, slots=True)
class Suite:
    """A crypto-suite's name and sizes (bytes)."""

    name: str
    key_length: int
    salt_length: int
    tag_length: int

    @property
    def key_salt_length(self) -> int:
        return self.key_length + self.salt_length


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("AES_CM_128_HMAC_SHA1_80", 16, 14, 10),
        Suite("AES_CM_128_HMAC_SHA1_32", 16, 14, 4),
        Suite("AEAD_AES_128_GCM", 16, 12, 16),
        Suite("AEAD_AES_256_GCM", 32, 12, 16),
    )
}
"""The suites we offer and accept, in our order of preference for an offer."""

_LIFETIME = re.compile(r"(?:2\^([0-9]{1,2})|([0-9]{1,20}))", re.ASCII)
_MKI = re.compile(r"([0-9]{1,10}):([0-9]{1,3})", re.ASCII)
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)
_TAG = re.compile(r"[0-9]{1,9}", re.ASCII)
_SUITE = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)


@dataclass(frozen=True, slots=True)
class CryptoKey:
    """One ``inline:`` key-param: master key || master salt, lifetime, MKI."""

    key_salt: bytes = field(repr=False)
    lifetime: int | None = None
    """Packets this master key may protect (``2^n`` or a number), None: the suite's."""
    mki: tuple[int, int] | None = None
    """(MKI value, MKI length in bytes), or None."""

    def to_sdp(self) -> str:
        text = "inline:" + base64.b64encode(self.key_salt).decode("ascii")
        if self.lifetime is not None:
            n = self.lifetime.bit_length() - 1
            text += f"|2^{n}" if self.lifetime == 1 << n else f"|{self.lifetime}"
        if self.mki is not None:
            text += f"|{self.mki[0]}:{self.mki[1]}"
        return text


@dataclass(frozen=True, slots=True)
class CryptoAttribute:
    """One ``a=crypto`` line."""

    tag: int
    suite: str
    keys: tuple[CryptoKey, ...]
    session_params: tuple[str, ...] = ()

    @property
    def problem(self) -> str | None:
        """Why we cannot use this line, or None when we can."""
        suite = SUITES.get(self.suite)
        if suite is None:
            return f"unsupported crypto-suite {self.suite}"
        if len(self.keys) != 1:
            return "several master keys (key-params) are not supported"
        key = self.keys[0]
        if len(key.key_salt) != suite.key_salt_length:
            return (
                f"{self.suite} needs {suite.key_salt_length} bytes of key and salt, "
                f"got {len(key.key_salt)}"
            )
        if key.mki is not None:
            return "MKI is not supported"
        unknown = [p for p in self.session_params if not p.startswith("UNENCRYPTED_SRTCP")]
        if any(p in ("UNENCRYPTED_SRTP", "UNAUTHENTICATED_SRTP") for p in self.session_params):
            return "unencrypted or unauthenticated SRTP is refused"
        if unknown:
            return f"unsupported session parameter {unknown[0].split('=', 1)[0]}"
        return None

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def key_salt(self) -> bytes:
        """The (single) master key || salt."""
        return self.keys[0].key_salt

    def to_sdp(self) -> str:
        """The attribute's value (after ``a=crypto:``); carries the key."""
        parts = [str(self.tag), self.suite, ";".join(k.to_sdp() for k in self.keys)]
        return " ".join([*parts, *self.session_params])

    def __str__(self) -> str:  # never the key
        return f"crypto:{self.tag} {self.suite} inline:<{len(self.keys)} key(s)>"


def parse_crypto(value: str) -> CryptoAttribute:
    """Parse the value of an ``a=crypto:`` line (everything after the colon)."""
    fields = value.split()
    if len(fields) < 3:
        raise CryptoError("a=crypto needs a tag, a crypto-suite and key-params")
    tag_text, suite, key_params, *session = fields
    if not _TAG.fullmatch(tag_text):
        raise CryptoError("a=crypto tag must be 1-9 digits")
    if not _SUITE.fullmatch(suite):
        raise CryptoError("a=crypto crypto-suite is not a token")
    keys = tuple(_parse_key_param(p) for p in key_params.split(";"))
    return CryptoAttribute(int(tag_text), suite, keys, tuple(session))


def _parse_key_param(text: str) -> CryptoKey:
    method, sep, info = text.partition(":")
    if not sep or method.lower() != "inline":
        raise CryptoError("a=crypto key-params must be inline:")
    key_text, *rest = info.split("|")
    if not _B64.fullmatch(key_text):
        raise CryptoError("a=crypto key is not base64")
    try:
        key_salt = base64.b64decode(key_text + "=" * (-len(key_text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError("a=crypto key is not base64") from None
    lifetime: int | None = None
    mki: tuple[int, int] | None = None
    if len(rest) > 2:
        raise CryptoError("a=crypto key-param has too many '|' fields")
    for part in rest:
        if (m := _MKI.fullmatch(part)) is not None and mki is None:
            length = int(m.group(2))
            if not 1 <= length <= 128:
                raise CryptoError("a=crypto MKI length must be 1-128")
            mki = (int(m.group(1)), length)
        elif (m := _LIFETIME.fullmatch(part)) is not None and lifetime is None and mki is None:
            lifetime = 1 << int(m.group(1)) if m.group(1) is not None else int(m.group(2))
        else:
            raise CryptoError("a=crypto key-param lifetime or MKI is malformed")
    return CryptoKey(key_salt, lifetime, mki)


def new_key_salt(suite: str, random_bytes: Callable[[int], bytes]) -> bytes:
    """Fresh master key || salt for ``suite`` (``random_bytes`` = ``secrets.token_bytes``)."""
    return random_bytes(SUITES[suite].key_salt_length)
