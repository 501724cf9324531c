"""SDES-SRTP offer/answer per leg policy (sipdialer.sip.sdes) and its SDP rendering."""

from __future__ import annotations

import itertools
import secrets

import pytest

from sipdialer.sip.sdes import OFFER_SUITES, MediaKeys, SdesLeg, SrtpPolicy
from sipdialer.sip.sdp import answer_for, build_sdp, parse_sdp
from sipdialer.sip.sdp_crypto import SUITES, CryptoAttribute, CryptoKey

NO, OPTIONAL, REQUIRED = SrtpPolicy.NO, SrtpPolicy.OPTIONAL, SrtpPolicy.REQUIRED


def counter_bytes() -> object:
    """A deterministic ``random_bytes``: every call gives new bytes."""
    counter = itertools.count(1)

    def random_bytes(n: int) -> bytes:
        start = next(counter)
        return bytes((start + i) % 256 for i in range(n))

    return random_bytes


def leg(policy: SrtpPolicy) -> SdesLeg:
    return SdesLeg(policy, counter_bytes())  # type: ignore[arg-type]


def peer_line(
    tag: int, suite: str = "AES_CM_128_HMAC_SHA1_80", fill: int = 0x55
) -> CryptoAttribute:
    size = SUITES[suite].key_salt_length if suite in SUITES else 30
    return CryptoAttribute(tag, suite, (CryptoKey(bytes([fill]) * size),))


# -- what we offer -------------------------------------------------------------------------


def test_offer_per_policy() -> None:
    assert leg(NO).offer() == ("RTP/AVP", ())
    proto, lines = leg(OPTIONAL).offer()
    assert proto == "RTP/AVP"
    assert [(c.tag, c.suite) for c in lines] == list(enumerate(OFFER_SUITES, start=1))
    assert all(c.usable for c in lines)
    proto, lines = leg(REQUIRED).offer()
    assert proto == "RTP/SAVP" and len(lines) == len(OFFER_SUITES)


def test_keys_are_fresh_per_leg_and_per_suite_and_stable_within_a_leg() -> None:
    a, b = leg(OPTIONAL), SdesLeg(OPTIONAL, secrets.token_bytes)
    c = SdesLeg(OPTIONAL, secrets.token_bytes)
    keys_b = [line.key_salt for line in b.offer()[1]]
    keys_c = [line.key_salt for line in c.offer()[1]]
    assert len(set(keys_b)) == len(keys_b)  # one key per suite
    assert not set(keys_b) & set(keys_c)  # another leg, other keys
    assert a.offer() == a.offer()  # the same leg offers the same keys again


def test_fallback_offer_only_for_optional_and_only_once() -> None:
    assert leg(NO).fallback_offer() is None
    assert leg(REQUIRED).fallback_offer() is None
    sdes = leg(OPTIONAL)
    first = sdes.offer()
    fallback = sdes.fallback_offer()
    assert fallback is not None
    assert fallback[0] == "RTP/SAVP" and fallback[1] == first[1]  # same keys, SAVP
    assert sdes.fallback_offer() is None
    assert sdes.offer()[0] == "RTP/SAVP"  # later offers keep RTP/SAVP


def test_keys_never_in_repr() -> None:
    sdes = leg(REQUIRED)
    line = sdes.offer()[1][0]
    keys = MediaKeys(line.suite, b"\x11" * 30, line.key_salt)
    for text in (repr(sdes), repr(keys), str(line), repr(line)):
        assert "inline" not in text or "<" in text
        assert line.to_sdp().split("inline:")[1] not in text


# -- answers to our offer --------------------------------------------------------------------


def test_answer_with_our_tag_turns_srtp_on() -> None:
    for policy in (OPTIONAL, REQUIRED):
        sdes = leg(policy)
        ours = {c.tag: c for c in sdes.offer()[1]}
        outcome = sdes.take_answer("RTP/SAVP", (peer_line(2, "AES_CM_128_HMAC_SHA1_32"),))
        assert outcome.problem is None and outcome.keys is not None
        assert outcome.keys.suite == "AES_CM_128_HMAC_SHA1_32"
        assert outcome.keys.outbound == ours[2].key_salt
        assert outcome.keys.inbound == bytes([0x55]) * 30
        assert sdes.keys == outcome.keys


def test_answer_renumbered_tag_matches_by_suite() -> None:
    sdes = leg(OPTIONAL)
    ours = {c.suite: c for c in sdes.offer()[1]}
    outcome = sdes.take_answer("RTP/AVP", (peer_line(7, "AEAD_AES_128_GCM"),))
    assert outcome.keys is not None and outcome.keys.outbound == ours["AEAD_AES_128_GCM"].key_salt


@pytest.mark.parametrize(
    ("policy", "proto", "crypto", "srtp", "problem"),
    [
        (NO, "RTP/AVP", (), False, None),
        (NO, "RTP/AVP", (peer_line(1),), False, None),  # crypto ignored: we offered none
        (NO, "RTP/SAVP", (peer_line(1),), False, "plain RTP/AVP offer"),
        (OPTIONAL, "RTP/AVP", (), False, None),  # a plain callee: plain RTP
        (OPTIONAL, "RTP/AVP", (peer_line(1),), True, None),  # best effort accepted
        (OPTIONAL, "RTP/SAVP", (), False, "no usable a=crypto"),
        (REQUIRED, "RTP/SAVP", (peer_line(1),), True, None),
        (REQUIRED, "RTP/AVP", (), False, "refused SRTP"),
        (REQUIRED, "RTP/AVP", (peer_line(1),), True, None),
        (REQUIRED, "RTP/SAVP", (peer_line(1, "F8_128_HMAC_SHA1_80"),), False, "no usable"),
        (REQUIRED, "RTP/SAVP", (peer_line(9, "AES_256_CM_HMAC_SHA1_80"),), False, "no usable"),
    ],
)
def test_answer_table(
    policy: SrtpPolicy,
    proto: str,
    crypto: tuple[CryptoAttribute, ...],
    srtp: bool,
    problem: str | None,
) -> None:
    sdes = leg(policy)
    sdes.offer()
    outcome = sdes.take_answer(proto, crypto)
    assert (outcome.keys is not None) is srtp
    if problem is None:
        assert outcome.problem is None
    else:
        assert outcome.problem is not None and problem in outcome.problem


def test_after_the_savp_fallback_a_plain_answer_is_a_refusal() -> None:
    sdes = leg(OPTIONAL)
    sdes.fallback_offer()
    assert sdes.take_answer("RTP/AVP", ()).problem is not None


def test_unusable_answer_keeps_the_keys_in_force() -> None:
    sdes = leg(REQUIRED)
    sdes.take_answer("RTP/SAVP", (peer_line(1),))
    before = sdes.keys
    assert sdes.take_answer("RTP/AVP", ()).problem is not None
    assert sdes.keys == before


# -- the peer offers (re-INVITE, UPDATE) ----------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "proto", "crypto", "srtp", "refused"),
    [
        (NO, "RTP/AVP", (), False, False),
        (NO, "RTP/AVP", (peer_line(1),), False, False),
        (NO, "RTP/SAVP", (peer_line(1),), False, True),
        (OPTIONAL, "RTP/AVP", (), False, False),
        (OPTIONAL, "RTP/AVP", (peer_line(3),), True, False),
        (OPTIONAL, "RTP/SAVP", (), False, True),
        (REQUIRED, "RTP/AVP", (), False, True),
        (REQUIRED, "RTP/SAVP", (peer_line(1, "NULL_HMAC"), peer_line(4)), True, False),
    ],
)
def test_answering_an_offer(
    policy: SrtpPolicy,
    proto: str,
    crypto: tuple[CryptoAttribute, ...],
    srtp: bool,
    refused: bool,
) -> None:
    sdes = leg(policy)
    outcome, line = sdes.answer(proto, crypto)
    assert (outcome.problem is not None) is refused
    assert (outcome.keys is not None) is srtp
    assert (line is not None) is srtp
    assert sdes.keys is None  # nothing in force until adopted
    if line is not None:
        usable = next(c for c in crypto if c.usable)
        assert (line.tag, line.suite) == (usable.tag, usable.suite)  # the offerer's tag
        sdes.adopt(outcome.keys)
        assert sdes.keys == outcome.keys


def test_our_key_stays_across_reoffers_with_the_same_suite() -> None:
    sdes = leg(OPTIONAL)
    first, line1 = sdes.answer("RTP/SAVP", (peer_line(1, fill=1),))
    second, line2 = sdes.answer("RTP/SAVP", (peer_line(5, fill=2),))
    assert line1 is not None and line2 is not None
    assert line1.key_salt == line2.key_salt  # our sender keeps its context (ROC)
    assert first.keys is not None and second.keys is not None
    assert first.keys.inbound != second.keys.inbound  # the peer re-keyed


# -- SDP rendering ------------------------------------------------------------------------


def test_build_sdp_carries_crypto_lines_that_parse_back() -> None:
    proto, lines = leg(REQUIRED).offer()
    body = build_sdp(
        address="192.0.2.1",
        port=4000,
        session_id=1,
        version=1,
        codecs=[("PCMU", 0), ("PCMA", 8)],
        proto=proto,
        crypto=lines,
    )
    assert b"m=audio 4000 RTP/SAVP 0 8 101\r\n" in body
    parsed = parse_sdp(body)
    assert parsed.proto == "RTP/SAVP"
    assert [(c.tag, c.suite, c.key_salt) for c in parsed.crypto] == [
        (c.tag, c.suite, c.key_salt) for c in lines
    ]


def test_answer_for_secure_offer_needs_a_crypto_line() -> None:
    offer = parse_sdp(
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
        b"m=audio 5000 RTP/SAVP 8 0\r\n"
        b"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:" + b"A" * 40 + b"\r\n"
    )
    args = {"address": "192.0.2.1", "port": 4000, "session_id": 1, "version": 1}
    assert answer_for(offer, **args) is None  # type: ignore[arg-type]
    sdes = leg(OPTIONAL)
    _, line = sdes.answer(offer.proto, offer.crypto)
    body = answer_for(offer, crypto=line, **args)  # type: ignore[arg-type]
    assert body is not None
    answer = parse_sdp(body)
    assert answer.proto == "RTP/SAVP"
    assert [(c.tag, c.suite) for c in answer.crypto] == [(3, "AES_CM_128_HMAC_SHA1_80")]
