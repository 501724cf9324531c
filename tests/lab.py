"""What the end-to-end tests share: the service's configuration against the Kamailio test
trunk, the FFT check of a recording's tones, and waiting for a condition, a call state or
a call's CDR."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from sipdialer.cdr import Cdr
from sipdialer.dialer import CallRunner
from tests.peers import ports
from tests.peers.kamailio import KamailioTrunk


def trunk_config(
    trunk: KamailioTrunk, *, rtp_ports: int = 200, extra: str = "", transport: str = "udp"
) -> str:
    """``sip.conf`` text for a service registered with ``trunk`` as dialer/s3cret, on a
    free SIP port with ``rtp_ports`` free RTP ports: the [trunk] and [sip] sections; the
    caller appends its other sections."""
    sip = ports.free_port("both")
    rtp = ports.free_port_range(rtp_ports, "udp")
    return (
        f"[trunk]\nregistrar = {trunk.host}:{trunk.port}\ndomain = {trunk.domain}\n"
        f"username = dialer\npassword = s3cret\ntransport = {transport}\n"
        f"[sip]\nlisten = 127.0.0.1:{sip}\nrtp_ports = {rtp}-{rtp + rtp_ports - 1}\n"
        f"{extra}"
    )


def peak_hz(samples: np.ndarray, rate: int = 8000) -> float:
    """The dominant frequency of ``samples`` (Hann-windowed FFT)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def ended(runner: CallRunner, timeout: float = 20.0) -> Cdr:
    """The CDR of ``runner``'s call once it has ended (and been handed to the sink)."""
    await asyncio.wait_for(runner.done.wait(), timeout)
    assert runner.cdr is not None
    return runner.cdr


async def wait_state(runner: CallRunner, state: str, timeout: float = 10.0) -> float:
    """Wait until the call is in ``state``; fail at once if it ends on the way. Returns
    the ``time.monotonic()`` at which the state was seen."""
    deadline = time.monotonic() + timeout
    while runner.state.value != state:
        assert time.monotonic() < deadline, f"call stuck in {runner.state.value}"
        assert not runner.call.ended or state == "ended", runner.snapshot()
        await asyncio.sleep(0.01)
    return time.monotonic()
