"""Edge cases of whole calls through the real service, with one SIPp UAS as the trunk.

``[trunk] register = no`` and no credentials: nothing is registered or challenged, so
``[trunk] registrar`` points straight at one SIPp instance that plays the trunk for both
legs. Its scenarios (``tests/sipp/*.xml``) branch on the Request-URI: the agent's INVITE
(``sip:1000@``) is answered at once with PCMU SDP naming a UDP socket of this test (the
agent's phone), the callee's INVITE is scripted per test. SIPp runs with ``-m 2`` and
exits 0 only when both calls ran their scenario to the end, so every test also checks
that the peer received every message it expected, in order. The trunk, the service and
the helpers are :mod:`tests.fixtures.sipp_trunk`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import subprocess
import time
from pathlib import Path

import pytest
import soundfile

from sipdialer.rtp.pool import RemoteBridge
from tests.fixtures import ports
from tests.fixtures.lab import ended, peak_hz, wait_state
from tests.fixtures.require import require_binary
from tests.fixtures.sipp_trunk import (
    Lab,
    audio_of,
    cseq_of,
    header,
    marker,
    poll,
    rms,
    send_tone,
    sipp_done,
    sipp_workdir,
    watch,
)

# The fixtures sipp_trunk, make_lab and rtp_socket are in tests/peers/conftest.py.


# ---- 1. a 200 OK crossing our CANCEL --------------------------------------------------------
@pytest.mark.peers
@pytest.mark.parametrize("trigger", ["ring_timeout", "api_hangup"])
async def test_200_crossing_cancel_is_acked_and_byed(
    sipp_trunk, make_lab, rtp_socket, trigger: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sipdialer")
    agent_media = await rtp_socket()
    trunk = sipp_trunk("cancel_crossed_by_200.xml", agent_rtp=agent_media.port)
    lab = await make_lab(trunk.port, callee_ring_timeout=2 if trigger == "ring_timeout" else 30)
    started = time.monotonic()
    runner = await lab.call()
    t_ringing = await wait_state(runner, "callee_ringing")
    if trigger == "api_hangup":
        # hang up once the 180 is in (the callee leg is `proceeding`: CANCEL goes out now)
        await poll(lambda: runner.record.callee_ringing_at is not None, 3.0, "no 180")
        runner.hangup()
    p = (await ended(runner)).cdr_payload()
    if trigger == "ring_timeout":
        assert (p["end_code"], p["disposition"], p["end_reason"]) == (19, "NO ANSWER", "timeout")
        assert (p["ended_by"], p["end_leg"]) == ("system", "callee")
        assert 1.5 <= time.monotonic() - t_ringing <= 3.0
    else:
        outcome = (p["end_code"], p["disposition"], p["end_reason"], p["ended_by"])
        assert outcome == (16, "NO ANSWER", "api_hangup", "api")
    assert p["call_time"] == 0 and p["recording_url"] is None
    assert p["callee_sip_status"] == 200  # the final that crossed our CANCEL

    # the peer: CANCEL, then the ACK of its crossing 200 OK, then a BYE of that dialog
    await sipp_done(trunk)
    assert runner.agent is not None and runner.callee is not None
    callee = trunk.received_in(runner.callee.call_id)
    assert [m.split()[0] for m in callee] == ["INVITE", "CANCEL", "ACK", "BYE"], callee
    _, _, ack, bye = callee
    assert header(ack, "CSeq") == "1 ACK"  # the ACK of the 2xx to INVITE CSeq 1
    assert "SIPpTag01" in header(ack, "To") and "SIPpTag01" in header(bye, "To")
    assert header(bye, "Reason").startswith("Q.850;cause=16")
    agent = trunk.received_in(runner.agent.call_id)
    assert [m.split()[0] for m in agent] == ["INVITE", "ACK", "BYE"], agent

    # the call ended exactly once; the callee leg saw its BYE answered
    await poll(lambda: runner.callee.state.value == "terminated", 2.0, "callee leg not over")
    await asyncio.sleep(0.3)
    assert lab.sink.cdrs == [runner.cdr]
    assert "call_state_error" not in caplog.text
    assert caplog.text.count("event=call_ended") == 1
    assert "event=leg_answer_crossed_cancel" in caplog.text
    assert time.monotonic() - started < 8


# ---- 2. early media relayed to the agent -------------------------------------------------
@pytest.mark.peers
async def test_early_media_is_relayed_to_the_agent(
    sipp_trunk, make_lab, rtp_socket, tmp_path: Path
) -> None:
    require_binary("sox")
    agent_media = await rtp_socket()
    # SIPp reads the rtp_stream file (relative to its working directory) at start-up
    wav = sipp_workdir(tmp_path) / "tone2000.wav"
    sox = ["sox", "-n", "-r", "8000", "-c", "1", "-e", "u-law", str(wav)]
    subprocess.run(
        [*sox, "synth", "6", "sine", "2000", "vol", "0.5"], check=True, capture_output=True
    )
    trunk = sipp_trunk("early_media.xml", agent_rtp=agent_media.port)
    lab = await make_lab(trunk.port)
    runner = await lab.call()
    seen: dict[str, float] = {}
    watcher = asyncio.ensure_future(watch(runner, seen))
    t_ringing = await wait_state(runner, "callee_ringing")
    p = (await ended(runner)).cdr_payload()
    await watcher
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    assert "callee_media" in seen and "bridged" in seen, seen
    t_183, t_bridged = seen["callee_media"], seen["bridged"]
    assert 0.7 <= t_183 - t_ringing <= 1.6, "the 183 came 1 s after the 180"
    assert 1.7 <= t_bridged - t_183 <= 2.6, "the 200 came 2 s after the 183"

    # while only 180: the agent hears our ringback (400+450 Hz, first burst 0.4 s)
    ringback = agent_media.between(t_ringing, t_183)
    assert len(ringback) >= 0.7 * (t_183 - t_ringing) / 0.02, len(ringback)
    burst = audio_of(ringback[2:18])
    assert rms(burst) > 1000, "ringback is silence"
    assert 380 <= peak_hz(burst) <= 470

    # during the 183: the callee's 2000 Hz early media, relayed before any 200 OK
    early = agent_media.between(t_183 + 0.2, t_bridged)
    assert len(early) >= 0.7 * (t_bridged - t_183 - 0.2) / 0.02, len(early)
    tone = audio_of(early)
    assert rms(tone) > 1000
    assert abs(peak_hz(tone) - 2000) < 20
    # the relay switched source (ringback -> early media) with a marker bit
    assert any(marker(pk) for pk in agent_media.between(t_183, t_183 + 0.5))
    await sipp_done(trunk)


# ---- 3. re-INVITE, OPTIONS and INFO from the callee ---------------------------------------
@pytest.mark.peers
async def test_callee_reinvite_hold_and_move_options_info(sipp_trunk, make_lab, rtp_socket) -> None:
    agent_media, callee1, callee2 = await rtp_socket(), await rtp_socket(), await rtp_socket()
    trunk = sipp_trunk(
        "callee_reinvite.xml",
        agent_rtp=agent_media.port,
        callee_rtp1=callee1.port,
        callee_rtp2=callee2.port,
    )
    lab = await make_lab(trunk.port)
    runner = await lab.call()
    assert runner.bridge is not None
    bridge = runner.bridge
    stop = asyncio.Event()
    talker = asyncio.ensure_future(
        send_tone(agent_media, ("127.0.0.1", bridge.a.local_port), 1000, stop)
    )
    try:
        t_bridged = await wait_state(runner, "bridged")
        held = await poll(lambda: bridge.b.held, 3.0, "callee leg never put on hold")
        moved = await poll(
            lambda: bridge.b.remote == ("127.0.0.1", callee2.port) and not bridge.b.held,
            3.0,
            "callee media never moved to its new port / resumed",
        )
        p = (await ended(runner)).cdr_payload()
        t_end = time.monotonic()
    finally:
        stop.set()
        await talker
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    assert p["ended_by"] == "callee" and p["callee_sip_status"] == 200
    assert 0.8 <= held - t_bridged <= 1.6 and 0.8 <= moved - held <= 1.6

    # bridged: the agent's 1000 Hz reaches the callee's first address
    before = callee1.between(t_bridged + 0.1, held)
    assert len(before) >= 0.7 * (held - t_bridged - 0.1) / 0.02, len(before)
    assert abs(peak_hz(audio_of(before)) - 1000) < 20
    # on hold (callee said sendonly): nothing is sent to the callee
    assert callee1.between(held + 0.05, t_end) == []
    assert callee2.between(0, moved - 0.05) == []  # (`moved` is noted up to ~5 ms late)
    # off hold at the new address: the audio goes there
    after = callee2.between(moved + 0.1, t_end - 0.1)
    assert len(after) >= 0.7 * (t_end - moved - 0.2) / 0.02, len(after)
    assert abs(peak_hz(audio_of(after)) - 1000) < 20

    await sipp_done(trunk)
    # what the callee's side received: 200s with the right directions, 200 to OPTIONS/INFO
    answers = {cseq_of(m): m for m in trunk.received() if m.startswith("SIP/2.0 ")}
    assert answers["1 INVITE"].startswith("SIP/2.0 200") and "a=recvonly" in answers["1 INVITE"]
    assert answers["2 INVITE"].startswith("SIP/2.0 200") and "a=sendrecv" in answers["2 INVITE"]
    assert answers["3 OPTIONS"].startswith("SIP/2.0 200")
    assert answers["4 INFO"].startswith("SIP/2.0 200")
    assert answers["5 BYE"].startswith("SIP/2.0 200")
    assert lab.sink.cdrs == [runner.cdr]


# ---- 4. the trunk does not answer at all ---------------------------------------------------
async def test_unreachable_trunk_is_congestion(make_lab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sipdialer")
    dead = ports.free_port("both")  # nothing listens here
    try:
        lab = await make_lab(dead, t1=0.05)  # Timer B = 64 * T1 = 3.2 s
        started = time.monotonic()
        runner = await lab.call()
        p = (await ended(runner, timeout=8.0)).cdr_payload()
        elapsed = time.monotonic() - started
    finally:
        ports.release([dead])
    assert (p["end_code"], p["disposition"], p["end_reason"]) == (38, "CONGESTION", "congestion")
    assert (p["ended_by"], p["end_leg"]) == ("system", "agent")
    assert p["agent_sip_status"] == 408 and p["callee_sip_status"] is None
    assert runner.callee is None  # the callee was never dialled
    assert elapsed <= 5.0, f"took {elapsed:.1f} s"
    assert lab.sink.cdrs == [runner.cdr]
    assert "event=leg_unreachable" in caplog.text


# ---- 4. redirects and reliable provisional responses (issue 12) -------------------------
def tone_2000(tmp_path: Path) -> None:
    """The 2000 Hz µ-law WAV SIPp streams (``rtp_stream`` in its working directory)."""
    require_binary("sox")
    wav = sipp_workdir(tmp_path) / "tone2000.wav"
    sox = ["sox", "-n", "-r", "8000", "-c", "1", "-e", "u-law", str(wav)]
    subprocess.run([*sox, "synth", "8", "sine", "2000", "vol", "0.5"], check=True)


def callee_channel_hz(lab: Lab, payload: dict[str, object]) -> tuple[float, float]:
    """(seconds, dominant frequency of the callee channel's middle) of the call's WAV."""
    wav = Path(lab.service.config.recording.directory) / f"{payload['recording_url']}.wav"
    data, rate = soundfile.read(wav, dtype="int16")
    assert rate == 8000 and data.shape[1] == 2
    middle = data[len(data) // 4 : 3 * len(data) // 4, 1].astype(float)
    return len(data) / rate, peak_hz(middle)


@pytest.mark.peers
async def test_a_302_is_followed_and_noted_in_the_cdr(
    sipp_trunk, make_lab, rtp_socket, tmp_path: Path
) -> None:
    agent_media = await rtp_socket()
    tone_2000(tmp_path)
    trunk = sipp_trunk("redirect_302.xml", agent_rtp=agent_media.port)
    lab = await make_lab(trunk.port)
    runner = await lab.call()
    p = (await ended(runner)).cdr_payload()
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    moved = f"sip:0820005555@127.0.0.1:{trunk.port}"
    assert p["callee_redirected_to"] == [moved]
    lines = trunk.received_lines()
    assert f"INVITE {moved} SIP/2.0" in lines, lines
    seconds, hz = callee_channel_hz(lab, p)
    assert abs(seconds - float(p["call_time"])) <= 1.0  # type: ignore[arg-type]
    assert abs(hz - 2000) < 20
    await sipp_done(trunk)


@pytest.mark.peers
async def test_a_reliable_183_is_pracked_and_its_early_media_relayed(
    sipp_trunk, make_lab, rtp_socket, tmp_path: Path
) -> None:
    agent_media = await rtp_socket()
    tone_2000(tmp_path)
    trunk = sipp_trunk("reliable_183.xml", agent_rtp=agent_media.port)
    lab = await make_lab(trunk.port)
    runner = await lab.call()
    seen: dict[str, float] = {}
    watcher = asyncio.ensure_future(watch(runner, seen))
    p = (await ended(runner)).cdr_payload()
    await watcher
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    invites = [m for m in trunk.received() if m.startswith("INVITE sip:0820001234@")]
    assert invites and header(invites[0], "Supported") == "100rel, timer"
    pracks = [m for m in trunk.received() if m.startswith("PRACK ")]
    assert len(pracks) == 1, trunk.received_lines()
    invite_seq = header(invites[-1], "CSeq").split()[0]
    assert header(pracks[0], "RAck") == f"1 {invite_seq} INVITE"
    # the 183's SDP was early media: the callee's tone reached the agent before the 200
    early = agent_media.between(seen["callee_media"] + 0.2, seen["bridged"])
    assert len(early) >= 20, len(early)
    assert abs(peak_hz(audio_of(early)) - 2000) < 20
    _, hz = callee_channel_hz(lab, p)
    assert abs(hz - 2000) < 20
    await sipp_done(trunk)


@pytest.mark.peers
@pytest.mark.parametrize(
    ("scenario", "keys"),
    [
        ("answer_unusable.xml", {"pt": 9, "codec": "G722/8000"}),
        ("answer_unusable.xml", {"pt": 98, "codec": "opus/48000/2"}),
        ("answer_without_sdp.xml", {}),
    ],
    ids=["g722-only", "unknown-dynamic-pt", "no-sdp"],
)
async def test_an_answer_we_cannot_use_is_byed_and_failed_88(
    sipp_trunk, make_lab, rtp_socket, scenario: str, keys: dict[str, object], caplog
) -> None:
    caplog.set_level(logging.INFO, logger="sipdialer.call")
    agent_media = await rtp_socket()
    trunk = sipp_trunk(scenario, agent_rtp=agent_media.port, **keys)
    lab = await make_lab(trunk.port)
    runner = await lab.call()
    p = (await ended(runner)).cdr_payload()
    assert (p["disposition"], p["end_code"], p["cause_name"]) == (
        "FAILED",
        88,
        "INCOMPATIBLE_DESTINATION",
    ), p
    assert p["call_time"] == 0 and p["bridged_at"] is None
    assert "event=answer_unusable" in caplog.text
    # SIPp completes only once it got both BYEs (the callee's, checked for cause 88 by
    # the scenario, and the agent's); its message log is complete after that
    await sipp_done(trunk)
    byes = [m for m in trunk.received() if m.startswith("BYE sip:")]
    assert any("cause=88" in header(m, "Reason") for m in byes), trunk.received_lines()


# ---- 9. session timers (RFC 4028) ---------------------------------------------------------
@pytest.mark.peers
async def test_we_refresh_the_session_when_the_callee_makes_us_the_refresher(
    sipp_trunk, make_lab, rtp_socket
) -> None:
    """The callee's 200 says ``Session-Expires: 10;refresher=uac``: we UPDATE every ~5 s."""
    agent_media, callee_media = await rtp_socket(), await rtp_socket()
    trunk = sipp_trunk(
        "session_timer_we_refresh.xml", agent_rtp=agent_media.port, callee_rtp=callee_media.port
    )
    lab = await make_lab(trunk.port)
    runner = await lab.call()
    t_bridged = await wait_state(runner, "bridged")
    p = (await ended(runner, timeout=25)).cdr_payload()
    t_end = time.monotonic()
    # the callee hung up after our two refreshes: an ordinary answered call
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    assert p["ended_by"] == "callee" and p["callee_sip_status"] == 200
    assert 9.5 <= t_end - t_bridged <= 13.0, t_end - t_bridged

    await sipp_done(trunk)
    assert runner.callee is not None
    callee = trunk.received_in(runner.callee.call_id)
    assert [m.split()[0] for m in callee] == ["INVITE", "ACK", "UPDATE", "UPDATE", "SIP/2.0"]
    invite, _, first, second, _ = callee
    assert "timer" in header(invite, "Supported")
    for update in (first, second):
        assert header(update, "Session-Expires") == "10;refresher=uac"
        assert "Content-Type" not in update  # a refresh without SDP
    assert int(cseq_of(first).split()[0]) < int(cseq_of(second).split()[0])
    assert lab.sink.cdrs == [runner.cdr]


@pytest.mark.peers
async def test_a_callee_that_stops_refreshing_is_byed_with_cause_41(
    sipp_trunk, make_lab, rtp_socket, caplog: pytest.LogCaptureFixture
) -> None:
    """The callee's 200 says ``Session-Expires: 10;refresher=uas`` and it never refreshes:
    we BYE it at 10 - min(32, 10/3) s, the call ends 41/session_timeout."""
    caplog.set_level(logging.INFO, logger="sipdialer")
    agent_media, callee_media = await rtp_socket(), await rtp_socket()
    trunk = sipp_trunk(
        "session_timer_peer_silent.xml", agent_rtp=agent_media.port, callee_rtp=callee_media.port
    )
    lab = await make_lab(trunk.port)
    runner = await lab.call()
    t_bridged = await wait_state(runner, "bridged")
    p = (await ended(runner, timeout=20)).cdr_payload()
    t_end = time.monotonic()
    outcome = (p["disposition"], p["end_code"], p["cause_name"], p["end_reason"])
    assert outcome == ("ANSWERED", 41, "NORMAL_TEMPORARY_FAILURE", "session_timeout"), p
    assert (p["ended_by"], p["end_leg"]) == ("system", "callee")
    assert 6.0 <= t_end - t_bridged <= 8.0, t_end - t_bridged
    assert "event=leg_session_expired" in caplog.text

    await sipp_done(trunk)
    assert runner.agent is not None and runner.callee is not None
    callee = trunk.received_in(runner.callee.call_id)
    assert [m.split()[0] for m in callee] == ["INVITE", "ACK", "BYE"], callee
    assert header(callee[2], "Reason").startswith("Q.850;cause=41")
    agent = trunk.received_in(runner.agent.call_id)
    assert [m.split()[0] for m in agent] == ["INVITE", "ACK", "BYE"], agent

    await sipp_done(trunk)  # the agent got its BYE too (the scenario's agent branch ends)


# ---- 5. media that moves (issue 12.2) ------------------------------------------------------
# The callee's RTP comes from two sockets of the test: the old address (1500 Hz) from the
# start, the new one (2000 Hz) from 40 ms after the SDP names it; the old one keeps sending
# for 150 ms after the move (trailing packets), which must not take the leg back.
OLD_HZ, NEW_HZ = 1500, 2000
OLD_TRAILS = 0.15
NEW_STARTS = 0.04


def our_sdps(messages: list[str]) -> list[tuple[int, int, str]]:
    """(session id, o= version, the SDP without its o= line) of every SDP we sent among
    ``messages`` (what SIPp received: our INVITE and our answers), in order."""
    out = []
    for message in messages:
        body = message.split("\n\n", 1)[1] if "\n\n" in message else ""
        origin = re.search(r"^o=sipdialer (\d+) (\d+) ", body, flags=re.M)
        if origin is None:
            continue
        rest = re.sub(r"^o=.*$", "", body, flags=re.M).strip()
        out.append((int(origin.group(1)), int(origin.group(2)), rest))
    return out


def assert_versions_follow_changes(sdps: list[tuple[int, int, str]]) -> list[int]:
    """RFC 3264 §8 on one leg: one session id; the version goes up by one when the SDP
    changed and stays when it did not. Returns the versions."""
    assert sdps, "we sent no SDP on this leg"
    assert len({session for session, _, _ in sdps}) == 1, sdps
    for (_, before, old), (_, after, new) in itertools.pairwise(sdps):
        if new != old:
            assert after == before + 1, f"changed SDP: version {before} -> {after}"
        else:
            assert after == before, f"unchanged SDP: version {before} -> {after}"
    return [version for _, version, _ in sdps]


@pytest.mark.peers
@pytest.mark.parametrize(
    ("scenario", "moves_after", "versions"),
    [
        ("callee_answer_moves.xml", 0.0, [1]),  # 183 on one port, 200 on another
        ("callee_update_moves.xml", 1.5, [1, 2]),  # an UPDATE moves the media mid-call
        # hold (our answer: recvonly), offerless re-INVITE (our offer again, a change: up),
        # the answer in the ACK moves the media (1 s later the refreshes would move it
        # too), two refreshes (a new answer, then the same one)
        ("callee_offerless_reinvite.xml", 1.5, [1, 2, 3, 4, 4]),
    ],
    ids=["183-then-200-elsewhere", "update", "offerless-reinvite-ack-answer"],
)
async def test_media_that_moves_is_followed_and_never_taken_back(
    sipp_trunk, make_lab, rtp_socket, scenario: str, moves_after: float, versions: list[int]
) -> None:
    agent_media, old, new = await rtp_socket(), await rtp_socket(), await rtp_socket()
    trunk = sipp_trunk(
        scenario, agent_rtp=agent_media.port, callee_rtp1=old.port, callee_rtp2=new.port
    )
    lab = await make_lab(trunk.port)
    runner = await lab.call()
    assert runner.bridge is not None
    b = runner.bridge.b
    relay = ("127.0.0.1", b.local_port)
    stop_old, stop_new = asyncio.Event(), asyncio.Event()
    talkers = [asyncio.ensure_future(send_tone(old, relay, OLD_HZ, stop_old))]
    seen: dict[str, float] = {}
    watcher = asyncio.ensure_future(watch(runner, seen))
    try:
        moved = await poll(
            lambda: b.remote == ("127.0.0.1", new.port) and not b.held,
            8.0,
            f"the relay never followed the SDP to the new port (remote {b.remote})",
        )
        await asyncio.sleep(NEW_STARTS)
        talkers.append(asyncio.ensure_future(send_tone(new, relay, NEW_HZ, stop_new)))
        await asyncio.sleep(OLD_TRAILS - NEW_STARTS)
        stop_old.set()
        p = (await ended(runner)).cdr_payload()
        t_end = time.monotonic()
    finally:
        stop_old.set()
        stop_new.set()
        await asyncio.gather(*talkers)
        await watcher
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    assert p["callee_sip_status"] == 200
    # the relay followed the SDP when the scenario moved the media (seconds after the 200)
    assert abs(moved - seen["bridged"] - moves_after) <= 0.4, moved - seen["bridged"]

    # the agent hears the new address's tone after the move
    after = agent_media.between(moved + 0.3, t_end - 0.1)
    assert len(after) >= 0.7 * (t_end - moved - 0.4) / 0.02, len(after)
    assert abs(peak_hz(audio_of(after)) - NEW_HZ) < 20
    assert rms(audio_of(after)) > 1000

    # the recording's callee channel holds that tone after the move, every 100 ms of it
    wav = Path(lab.service.config.recording.directory) / f"{p['recording_url']}.wav"
    data, rate = soundfile.read(wav, dtype="int16")
    start = int(max(0.0, moved - seen["bridged"] + 0.3) * rate)
    callee = data[start : len(data) - int(0.2 * rate), 1].astype(float)
    assert len(callee) >= rate, f"{len(callee)} samples after the move"
    assert abs(peak_hz(callee) - NEW_HZ) < 20
    windows = callee[: len(callee) // 800 * 800].reshape(-1, 800)
    quiet = [i for i, w in enumerate(windows) if rms(w) < 1000]
    assert not quiet, f"silent 100 ms windows of the callee channel after the move: {quiet}"
    # the trailing packets of the old address arrived and were refused: the leg kept the new
    if isinstance(runner.bridge, RemoteBridge):  # a worker's final stats came at its close
        assert runner.bridge.is_closed
    assert b.source == ("127.0.0.1", new.port), b.source
    assert b.packets_foreign >= 3, b.packets_foreign

    # every SDP we sent on each leg: the o= version goes up only when the SDP changed
    await sipp_done(trunk)
    assert runner.callee is not None and runner.agent is not None
    callee_sdps = our_sdps(trunk.received_in(runner.callee.call_id))
    assert assert_versions_follow_changes(callee_sdps) == versions
    assert assert_versions_follow_changes(our_sdps(trunk.received_in(runner.agent.call_id))) == [1]
    assert lab.sink.cdrs == [runner.cdr]
