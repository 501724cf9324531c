"""``a=crypto`` (RFC 4568): parsing and writing, lifetimes, MKI, several lines, what makes a
line unusable, and that keys never show in repr/str."""

from __future__ import annotations

import base64

import pytest

from sipdialer.sip.sdp_crypto import (
    SUITES,
    CryptoAttribute,
    CryptoError,
    CryptoKey,
    new_key_salt,
    parse_crypto,
)

KEY30 = bytes(range(30))
B64 = base64.b64encode(KEY30).decode()  # 40 characters


def test_rfc4568_example_parses() -> None:
    # RFC 4568 §4 (key shortened to our own 30 bytes)
    attr = parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^20|1:4")
    assert (attr.tag, attr.suite) == (1, "AES_CM_128_HMAC_SHA1_80")
    assert attr.keys == (CryptoKey(KEY30, 1 << 20, (1, 4)),)
    assert attr.problem == "MKI is not supported"


@pytest.mark.parametrize(
    ("params", "lifetime", "mki"),
    [
        ("", None, None),
        ("|2^31", 1 << 31, None),
        ("|1048576", 1048576, None),
        ("|7:1", None, (7, 1)),
        ("|2^48|255:2", 1 << 48, (255, 2)),
    ],
)
def test_lifetimes_and_mki(params: str, lifetime: int | None, mki: tuple[int, int] | None) -> None:
    attr = parse_crypto(f"2 AES_CM_128_HMAC_SHA1_32 inline:{B64}{params}")
    assert attr.keys[0].lifetime == lifetime and attr.keys[0].mki == mki
    assert parse_crypto(attr.to_sdp()) == attr  # round trip


def test_several_key_params_and_session_params() -> None:
    attr = parse_crypto(
        f"3 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^20;inline:{B64}|2^20 KDR=1 FEC_ORDER=SRTP_FEC"
    )
    assert len(attr.keys) == 2
    assert attr.session_params == ("KDR=1", "FEC_ORDER=SRTP_FEC")
    assert attr.problem == "several master keys (key-params) are not supported"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}", None),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64} UNENCRYPTED_SRTCP", None),
        (f"1 F8_128_HMAC_SHA1_80 inline:{B64}", "unsupported crypto-suite F8_128_HMAC_SHA1_80"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA", "needs 30 bytes of key and salt, got 3"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64} UNENCRYPTED_SRTP", "unencrypted"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64} WSH=64", "unsupported session parameter WSH"),
    ],
)
def test_usable_or_why_not(line: str, problem: str | None) -> None:
    attr = parse_crypto(line)
    if problem is None:
        assert attr.usable
    else:
        assert attr.problem is not None and problem in attr.problem


@pytest.mark.parametrize(
    "line",
    [
        "",
        "1 AES_CM_128_HMAC_SHA1_80",
        f"x AES_CM_128_HMAC_SHA1_80 inline:{B64}",
        f"1 AES-CM inline:{B64}",
        f"1 AES_CM_128_HMAC_SHA1_80 uri:{B64}",
        "1 AES_CM_128_HMAC_SHA1_80 inline:not*base64",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^x",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|1:999",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|1|2|3",
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|1:4|2^20",  # lifetime after MKI
    ],
)
def test_malformed_lines_raise(line: str) -> None:
    with pytest.raises(CryptoError):
        parse_crypto(line)


def test_keys_never_in_repr_or_str() -> None:
    attr = parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{B64}")
    for text in (repr(attr), str(attr), repr(attr.keys[0]), f"{attr}"):
        assert B64 not in text and B64[:10] not in text
        assert repr(KEY30) not in text
    assert B64 in attr.to_sdp()


@pytest.mark.parametrize("suite", list(SUITES))
def test_new_keys_have_the_suite_length_and_write_a_usable_line(suite: str) -> None:
    key = new_key_salt(suite, lambda n: bytes(n))
    assert len(key) == SUITES[suite].key_salt_length
    attr = CryptoAttribute(1, suite, (CryptoKey(key),))
    assert parse_crypto(attr.to_sdp()).usable


def test_parse_sdp_keeps_the_audio_streams_crypto_lines_in_order() -> None:
    from sipdialer.sip.sdp import parse_sdp

    body = (
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=audio 4000 RTP/SAVP 0\r\n"
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{B64}|2^20\r\n"
        "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:not*base64\r\n"  # malformed: skipped
        f"a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{B64}\r\n"
        "m=video 5000 RTP/SAVP 96\r\n"
        f"a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:{B64}\r\n"  # another stream's
    ).encode()
    offer = parse_sdp(body)
    assert offer.proto == "RTP/SAVP"
    assert [(c.tag, c.suite) for c in offer.crypto] == [
        (1, "AES_CM_128_HMAC_SHA1_80"),
        (3, "AES_CM_128_HMAC_SHA1_32"),
    ]
    assert all(c.usable for c in offer.crypto)
    plain = parse_sdp(body.replace(b"RTP/SAVP", b"RTP/AVP").split(b"a=crypto")[0])
    assert plain.crypto == ()
