"""A callee that answers and never sends RTP, through the real service and a SIPp trunk.

Issue 12, points 4 and 5: the agent's ringback stops at the callee's 200 OK (not at the
callee's first packet, which here never comes), and the call ends after ``rtp_timeout``
of callee silence with cause 41 naming the callee leg, although the agent talks all along
(the RTP timeout is per leg). The SIPp fixtures (``tests/peers/conftest.py``) and RTP
helpers (:mod:`tests.fixtures.sipp_trunk`) are those of ``test_call_edges.py``; only the
service here has a short ``rtp_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import soundfile

from tests.fixtures.lab import ended, peak_hz, wait_state
from tests.fixtures.sipp_trunk import (
    RtpSocket,
    audio_of,
    header,
    rms,
    send_tone,
    sipp_done,
    watch,
)

RTP_TIMEOUT = 3.0
AGENT_HZ = 1000.0
CDR_SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "cdr.schema.json").read_text()
)


@pytest.mark.peers
async def test_a_callee_that_answers_and_never_sends_rtp(sipp_trunk, make_lab, rtp_socket) -> None:
    agent_media: RtpSocket = await rtp_socket()
    callee_media: RtpSocket = await rtp_socket()  # the callee's media port: never sends
    trunk = sipp_trunk(
        "callee_answers_silent.xml", agent_rtp=agent_media.port, callee_rtp=callee_media.port
    )
    lab = await make_lab(trunk.port, rtp_timeout=RTP_TIMEOUT)
    runner = await lab.call()
    seen: dict[str, float] = {}
    watcher = asyncio.ensure_future(watch(runner, seen))
    t_ringing = await wait_state(runner, "callee_ringing")
    # the agent talks for the whole call: only the callee's silence may end it
    assert runner.bridge is not None
    stop = asyncio.Event()
    talker = asyncio.ensure_future(
        send_tone(agent_media, ("127.0.0.1", runner.bridge.a.local_port), AGENT_HZ, stop)
    )
    try:
        cdr = await ended(runner, timeout=RTP_TIMEOUT + 15)
    finally:
        stop.set()
        await talker
    t_end = time.monotonic()
    await watcher
    p = cdr.cdr_payload()
    assert "bridged" in seen, seen
    t_bridged = seen["bridged"]

    # 4. ringback while the callee rang (so its absence afterwards means something) ...
    ringing = agent_media.between(t_ringing, t_bridged)
    assert len(ringing) >= 0.7 * (t_bridged - t_ringing) / 0.02, len(ringing)
    assert 380 <= peak_hz(audio_of(ringing[2:18])) <= 470, "not our 400+450 Hz ringback"
    # ... and not one packet after the 200 OK (the callee sent nothing to relay); one
    # 20 ms tick may have been under way when the state changed
    after = agent_media.between(t_bridged + 0.03, t_end + 1)
    assert after == [], f"{len(after)} ringback packets after the callee answered"

    # 5. the callee's leg timed out after rtp_timeout, while the agent's media flowed
    assert (p["disposition"], p["end_code"], p["cause_name"]) == (
        "ANSWERED",
        41,
        "NORMAL_TEMPORARY_FAILURE",
    ), p
    assert (p["end_reason"], p["end_leg"], p["ended_by"]) == (
        "rtp_timeout_callee",
        "callee",
        "system",
    ), p
    jsonschema.Draft202012Validator(CDR_SCHEMA).validate({"type": "cdr", "payload": p})
    assert RTP_TIMEOUT - 0.2 <= t_end - t_bridged <= RTP_TIMEOUT + 1.5, t_end - t_bridged
    assert abs(float(p["call_time"]) - RTP_TIMEOUT) <= 1.0, p["call_time"]
    # the bridge did relay the agent to the callee: the timeout is not a dead relay
    to_callee = [pk for t, pk in callee_media.packets if t >= t_bridged + 0.2]
    assert len(to_callee) >= 50, len(to_callee)
    assert abs(peak_hz(audio_of(to_callee)) - AGENT_HZ) < 20
    # both legs got a BYE saying why: Q.850 cause 41
    byes = [m for m in trunk.received() if m.startswith("BYE sip:")]
    assert len(byes) == 2, trunk.received_lines()
    assert all("cause=41" in header(m, "Reason") for m in byes), byes

    # the recording: as long as the bridged time (±1 s), the agent's tone on the left and
    # nothing on the callee's channel
    wav = Path(lab.service.config.recording.directory) / f"{p['recording_url']}.wav"
    data, rate = soundfile.read(wav, dtype="int16")
    assert rate == 8000 and data.shape[1] == 2
    seconds = len(data) / rate
    assert abs(seconds - (t_end - t_bridged)) <= 1.0, (seconds, t_end - t_bridged)
    agent_channel = data[:, 0].astype(float)
    callee_channel = data[:, 1].astype(float)
    assert abs(peak_hz(agent_channel[len(data) // 4 : 3 * len(data) // 4]) - AGENT_HZ) < 20
    assert rms(agent_channel) > 1000
    assert np.max(np.abs(callee_channel)) <= 8, "the silent callee's channel is not silent"
    await sipp_done(trunk)
