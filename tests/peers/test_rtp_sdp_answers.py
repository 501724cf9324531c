"""Odd but valid SDP answers (issue 11, point 5), with one SIPp UAS as the trunk.

A 200 OK whose ``c=`` holds a host name, or an address the relay cannot reach (IPv6 when
the service listens on IPv4, multicast), must end the call at once — ACK, BYE with
``Reason: Q.850;cause=88``, CDR FAILED/88 — with no traceback in the log. With the
service listening on ``[::1]`` the same call over IPv6 is bridged both ways and recorded.

The SIPp trunk, the service and their helpers are those of ``test_call_edges.py``
(fixtures in ``tests/peers/conftest.py``, helpers in :mod:`tests.fixtures.sipp_trunk`;
``register = no``; the scenarios branch on the Request-URI: ``sip:1000@`` is the agent's
leg).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sipdialer.rtp.g711 import decode_ulaw
from tests.fixtures.lab import ended, peak_hz, wait_state
from tests.fixtures.sipp_trunk import header, send_tone

pytestmark = pytest.mark.peers


def tone(packets: list[bytes]) -> tuple[float, float]:
    """(peak Hz, RMS) of PCMU RTP packets."""
    samples = np.concatenate([decode_ulaw(p[12:]) for p in packets]).astype(float)
    return peak_hz(samples), float(np.sqrt(np.mean(samples**2)))


# ---- a 200 OK naming an address the relay cannot send to ---------------------------------
@pytest.mark.parametrize(
    ("addrtype", "address"),
    [
        ("IP4", "media.example.com"),  # a host name: valid SDP, never resolved
        ("IP6", "::1"),  # IPv6 while the service listens on IPv4
        ("IP6", "2001:db8::7"),
        ("IP4", "224.0.1.9"),  # multicast
    ],
)
async def test_unusable_answer_ends_the_call_at_once(
    sipp_trunk, make_lab, rtp_socket, addrtype: str, address: str, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    agent_media = await rtp_socket()
    trunk = sipp_trunk(
        "odd_answer.xml",
        agent_rtp=agent_media.port,
        callee_addrtype=addrtype,
        callee_address=address,
        callee_rtp=4000,
    )
    lab = await make_lab(trunk.port)
    started = time.monotonic()
    runner = await lab.call()
    await wait_state(runner, "callee_ringing")
    p = (await ended(runner, timeout=8.0)).cdr_payload()
    elapsed = time.monotonic() - started
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("FAILED", 88, "error")
    assert p["cause_name"] == "INCOMPATIBLE_DESTINATION"
    assert (p["end_leg"], p["callee_sip_status"], p["call_time"]) == ("callee", 200, 0)
    assert address in (p["end_detail"] or "")
    assert elapsed < 3.0, f"took {elapsed:.1f} s (the ring timeout is 10 s)"
    assert runner.bridge is not None and runner.bridge.b.remote is None

    # the peer: the callee's 200 was ACKed and BYEd (Reason 88), the agent BYEd too
    await asyncio.to_thread(trunk.assert_completed, 10.0)
    assert runner.callee is not None and runner.agent is not None
    callee = trunk.received_in(runner.callee.call_id)
    assert [m.split()[0] for m in callee] == ["INVITE", "ACK", "BYE"], callee
    assert header(callee[2], "Reason").startswith("Q.850;cause=88")
    agent = trunk.received_in(runner.agent.call_id)
    assert [m.split()[0] for m in agent] == ["INVITE", "ACK", "BYE"], agent
    assert header(agent[2], "Reason").startswith("Q.850;cause=88")

    # said once, plainly, and no traceback anywhere
    assert "event=media_address_unusable" in caplog.text
    assert not [r for r in caplog.records if r.exc_info], "a traceback reached the log"
    assert "Traceback" not in caplog.text


# ---- IPv6 when the service listens on IPv6 -------------------------------------------------
async def test_ipv6_media_is_bridged_and_recorded(sipp_trunk, make_lab, rtp_socket, caplog) -> None:
    caplog.set_level(logging.INFO)
    agent_media, callee_media = await rtp_socket("::1"), await rtp_socket("::1")
    trunk = sipp_trunk(
        "answer_then_bye.xml", "::1", agent_rtp=agent_media.port, callee_rtp=callee_media.port
    )
    lab = await make_lab(trunk.port, host="::1")
    service = lab.service
    runner = await lab.call()
    assert runner.bridge is not None
    bridge = runner.bridge
    stop = asyncio.Event()
    talkers = [
        asyncio.ensure_future(
            send_tone(agent_media, lambda: ("::1", bridge.a.local_port), 440, stop)
        ),
        asyncio.ensure_future(
            send_tone(callee_media, lambda: ("::1", bridge.b.local_port), 1000, stop)
        ),
    ]
    try:
        t_bridged = await wait_state(runner, "bridged")
        p = (await ended(runner)).cdr_payload()
        t_end = time.monotonic()
    finally:
        stop.set()
        await asyncio.gather(*talkers)
    assert (p["disposition"], p["end_code"], p["end_reason"]) == ("ANSWERED", 16, "callee_hungup")
    # both legs latched onto the phones' own IPv6 sockets
    assert bridge.a.source is not None and bridge.a.source[:2] == ("::1", agent_media.port)
    assert bridge.b.source is not None and bridge.b.source[:2] == ("::1", callee_media.port)
    # each side heard the other: the agent's 440 Hz at the callee, 1000 Hz at the agent
    heard = callee_media.packets
    to_callee = [d for t, d in heard if t_bridged + 0.2 <= t < t_end - 0.1]
    assert len(to_callee) >= 0.7 * (t_end - t_bridged - 0.3) / 0.02, len(to_callee)
    hz, level = tone(to_callee)
    assert abs(hz - 440) < 20 and level > 1000, (hz, level)
    to_agent = [d for t, d in agent_media.packets if t_bridged + 0.2 <= t < t_end - 0.1]
    hz, level = tone(to_agent)
    assert abs(hz - 1000) < 20 and level > 1000, (hz, level)
    # and the recording holds both
    wav = Path(service.config.recording.directory) / f"{p['recording_url']}.wav"
    data, _ = soundfile.read(wav, dtype="int16")
    middle = data[len(data) // 4 : 3 * len(data) // 4].astype(float)
    assert abs(peak_hz(middle[:, 0]) - 440) < 20 and abs(peak_hz(middle[:, 1]) - 1000) < 20
    await asyncio.to_thread(trunk.assert_completed, 10.0)
    # our SDP offered IPv6 media
    invites = [m for m in trunk.received() if m.startswith("INVITE ")]
    assert invites and all("c=IN IP6 ::1" in m for m in invites), invites[:1]
