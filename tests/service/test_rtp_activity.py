"""What the relay counts as a leg's media activity (``MediaLeg.last_rx``), on real sockets.

The call's RTP timeout is per leg (issue 12.5) and fed from each leg's ``last_rx``: a
packet moves only its own leg's time, and only packets of the leg's negotiated audio,
telephone-event or static G.711 payload types count. CN and unknown payload types do not
(a peer that keeps sending those carries no audio). The bridge and fake phones are
``tests/fixtures/rtp_phones.py``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sipdialer.rtp import g711
from sipdialer.rtp.relay import Bridge, MediaLeg
from tests.fixtures import rtp_phones
from tests.fixtures.rtp_phones import Phone, Scenario, tone, with_bridge

run = rtp_phones.run  # asyncio's loop and uvloop, requested by name below


async def arrived(leg: MediaLeg, packets_in: int) -> None:
    """Wait until ``leg`` has taken ``packets_in`` packets in all."""
    for _ in range(200):
        if leg.packets_in >= packets_in:
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"leg {leg.name} took {leg.packets_in} packets, not {packets_in}")


def test_a_packet_moves_only_its_own_leg_s_activity(run: Callable[[Scenario], None]) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        opened_b = bridge.b.last_rx
        await asyncio.sleep(0.05)
        pa.send(bridge.a.local_port, g711.encode_ulaw(tone(440, 160)))
        await arrived(bridge.a, 1)
        assert bridge.a.last_rx > opened_b + 0.04
        assert bridge.b.last_rx == opened_b  # the callee sent nothing

    run(with_bridge(body))


@pytest.mark.parametrize(
    ("pt", "counts"),
    [
        (0, True),  # the negotiated audio PT
        (101, True),  # the negotiated telephone-event PT
        (8, True),  # static G.711 in the other law (relayed, transcoded)
        (13, False),  # CN: not negotiated, not audio
        (99, False),  # a dynamic PT nobody negotiated
        (18, False),  # G.729: a static PT we do not relay
    ],
)
def test_only_negotiated_payload_types_are_activity(
    run: Callable[[Scenario], None], pt: int, counts: bool
) -> None:
    async def body(bridge: Bridge, pa: Phone, pb: Phone) -> None:
        pb.send(bridge.b.local_port, g711.encode_ulaw(tone(440, 160)))  # latch the source
        await arrived(bridge.b, 1)
        before = bridge.b.last_rx
        await asyncio.sleep(0.05)
        payload = b"\x00\x0a\x00\xa0" if pt == 101 else b"\xff" * 160
        pb.send(bridge.b.local_port, payload, pt=pt)
        await arrived(bridge.b, 2)
        assert (bridge.b.last_rx > before + 0.04) is counts, bridge.b.last_rx - before

    run(with_bridge(body))
