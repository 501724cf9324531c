"""Any SDP a peer can answer with, through the call engine's media pointing
(``engine/dialer.py`` → ``MediaLeg.set_remote``), on real relay sockets (issue 11 point 5).

A callee's 183 and 200 OK carry odd but valid (or plainly broken) ``c=``/``m=`` lines: the
answer is used where the relay can send to its address, and where it cannot (a host
name, another address family, multicast) the callee is BYEd with cause 88 and the call
ends FAILED/88 at once. Whatever the SDP, nothing raises and no traceback is logged.
The legs are stand-ins (no SIP): the engine is driven through its ``LegListener`` face
exactly as :class:`~sipdialer.engine.leg.Leg` drives it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import string
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from sipdialer.config import parse_config
from sipdialer.engine.call import CallState
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import (
    UNUSABLE_MEDIA_REASON,
    CallRequest,
    CallRunner,
    Dialer,
    codec_from_answer,
)
from sipdialer.engine.leg import LegState
from sipdialer.rtp.relay import Bridge, Codec
from sipdialer.sip.sdp import AudioOffer, SdpError, parse_sdp
from tests.fixtures import ports

AGENT_MEDIA = ("127.0.0.1", 40000)


class StandInLeg:
    """What the call engine uses of a :class:`~sipdialer.engine.leg.Leg`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.call_id = uuid.uuid4().hex
        self.state = LegState.CONFIRMED
        self.final_status: int | None = 200
        self.hangups: list[str | None] = []
        self.redirects: list[str] = []  # 3xx Contacts followed (the CDR lists them)

    def hangup(self, reason: str | None = None) -> None:
        self.hangups.append(reason)
        self.state = LegState.TERMINATED


class Tracebacks(logging.Handler):
    """Collects every log record that carries an exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.stack_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def rtp_range() -> Iterator[int]:
    low = ports.free_port_range(40, "udp")
    yield low
    ports.release(range(low, low + 40))


def make_dialer(rtp_low: int) -> Dialer:
    config = parse_config(
        f"""
[trunk]
registrar = 127.0.0.1:5999
register = no
[sip]
listen = 127.0.0.1:5998
rtp_ports = {rtp_low}-{rtp_low + 39}
[recording]
enabled = no
"""
    )
    return Dialer(config, cast(Any, None), MemorySink(), sip_port=5998)


async def callee_rings(dialer: Dialer) -> tuple[CallRunner, StandInLeg, StandInLeg]:
    """A call whose agent has answered and whose callee rings (no SIP behind it)."""
    runner = CallRunner(
        dialer, CallRequest(agent="1000", callee="0820001234", outbound_id="0123456789")
    )
    dialer.active[runner.id] = runner
    runner.bridge = await Bridge.open("127.0.0.1", dialer.ports)
    agent, callee = StandInLeg("agent"), StandInLeg("callee")
    runner.agent = cast(Any, agent)
    runner.agent_forks = [cast(Any, agent)]
    runner.callee = cast(Any, callee)
    runner.bridge.a.set_remote(AGENT_MEDIA, Codec("PCMU", 0))
    runner.call.state = CallState.CALLEE_RINGING
    return runner, agent, callee


def offer_of(body: bytes) -> AudioOffer | None:
    """What a Leg hands the engine: the parsed SDP, None when it does not parse."""
    try:
        return parse_sdp(body)
    except SdpError:
        return None


USABLE, UNUSABLE, HOLD = "usable", "unusable", "hold"


def kind_of(address: str) -> str:
    """How the relay of an IPv4 service must take an SDP address."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    except ValueError:
        return UNUSABLE
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return HOLD
    return USABLE if ip.version == 4 and not ip.is_multicast else UNUSABLE


async def answer(
    dialer: Dialer, body: bytes, *, early: bool, reoffer: bytes | None = None
) -> tuple[CallRunner, StandInLeg, StandInLeg, list[AudioOffer | None]]:
    """The callee sends ``body`` in a 183 (``early``) and in its 200 OK, then maybe a
    re-INVITE with ``reoffer``; the call is hung up if still up. Returns once ended, with
    the SDPs the engine was given (the 200's first)."""
    runner, agent, callee = await callee_rings(dialer)
    sdp = offer_of(body)
    given = [sdp]
    if early:
        runner.leg_progress(cast(Any, callee), 183, sdp)
        assert runner.state is CallState.CALLEE_RINGING
    runner.leg_answered(cast(Any, callee), sdp)
    if reoffer is not None and runner.state is CallState.BRIDGED:
        again = offer_of(reoffer)
        if again is not None:
            runner.leg_media_changed(cast(Any, callee), again)
            given.append(again)
    if not runner.call.ended:
        runner.hangup()
    await asyncio.wait_for(runner.done.wait(), 5)
    return runner, agent, callee, given


def usable_media(sdp: AudioOffer | None) -> bool:
    """The SDP describes media the relay would point at (port, a codec we relay)."""
    return sdp is not None and sdp.port != 0 and codec_from_answer(sdp) is not None


def check(
    runner: CallRunner, agent: StandInLeg, callee: StandInLeg, given: list[AudioOffer | None]
) -> None:
    """The outcome the engine owes the answer ``given[0]`` (and a re-INVITE after it)."""
    assert runner.cdr is not None
    assert runner.bridge is not None
    p = runner.cdr.cdr_payload()
    sdp = given[0]
    if sdp is not None and usable_media(sdp) and kind_of(sdp.address) == UNUSABLE:
        assert (p["disposition"], p["end_code"], p["end_reason"]) == ("FAILED", 88, "error")
        assert callee.hangups[:1] == [UNUSABLE_MEDIA_REASON]
        assert agent.hangups and agent.hangups[0] is not None
        assert agent.hangups[0].startswith("Q.850;cause=88")
        assert runner.record.bridged_at is None
        assert runner.bridge.b.remote is None
        return
    if not usable_media(sdp):
        return  # no media description we relay: how that ends is not this test's business
    assert runner.record.bridged_at is not None, p
    assert p["disposition"] == "ANSWERED" and p["end_reason"] == "api_hangup"
    # where the callee's media went: the last usable address; held on the null address
    remote: tuple[str, int] | None = None
    held = False
    for offer in given:
        if offer is None or not usable_media(offer) or kind_of(offer.address) == UNUSABLE:
            continue  # ignored (a re-INVITE to such an address is refused with 488)
        if kind_of(offer.address) == USABLE:
            ip = ipaddress.ip_address(offer.address)
            v4 = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip
            remote = (str(v4), offer.port)
        held = offer.on_hold or kind_of(offer.address) == HOLD
    assert runner.bridge.b.remote == remote
    assert runner.bridge.b.held == held


def build(session_c: str | None, media_c: str | None, m: str, attrs: list[str]) -> bytes:
    lines = ["v=0", "o=callee 1 1 IN IP4 192.0.2.1", "s=-"]
    if session_c is not None:
        lines.append(session_c)
    lines += ["t=0 0", m]
    if media_c is not None:
        lines.append(media_c)
    lines += attrs
    return ("\r\n".join(lines) + "\r\n").encode()


PCMU_ATTRS = ["a=rtpmap:0 PCMU/8000", "a=rtpmap:101 telephone-event/8000"]
M = "m=audio 4000 RTP/AVP 0 101"

TABLE = [
    # (session c=, media c=, m=, expected kind of the outcome)
    ("c=IN IP4 media.example.com", None, M, UNUSABLE),  # a host name
    ("c=IN IP4 localhost", None, M, UNUSABLE),
    ("c=IN IP6 ::1", None, M, UNUSABLE),  # IPv6 while we listen on IPv4
    ("c=IN IP6 2001:db8::7", None, M, UNUSABLE),
    ("c=IN IP4 224.2.1.1/127", None, M, UNUSABLE),  # multicast with a TTL
    ("c=IN IP6 ::ffff:224.0.0.9", None, M, UNUSABLE),  # multicast, IPv4-mapped
    ("c=IN IP4 192.0.2.7", None, M, USABLE),
    ("c=IN IP6 ::ffff:192.0.2.7", None, M, USABLE),  # IPv4-mapped: reached as IPv4
    ("c=IN IP4 0.0.0.0", None, M, HOLD),  # RFC 2543 hold
    ("c=IN IP6 ::", None, M, HOLD),
    ("c=IN IP6 ::ffff:0.0.0.0", None, M, HOLD),
    ("c=IN IP4 media.example.com", "c=IN IP4 192.0.2.8", M, USABLE),  # media level wins
    ("c=IN IP4 192.0.2.8", "c=IN IP4 media.example.com", M, UNUSABLE),
    ("c=IN IP4 192.0.2.7", None, "m=audio 0 RTP/AVP 0", None),  # rejected stream
    ("c=IN IP4 192.0.2.7", None, "m=audio 70000 RTP/AVP 0", None),  # does not parse
    ("c=IN IP4 192.0.2.7", None, "m=audio 4000 RTP/AVP 9", None),  # G.722 only
    ("c=IN IP4 media.example.com", None, "m=audio 4000 RTP/AVP 9", None),
]


@pytest.mark.parametrize("early", [False, True], ids=["200", "183+200"])
@pytest.mark.parametrize(("session_c", "media_c", "m", "kind"), TABLE)
async def test_odd_answers_table(
    rtp_range: int,
    caplog: pytest.LogCaptureFixture,
    session_c: str,
    media_c: str | None,
    m: str,
    kind: str | None,
    early: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    dialer = make_dialer(rtp_range)
    body = build(session_c, media_c, m, PCMU_ATTRS)
    runner, agent, callee, given = await answer(dialer, body, early=early)
    check(runner, agent, callee, given)
    sdp = given[0]
    if kind is not None:  # the table says what the SDP is, not only the helper
        assert sdp is not None and kind_of(sdp.address) == kind
    if kind == UNUSABLE:
        assert runner.cdr is not None and runner.cdr.cdr_payload()["end_code"] == 88
        assert "event=media_address_unusable" in caplog.text
    assert not [r for r in caplog.records if r.exc_info], "a traceback reached the log"
    assert dialer.ports.in_use == 0


async def test_a_reinvite_to_an_unusable_address_is_refused_and_changes_nothing(
    rtp_range: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A re-INVITE's offer naming a host name is refused (488) before the leg reports a
    media change; if the change were reported anyway, the media stays where it was and
    nothing raises."""
    caplog.set_level(logging.DEBUG)
    dialer = make_dialer(rtp_range)
    runner, _, callee = await callee_rings(dialer)
    runner.leg_answered(cast(Any, callee), offer_of(build("c=IN IP4 192.0.2.7", None, M, [])))
    assert runner.state is CallState.BRIDGED
    assert runner.bridge is not None
    moved = offer_of(build("c=IN IP4 media.example.com", None, M, PCMU_ATTRS))
    assert moved is not None
    # the answerer the engine gives its legs refuses it (None: the leg answers 488)
    real_leg = runner._make_leg("callee")
    assert real_leg.answer_reinvite(moved) is None
    back = offer_of(build("c=IN IP4 192.0.2.9", None, M, PCMU_ATTRS))
    answered = real_leg.answer_reinvite(back)
    assert answered is not None and b"m=audio" in answered
    runner.leg_media_changed(cast(Any, callee), moved)
    assert runner.state is CallState.BRIDGED
    assert runner.bridge.b.remote == ("192.0.2.7", 4000)
    runner.hangup()
    await asyncio.wait_for(runner.done.wait(), 5)
    assert not [r for r in caplog.records if r.exc_info]


# ---- property: any c= / m= a peer can write --------------------------------------------------
_TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`{|}~:/"

ipv4 = st.ip_addresses(v=4).map(str)
addresses = st.one_of(
    ipv4,
    ipv4,
    ipv4,
    ipv4,
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(lambda ip: ip.exploded),
    st.from_regex(r"[a-z][a-z0-9-]{0,12}(\.[a-z]{2,6}){1,2}", fullmatch=True),
    st.sampled_from(
        [
            "0.0.0.0",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "224.2.1.1/127",
            "ff02::1",
            "255.255.255.255",
            "127.0.0.1/2/3",
            "1.2.3",
            "1.2.3.4.5",
            "[::1]",
            "fe80::1%eth0",
            "01.02.03.04",
            "0x7f.0.0.1",
            "",
        ]
    ),
    st.text(alphabet=_TOKEN, max_size=24),
)
well_formed_c = st.builds(
    lambda kind, addr: f"c=IN {kind} {addr}", st.sampled_from(["IP4", "IP6"]), addresses
)
c_lines = st.one_of(
    well_formed_c,
    well_formed_c,
    well_formed_c,
    st.builds(
        lambda net, kind, addr: f"c={net} {kind} {addr}",
        st.sampled_from(["IN", "in", "ATM"]),
        st.sampled_from(["IP4", "IP6", "ip4", "IPX"]),
        addresses,
    ),
    st.text(alphabet=_TOKEN + " =", max_size=30).map(lambda t: "c=" + t),
)
well_formed_m = st.builds(
    lambda port, fmts: f"m=audio {port} RTP/AVP {' '.join(fmts)}",
    st.integers(1, 65535),
    st.lists(st.sampled_from(["0", "8", "101", "96", "9"]), min_size=1, max_size=4),
)
m_lines = st.one_of(
    well_formed_m,
    well_formed_m,
    well_formed_m,
    st.builds(
        lambda port, proto, fmts: f"m=audio {port} {proto} {' '.join(fmts)}".rstrip(),
        st.one_of(
            st.integers(0, 70000).map(str), st.sampled_from(["4000/2", "-1", "x", "4000", ""])
        ),
        st.sampled_from(
            ["RTP/AVP", "RTP/AVPF", "RTP/SAVP", "UDP/TLS/RTP/SAVPF", "udp", "TCP/RTP/AVP"]
        ),
        st.lists(
            st.one_of(st.integers(0, 130).map(str), st.sampled_from(["0", "8", "101", "x"])),
            max_size=4,
        ),
    ),
)
attr_lines = st.lists(
    st.sampled_from(
        [
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:96 PCMU/8000",
            "a=rtpmap:96 PCMU/16000",
            "a=rtpmap:101 telephone-event/8000",
            "a=rtpmap:0 telephone-event/8000",
            "a=rtpmap:x y",
            "a=sendonly",
            "a=recvonly",
            "a=inactive",
            "a=ptime:0",
        ]
    ),
    max_size=5,
)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(
    session_c=st.one_of(c_lines, c_lines, st.none()),
    media_c=st.one_of(st.none(), c_lines),
    m=m_lines,
    attrs=attr_lines,
    early=st.booleans(),
    reoffer_c=st.one_of(st.none(), c_lines),
)
def test_no_sdp_raises_or_logs_a_traceback(
    rtp_range: int,
    session_c: str | None,
    media_c: str | None,
    m: str,
    attrs: list[str],
    early: bool,
    reoffer_c: str | None,
) -> None:
    import uvloop

    body = build(session_c, media_c, m, attrs)
    reoffer = build(reoffer_c, None, m, attrs) if reoffer_c is not None else None
    note(f"200 OK SDP: {body!r}, early: {early}, re-INVITE SDP: {reoffer!r}")
    tracebacks = Tracebacks()
    root = logging.getLogger()
    root.addHandler(tracebacks)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:

        async def scenario() -> None:
            dialer = make_dialer(rtp_range)
            runner, agent, callee, given = await answer(dialer, body, early=early, reoffer=reoffer)
            check(runner, agent, callee, given)
            sdp = given[0]
            if sdp is None or not usable_media(sdp):
                event("no usable media description")
            else:
                event(f"address {kind_of(sdp.address)}")
            assert dialer.ports.in_use == 0

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(scenario())
    finally:
        root.removeHandler(tracebacks)
        root.setLevel(level)
    assert not tracebacks.records, [r.getMessage() for r in tracebacks.records]
