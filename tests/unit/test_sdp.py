"""Tests for sipdialer.sip.sdp: real-world offers, hold, 488, building, answering, fuzz."""

from __future__ import annotations

import random

import pytest

from sipdialer.sip.sdp import (
    AudioOffer,
    MediaLine,
    SdpError,
    answer_for,
    build_sdp,
    choose_codec,
    parse_sdp,
)

# Captured from baresip 1.0.0 (the test phone, `audio_codecs=pcmu,pcma;ptime=20`,
# rtcp_mux yes) dialling a UDP socket on loopback.
BARESIP_OFFER = (
    b"v=0\r\n"
    b"o=- 1352190179 603595356 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"a=tool:baresip 1.0.0\r\n"
    b"m=audio 26000 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\n"
    b"a=label:1\r\n"
    b"a=rtcp-rsize\r\n"
    b"a=ssrc:2406393172 cname:sip:phone@127.0.0.1\r\n"
    b"a=rtcp-mux\r\n"
    b"a=minptime:20\r\n"
    b"a=ptime:20\r\n"
)

# The same phone putting the call on hold (baresip /hold: a=sendonly, version + 1),
# here with an explicit RTCP port line as baresip sends with rtcp_mux off.
BARESIP_HOLD = (
    BARESIP_OFFER.replace(b"603595356", b"603595357")
    .replace(b"a=sendrecv", b"a=sendonly")
    .replace(b"a=rtcp-mux\r\n", b"a=rtcp:26001 IN IP4 127.0.0.1\r\n")
)

# RFC 4566 §5 example, LF line endings, several m-lines (audio first), session-level
# a=recvonly, multicast c= with TTL, no rtpmap for static PT 0.
RFC4566_EXAMPLE = b"""v=0
o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5
s=SDP Seminar
i=A Seminar on the session description protocol
u=http://www.example.com/seminars/sdp.pdf
e=j.doe@example.com (Jane Doe)
c=IN IP4 224.2.17.12/127
t=2873397496 2873404696
a=recvonly
m=audio 49170 RTP/AVP 0
m=video 51372 RTP/AVP 99
a=rtpmap:99 h263-1998/90000
"""

# A plain gateway offer: video first, audio second with its own c=, G.729 preferred,
# lower-case names, a dynamic PCMA, ptime 30, old-style RFC 2543 hold address elsewhere.
VIDEO_FIRST = (
    b"v=0\r\n"
    b"o=gw 1 1 IN IP4 192.0.2.1\r\n"
    b"s=call\r\n"
    b"c=IN IP4 192.0.2.1\r\n"
    b"t=0 0\r\n"
    b"m=video 40000 RTP/AVP 96\r\n"
    b"c=IN IP4 192.0.2.99\r\n"
    b"a=rtpmap:96 H264/90000\r\n"
    b"a=sendonly\r\n"
    b"m=audio 30000 RTP/AVP 18 97 0 100\r\n"
    b"c=IN IP4 192.0.2.2\r\n"
    b"a=rtpmap:97 pcma/8000\r\n"
    b"a=rtpmap:100 telephone-event/8000\r\n"
    b"a=fmtp:100 0-15\r\n"
    b"a=ptime:30\r\n"
    b"a=x-unknown-thing\r\n"
    b"m=audio 30002 RTP/AVP 8\r\n"
    b"a=inactive\r\n"
)

OLD_HOLD = (
    b"v=0\r\no=- 5 6 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    b"m=audio 26000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)

ONLY_G729 = (
    b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
    b"m=audio 8000 RTP/AVP 18 101\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
)


def lines(body: bytes) -> list[str]:
    assert body.endswith(b"\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"")
    return body.decode("ascii").split("\r\n")[:-1]


# --- parsing ------------------------------------------------------------------------------


def test_parse_baresip_offer() -> None:
    offer = parse_sdp(BARESIP_OFFER)
    assert offer.address == "127.0.0.1"
    assert offer.port == 26000
    assert offer.payload_types == [0, 8, 101]
    assert offer.rtpmap == {0: ("PCMU", 8000), 8: ("PCMA", 8000), 101: ("TELEPHONE-EVENT", 8000)}
    assert offer.direction == "sendrecv"
    assert not offer.on_hold
    assert offer.ptime == 20
    assert offer.dtmf_pt == 101
    assert offer.proto == "RTP/AVP"
    assert offer.media == [MediaLine("audio", 26000, "RTP/AVP", ("0", "8", "101"))]
    assert choose_codec(offer) == ("PCMU", 0)
    assert choose_codec(offer, ["pcma", "pcmu"]) == ("PCMA", 8)


def test_parse_baresip_hold_sendonly() -> None:
    offer = parse_sdp(BARESIP_HOLD)
    assert offer.direction == "sendonly"
    assert offer.on_hold
    assert offer.address == "127.0.0.1"
    answer = answer_for(offer, address="10.0.0.5", port=40000, session_id=7, version=2)
    assert answer is not None
    assert "a=recvonly" in lines(answer)


def test_parse_rfc4566_example_lf_static_session_direction() -> None:
    offer = parse_sdp(RFC4566_EXAMPLE)
    assert offer.address == "224.2.17.12"
    assert offer.port == 49170
    assert offer.payload_types == [0]
    assert offer.rtpmap == {0: ("PCMU", 8000)}
    assert offer.direction == "recvonly"
    assert offer.ptime is None and offer.dtmf_pt is None
    assert [m.media for m in offer.media] == ["audio", "video"]
    assert offer.audio_index == 0


def test_parse_video_first_media_level_wins() -> None:
    offer = parse_sdp(VIDEO_FIRST)
    assert offer.address == "192.0.2.2"  # media-level c= of the audio stream
    assert offer.port == 30000
    assert offer.payload_types == [18, 97, 0, 100]
    assert offer.rtpmap == {
        18: ("G729", 8000),
        97: ("PCMA", 8000),
        0: ("PCMU", 8000),
        100: ("TELEPHONE-EVENT", 8000),
    }
    assert offer.direction == "sendrecv"  # the video's sendonly and 2nd audio's do not leak
    assert offer.ptime == 30
    assert offer.dtmf_pt == 100
    assert offer.audio_index == 1
    assert len(offer.media) == 3
    assert choose_codec(offer) == ("PCMU", 0)
    assert choose_codec(offer, ("PCMA",)) == ("PCMA", 97)
    assert choose_codec(offer, ["G722"]) is None


def test_parse_rfc2543_hold_address() -> None:
    offer = parse_sdp(OLD_HOLD)
    assert offer.address == "0.0.0.0"
    assert offer.direction == "sendonly"  # sendrecv minus "send to me"
    assert offer.on_hold
    recvonly = parse_sdp(OLD_HOLD.replace(b"telephone-event/8000\r\n", b"x/8000\r\na=recvonly\r\n"))
    assert recvonly.direction == "inactive"
    assert recvonly.dtmf_pt is None
    answer = answer_for(offer, address="10.0.0.5", port=40000, session_id=1, version=1)
    assert answer is not None
    assert "a=recvonly" in lines(answer)


def test_session_level_direction_and_media_override() -> None:
    body = OLD_HOLD.replace(b"0.0.0.0", b"10.1.1.1").replace(
        b"t=0 0\r\n", b"t=0 0\r\na=inactive\r\n"
    )
    assert parse_sdp(body).direction == "inactive"
    assert parse_sdp(body + b"a=sendrecv\r\n").direction == "sendrecv"


def test_ipv6_and_port_count() -> None:
    body = (
        b"v=0\no=- 1 1 IN IP6 2001:db8::1\ns=-\nt=0 0\n"
        b"m=audio 49170/2 RTP/AVP 8\nc=IN IP6 2001:db8::2\n"
    )
    offer = parse_sdp(body)
    assert (offer.address, offer.port, offer.rtpmap) == ("2001:db8::2", 49170, {8: ("PCMA", 8000)})


def test_telephone_event_at_other_rates_is_not_dtmf() -> None:
    body = (
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 111 110 0 101\r\na=rtpmap:111 opus/48000/2\r\n"
        b"a=rtpmap:110 telephone-event/48000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    offer = parse_sdp(body)
    assert offer.dtmf_pt == 101
    assert offer.rtpmap[111] == ("OPUS", 48000)


# --- malformed input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n\r\n",
        b"hello world",
        b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",  # v= not first
        b"v=1\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",
        b"v=0\r\nc=IN IP4 1.2.3.4\r\n",  # no m= at all
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP 96\r\n",  # no audio
        b"v=0\r\nm=audio 1 RTP/AVP 0\r\n",  # no c= anywhere
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP\r\n",  # no fmt
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n",
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n",
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio -1 RTP/AVP 0\r\n",
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 128\r\n",
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP PCMU\r\n",
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP \xd9\xa1\r\n",  # Arabic-Indic 1
        b"v=0\r\nc=IN IP4\r\nm=audio 1 RTP/AVP 0\r\n",
        b"v=0\r\nc=XX IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",
        b"v=0\r\nc=IN IP4 \xff\xfe\r\nm=audio 1 RTP/AVP 0\r\n",
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nthis is no sdp line\r\nm=audio 1 RTP/AVP 0\r\n",
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n =x\r\n",
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=v\xc3\xa9deo 1 RTP/AVP 0\r\nm=audio 1 RTP/AVP 0\r\n",
        b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n" + b"a=x\r\n" * 20000,
    ],
)
def test_malformed_raises_sdp_error(body: bytes) -> None:
    with pytest.raises(SdpError):
        parse_sdp(body)


@pytest.mark.parametrize("body", [None, 42, ["v=0"], object()])
def test_non_bytes_raise_sdp_error(body: object) -> None:
    with pytest.raises(SdpError):
        parse_sdp(body)  # type: ignore[arg-type]


def test_sdp_error_is_a_value_error() -> None:
    assert issubclass(SdpError, ValueError)


def test_tolerant_of_unknown_and_malformed_attributes() -> None:
    body = BARESIP_OFFER.replace(
        b"a=ptime:20\r\n",
        b"a=ptime:abc\r\na=rtpmap:zz nonsense\r\na=rtpmap:8\r\nz=whatever\r\nk=clear:x\r\n",
    )
    offer = parse_sdp(body)
    assert offer.ptime is None
    assert offer.rtpmap[8] == ("PCMA", 8000)


def test_fuzz_only_sdp_error() -> None:
    rng = random.Random(4566)
    seeds = [BARESIP_OFFER, BARESIP_HOLD, RFC4566_EXAMPLE, VIDEO_FIRST, OLD_HOLD, ONLY_G729]
    alphabet = b"v=0amcto IN IP4 RTP/AVP:/.-\r\n\x00\xff\xc3 0123456789telephone-event"
    for _ in range(4000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 8)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[pos : pos + rng.randrange(1, 12)]
            elif op == 1:
                data[pos:pos] = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 6)))
            elif op == 2 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            else:
                data = data[:pos]
        try:
            offer = parse_sdp(bytes(data))
        except SdpError:
            continue
        assert isinstance(offer, AudioOffer)
        assert 0 <= offer.port <= 65535
        assert all(0 <= pt <= 127 for pt in offer.payload_types)
        try:
            answer = answer_for(offer, address="10.0.0.5", port=40000, session_id=1, version=1)
        except SdpError:
            continue
        if answer is not None:
            assert parse_sdp(answer).port == 40000


# --- building -----------------------------------------------------------------------------


def test_build_sdp_exact() -> None:
    body = build_sdp(
        address="192.0.2.10",
        port=40000,
        session_id=1234,
        version=1,
        codecs=[("PCMU", 0), ("PCMA", 8)],
    )
    assert lines(body) == [
        "v=0",
        "o=sipdialer 1234 1 IN IP4 192.0.2.10",
        "s=-",
        "c=IN IP4 192.0.2.10",
        "t=0 0",
        "m=audio 40000 RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ]
    offer = parse_sdp(body)
    assert offer.payload_types == [0, 8, 101]
    assert offer.dtmf_pt == 101
    assert offer.ptime == 20


def test_build_sdp_options() -> None:
    body = build_sdp(
        address="2001:db8::5",
        port=0,
        session_id=9,
        version=3,
        codecs=[("PCMA", 8)],
        dtmf_pt=None,
        direction="inactive",
        ptime=30,
        username="b2bua",
    )
    assert lines(body) == [
        "v=0",
        "o=b2bua 9 3 IN IP6 2001:db8::5",
        "s=-",
        "c=IN IP6 2001:db8::5",
        "t=0 0",
        "m=audio 0 RTP/AVP 8",
        "a=rtpmap:8 PCMA/8000",
        "a=ptime:30",
        "a=inactive",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": "host.example"},
        {"address": "1.2.3.4\r\na=evil"},
        {"port": 65536},
        {"port": -1},
        {"session_id": -1},
        {"codecs": []},
        {"codecs": [("PCMU", 128)]},
        {"codecs": [("PC MU", 0)]},
        {"codecs": [("PCMU\r\n", 0)]},
        {"codecs": [("PCMU", 0), ("PCMA", 0)]},
        {"codecs": [("PCMU", 101)]},
        {"direction": "both"},
        {"username": "a b"},
        {"username": "x\n"},
        {"ptime": 0},
    ],
)
def test_build_sdp_refuses_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "address": "192.0.2.10",
        "port": 40000,
        "session_id": 1,
        "version": 1,
        "codecs": [("PCMU", 0)],
    }
    args.update(kwargs)
    with pytest.raises(SdpError):
        build_sdp(**args)  # type: ignore[arg-type]


# --- answering ----------------------------------------------------------------------------


def test_answer_baresip_offer() -> None:
    offer = parse_sdp(BARESIP_OFFER)
    answer = answer_for(offer, address="192.0.2.10", port=40002, session_id=55, version=1)
    assert answer is not None
    assert lines(answer) == [
        "v=0",
        "o=sipdialer 55 1 IN IP4 192.0.2.10",
        "s=-",
        "c=IN IP4 192.0.2.10",
        "t=0 0",
        "m=audio 40002 RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ]


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ("sendrecv", "sendrecv"),
        ("sendonly", "recvonly"),
        ("recvonly", "sendonly"),
        ("inactive", "inactive"),
    ],
)
def test_answer_mirrors_direction(offered: str, answered: str) -> None:
    offer = parse_sdp(BARESIP_OFFER.replace(b"a=sendrecv", f"a={offered}".encode()))
    answer = answer_for(offer, address="192.0.2.10", port=40002, session_id=1, version=2)
    assert answer is not None
    assert parse_sdp(answer).direction == answered


def test_answer_rejects_other_streams_in_place_and_keeps_offer_pts() -> None:
    offer = parse_sdp(VIDEO_FIRST)
    answer = answer_for(
        offer, address="192.0.2.10", port=40002, session_id=1, version=1, supported=["PCMA"]
    )
    assert answer is not None
    m_lines = [line for line in lines(answer) if line.startswith("m=")]
    assert m_lines == [
        "m=video 0 RTP/AVP 96",
        "m=audio 40002 RTP/AVP 97 100",
        "m=audio 0 RTP/AVP 8",
    ]
    assert "a=rtpmap:97 PCMA/8000" in lines(answer)
    assert "a=rtpmap:100 telephone-event/8000" in lines(answer)
    parsed = parse_sdp(answer)
    assert (parsed.port, parsed.payload_types, parsed.dtmf_pt) == (40002, [97, 100], 100)


def test_answer_without_dtmf_when_not_offered() -> None:
    offer = parse_sdp(RFC4566_EXAMPLE)
    answer = answer_for(offer, address="192.0.2.10", port=40002, session_id=1, version=1)
    assert answer is not None
    assert "m=audio 40002 RTP/AVP 0" in lines(answer)
    assert not any("telephone-event" in line for line in lines(answer))
    assert "a=sendonly" in lines(answer)  # offer was recvonly at session level


def test_488_when_only_g729() -> None:
    offer = parse_sdp(ONLY_G729)
    assert choose_codec(offer) is None
    assert answer_for(offer, address="192.0.2.10", port=40002, session_id=1, version=1) is None


@pytest.mark.parametrize(
    "change",
    [
        (b"m=audio 26000 RTP/AVP", b"m=audio 0 RTP/AVP"),  # stream already rejected
        (b"RTP/AVP", b"RTP/SAVP"),  # SRTP
        (b"RTP/AVP", b"UDP/TLS/RTP/SAVPF"),
    ],
)
def test_488_for_rejected_stream_or_secure_transport(change: tuple[bytes, bytes]) -> None:
    offer = parse_sdp(BARESIP_OFFER.replace(*change))
    assert answer_for(offer, address="192.0.2.10", port=40002, session_id=1, version=1) is None


def test_answer_avpf_as_offered() -> None:
    offer = parse_sdp(BARESIP_OFFER.replace(b"RTP/AVP", b"RTP/AVPF"))
    answer = answer_for(offer, address="192.0.2.10", port=40002, session_id=1, version=1)
    assert answer is not None
    assert "m=audio 40002 RTP/AVPF 0 101" in lines(answer)


def test_answer_for_hand_built_offer_without_media_list() -> None:
    offer = AudioOffer(
        address="10.0.0.1",
        port=5000,
        payload_types=[8],
        rtpmap={8: ("PCMA", 8000)},
        direction="sendrecv",
        ptime=None,
        dtmf_pt=None,
    )
    answer = answer_for(offer, address="10.0.0.2", port=6000, session_id=1, version=1)
    assert answer is not None
    assert "m=audio 6000 RTP/AVP 8" in lines(answer)
