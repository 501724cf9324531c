"""Edge cases of whole calls through the real service, with one SIPp UAS as the trunk.

``[trunk] register = no`` and no credentials: nothing is registered or challenged, so
``[trunk] registrar`` points straight at one SIPp instance that plays the trunk for both
legs. Its scenarios (``tests/sipp/*.xml``) branch on the Request-URI: the agent's INVITE
(``sip:1000@``) is answered at once with PCMU SDP naming a UDP socket of this test (the
agent's phone), the callee's INVITE is scripted per test. SIPp runs with ``-m 2`` and
exits 0 only when both calls ran their scenario to the end, so every test also checks
that the peer received every message it expected, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import soundfile

from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import CallRequest, CallRunner
from sipdialer.rtp.g711 import decode_ulaw, encode_ulaw
from sipdialer.rtp.packet import HEADER
from sipdialer.service import Service
from tests.fixtures import ports
from tests.fixtures.lab import ended, peak_hz, wait_state
from tests.fixtures.process import PeerProcess, tail, wait_until
from tests.fixtures.require import require_binary
from tests.fixtures.sipp import start_sipp

if TYPE_CHECKING:
    from tests.conftest import PeerStack

AGENT, CALLEE, OUTBOUND = "1000", "0820001234", "0123456789"
SCENARIOS = Path(__file__).parents[1] / "sipp"
RATE = 8000


# ---- the SIPp trunk ---------------------------------------------------------------------
@dataclass
class SippTrunk:
    """One SIPp UAS (``-m 2``) playing the trunk; a peer of ``peer_stack`` (stopped by PID)."""

    proc: PeerProcess
    port: int
    workdir: Path
    reserved_ports: list[int]

    @property
    def log_path(self) -> Path:
        return self.proc.log_path

    @property
    def messages_log(self) -> Path:
        return self.workdir / "messages.log"

    @property
    def errors_log(self) -> Path:
        return self.workdir / "errors.log"

    def stop(self) -> None:
        self.proc.stop()

    def log_tail(self, n: int = 30) -> str:
        return (
            f"exit status {self.proc.returncode()}\n{self.proc.log_tail(n)}\n"
            f"--- {self.errors_log.name} ---\n{tail(self.errors_log, n)}\n"
            f"--- first lines of what SIPp received ---\n" + "\n".join(self.received_lines())
        )

    def received(self) -> list[str]:
        """Every SIP message SIPp received, in order (from its ``-trace_msg`` file)."""
        try:
            text = self.messages_log.read_text(errors="replace")
        except OSError:
            return []
        blocks = re.split(r"^-{20,} .*$", text, flags=re.M)
        return [
            b.split("\n\n", 1)[1].strip("\n")
            for b in blocks
            if re.search(r"message received \[\d+\] bytes", b) and "\n\n" in b
        ]

    def received_lines(self) -> list[str]:
        """First line of each message received (``INVITE sip:…``, ``SIP/2.0 200 OK``)."""
        return [m.splitlines()[0] for m in self.received() if m]

    def received_in(self, call_id: str) -> list[str]:
        """The messages SIPp received in one SIP call (dialog), in order."""
        return [m for m in self.received() if header(m, "Call-ID") == call_id]

    def assert_completed(self, timeout: float = 10.0) -> None:
        """SIPp exited 0 on its own: both calls ran their whole scenario."""
        wait_until(lambda: not self.proc.running(), timeout)
        rc = self.proc.returncode()
        assert rc == 0, f"SIPp did not complete its scenario:\n{self.log_tail(40)}"


def header(message: str, name: str) -> str:
    m = re.search(rf"^{name}:[ \t]*(.*?)\s*$", message, flags=re.M | re.I)
    return m.group(1) if m else ""


def sipp_workdir(tmp_path: Path) -> Path:
    """SIPp's working directory (its logs, and the files a scenario names)."""
    workdir = tmp_path / "sipp"
    workdir.mkdir(exist_ok=True)
    return workdir


@pytest.fixture
def sipp_trunk(tmp_path: Path, peer_stack: PeerStack) -> Callable[..., SippTrunk]:
    """Factory ``sipp_trunk(scenario, **keys)``: a started SIPp UAS playing the trunk.

    ``keys`` become ``-key NAME VALUE`` (``[NAME]`` in the scenario). SIPp exits by itself
    after the two calls (``-m 2``); a missing message fails its call after 15 s.
    """
    require_binary("sipp")

    def start(scenario: str, **keys: object) -> SippTrunk:
        port = ports.free_port("both")
        media = ports.free_port_range(4, "udp")
        workdir = sipp_workdir(tmp_path)
        args: list[object] = [
            *("-sf", SCENARIOS / scenario),
            *("-i", "127.0.0.1", "-p", port, "-t", "u1"),
            *("-mi", "127.0.0.1", "-mp", media),
            *("-m", 2, "-recv_timeout", 15000, "-timeout", "40s", "-timeout_error"),
            *("-trace_msg", "-message_file", workdir / "messages.log"),
            *("-trace_err", "-error_file", workdir / "errors.log"),
            *("-trace_logs", "-log_file", workdir / "actions.log"),
        ]
        for key, value in keys.items():
            args += ["-key", key, value]
        proc = start_sipp([str(a) for a in args], workdir / "sipp.out", cwd=workdir)
        trunk = SippTrunk(proc, port, workdir, [port, *range(media, media + 4)])
        peer_stack.add(f"sipp trunk :{port}", trunk)
        bound = wait_until(lambda: not ports.port_is_free(port, "udp") or not proc.running(), 5)
        if not (bound and proc.running()):
            pytest.fail(f"sipp did not start:\n{trunk.log_tail()}", pytrace=False)
        return trunk

    return start


# ---- the service ------------------------------------------------------------------------
@dataclass
class Lab:
    service: Service
    sink: MemorySink

    async def call(self) -> CallRunner:
        assert self.service.dialer is not None
        return await self.service.dialer.originate(
            CallRequest(agent=AGENT, callee=CALLEE, outbound_id=OUTBOUND, call_ref="edge-1")
        )


@pytest.fixture
async def make_lab(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """Factory ``await make_lab(trunk_port, t1=0.5, callee_ring_timeout=10)``."""
    started: list[Service] = []
    reserved: list[int] = []

    async def make(trunk_port: int, *, t1: float = 0.5, callee_ring_timeout: float = 10) -> Lab:
        port = ports.free_port("both")
        rtp = ports.free_port_range(20, "udp")
        reserved.extend([port, *range(rtp, rtp + 20)])
        sink = MemorySink()
        config = parse_config(
            f"""
[trunk]
registrar = 127.0.0.1:{trunk_port}
domain = trunk.test
register = no
[sip]
listen = 127.0.0.1:{port}
rtp_ports = {rtp}-{rtp + 19}
t1 = {t1}
[calls]
agent_ring_timeout = 5
callee_ring_timeout = {callee_ring_timeout}
[recording]
directory = {tmp_path / "recordings"}
"""
        )
        service = Service(config, sink=sink, serve_http=False)
        await service.start()
        started.append(service)
        return Lab(service, sink)

    yield make
    for service in started:
        await service.stop()
    ports.release(reserved)


async def poll(predicate: Callable[[], bool], timeout: float, message: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.005)
    return time.monotonic()


def cseq_of(message: str) -> str:
    m = re.search(r"^CSeq:\s*(\d+\s+\S+)", message, flags=re.M | re.I)
    return " ".join(m.group(1).split()) if m else ""


async def sipp_done(trunk: SippTrunk, timeout: float = 10.0) -> None:
    await asyncio.to_thread(trunk.assert_completed, timeout)


# ---- RTP helpers -------------------------------------------------------------------------
@dataclass
class RtpSocket(asyncio.DatagramProtocol):
    """A UDP socket of this test standing in for a phone's media port."""

    packets: list[tuple[float, bytes]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None
    port: int = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append((time.monotonic(), data))

    def between(self, start: float, end: float) -> list[bytes]:
        return [p for t, p in self.packets if start <= t < end]


@pytest.fixture
async def rtp_socket() -> AsyncIterator[Callable[..., object]]:
    """Factory ``await rtp_socket()`` → a bound :class:`RtpSocket` (closed at teardown)."""
    made: list[RtpSocket] = []

    async def make() -> RtpSocket:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            port = ports.free_port("udp")
            try:
                _, proto = await loop.create_datagram_endpoint(
                    RtpSocket, local_addr=("127.0.0.1", port)
                )
            except OSError:
                ports.release([port])
                continue
            proto.port = port
            made.append(proto)
            return proto
        raise RuntimeError("no free UDP port for a test RTP socket")

    yield make
    for sock in made:
        if sock.transport is not None:
            sock.transport.close()
        ports.release([sock.port])


def audio_of(packets: list[bytes]) -> np.ndarray:
    """Decode PCMU RTP packets (payload type 0) into float samples."""
    chunks = []
    for p in packets:
        assert p[1] & 0x7F == 0, f"unexpected payload type {p[1] & 0x7F}"
        chunks.append(decode_ulaw(p[12:]))
    return np.concatenate(chunks).astype(float) if chunks else np.zeros(0)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


def marker(packet: bytes) -> bool:
    return bool(packet[1] & 0x80)


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
async def watch(runner: CallRunner, seen: dict[str, float]) -> None:
    """Note when the callee's media address is first known (the 183) and when bridged."""
    while not runner.call.ended:
        now = time.monotonic()
        b = runner.bridge.b if runner.bridge is not None else None
        if "callee_media" not in seen and b is not None and b.remote is not None:
            seen["callee_media"] = now
        if "bridged" not in seen and runner.state.value == "bridged":
            seen["bridged"] = now
        await asyncio.sleep(0.005)


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
async def send_tone(sock: RtpSocket, dest: tuple[str, int], hz: float, stop: asyncio.Event) -> None:
    """Send a PCMU tone as 20 ms RTP packets from ``sock`` until ``stop`` is set."""
    assert sock.transport is not None
    ssrc, seq, n = 0x1234ABCD, 1000, 0
    t = np.arange(160) / RATE
    start = time.monotonic()
    while not stop.is_set():
        samples = 8000 * np.sin(2 * np.pi * hz * (t + n * 0.02))
        rtp = HEADER.pack(0x80, 0, (seq + n) & 0xFFFF, (n * 160) & 0xFFFFFFFF, ssrc)
        sock.transport.sendto(rtp + encode_ulaw(samples.astype(np.int16)), dest)
        n += 1
        await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))


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
    assert b.latch.source == ("127.0.0.1", new.port), b.latch.source
    assert b.packets_foreign >= 3, b.packets_foreign

    # every SDP we sent on each leg: the o= version goes up only when the SDP changed
    await sipp_done(trunk)
    assert runner.callee is not None and runner.agent is not None
    callee_sdps = our_sdps(trunk.received_in(runner.callee.call_id))
    assert assert_versions_follow_changes(callee_sdps) == versions
    assert assert_versions_follow_changes(our_sdps(trunk.received_in(runner.agent.call_id))) == [1]
    assert lab.sink.cdrs == [runner.cdr]
