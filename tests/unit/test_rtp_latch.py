"""The relay's latch rule (``sipdialer.rtp.latch``), driven with a fake clock: which source
a media leg takes RTP from — the SDP address at once, a NAT'd source after a run, never
another once latched, and always the newest SDP's address, never one it has left."""

from __future__ import annotations

import pytest

from sipdialer.rtp.latch import LEARN_RUN, LEARN_SPAN, MAX_BARRED, MAX_CANDIDATES, Latch

SDP = ("192.0.2.10", 4000)
NAT = ("198.51.100.7", 31000)  # where the phone's packets really come from
EVIL = ("203.0.113.66", 4000)  # a sprayer
GAP = 0.02  # 20 ms packets


def run(
    latch: Latch,
    addr: tuple[str, int],
    n: int,
    *,
    t0: float = 0.0,
    seq0: int = 100,
    ssrc: int = 0xABC,
    gap: float = GAP,
    pt_ok: bool = True,
) -> list[bool]:
    """Offer ``n`` in-sequence packets from ``addr``; the verdicts."""
    return [latch.offer(addr, pt_ok, (seq0 + i) & 0xFFFF, ssrc, t0 + i * gap) for i in range(n)]


def test_nothing_latches_before_sdp() -> None:
    latch = Latch()
    assert run(latch, SDP, LEARN_RUN + 5) == [False] * (LEARN_RUN + 5)
    assert latch.source is None


def test_the_sdp_address_latches_at_its_first_packet() -> None:
    latch = Latch()
    assert latch.follow(SDP)
    assert latch.offer(SDP, True, 1, 1, 0.0)
    assert (latch.source, latch.exact) == (SDP, True)
    # even a packet of an unknown payload type: the address is what the SDP said
    other = Latch()
    other.follow(SDP)
    assert other.offer(SDP, False, 1, 1, 0.0)


def test_a_single_foreign_packet_latches_nothing() -> None:
    latch = Latch()
    latch.follow(SDP)
    assert not latch.offer(EVIL, True, 1, 1, 0.0)
    assert latch.source is None


def test_learning_needs_a_run_of_in_sequence_packets_over_time() -> None:
    latch = Latch()
    latch.follow(SDP)
    verdicts = run(latch, NAT, LEARN_RUN)
    assert verdicts == [False] * (LEARN_RUN - 1) + [True]
    assert (latch.source, latch.exact) == (NAT, False)


def test_a_burst_is_no_run() -> None:
    latch = Latch()
    latch.follow(SDP)
    burst = run(latch, NAT, 5 * LEARN_RUN, gap=0.0005)  # 50 packets in 25 ms
    assert not any(burst)
    # the run goes on at a phone's pace: it latches once it has lasted LEARN_SPAN
    later = run(latch, NAT, LEARN_RUN, t0=LEARN_SPAN, seq0=100 + 5 * LEARN_RUN)
    assert later[0] and latch.source == NAT


@pytest.mark.parametrize(
    ("ssrc", "step", "port"),
    [
        (0xDEF, 1, 31000),  # another SSRC
        (0xABC, 2, 31000),  # a gap in the sequence
        (0xABC, 0, 31000),  # a repeated packet
        (0xABC, 1, 31002),  # another port of the same IP
    ],
)
def test_a_broken_run_starts_over(ssrc: int, step: int, port: int) -> None:
    latch = Latch()
    latch.follow(SDP)
    assert not any(run(latch, NAT, LEARN_RUN - 1))
    # the breaking packet starts a new run of its own...
    seq = 100 + LEARN_RUN - 2 + step
    src = (NAT[0], port)
    t = (LEARN_RUN - 1) * GAP
    rest = run(latch, src, LEARN_RUN, t0=t, seq0=seq, ssrc=ssrc)
    # ...which latches at its own LEARN_RUN-th packet, not before
    assert rest == [False] * (LEARN_RUN - 1) + [True]
    assert latch.source == src


def test_packets_of_a_payload_type_not_negotiated_do_not_learn() -> None:
    latch = Latch()
    latch.follow(SDP)
    assert not any(run(latch, NAT, 3 * LEARN_RUN, pt_ok=False))
    assert latch.source is None


def test_the_sequence_may_wrap_within_a_run() -> None:
    latch = Latch()
    latch.follow(SDP)
    assert run(latch, NAT, LEARN_RUN, seq0=65535 - 3)[-1]


def test_interleaved_sprayers_cannot_stop_a_real_run() -> None:
    """Sprayers sending between the phone's packets, from many ports of a few IPs, neither
    break the phone's run nor evict it."""
    latch = Latch()
    latch.follow(SDP)
    verdicts = []
    for i in range(LEARN_RUN):
        for k in range(3 * MAX_CANDIDATES):  # 24 packets from fresh ports, 20 ms apart
            evil = (f"203.0.113.{k % (MAX_CANDIDATES - 1)}", 10000 + i * 100 + k)
            assert not latch.offer(evil, True, k, k, i * GAP)
        verdicts.append(latch.offer(NAT, True, 100 + i, 0xABC, i * GAP))
    assert verdicts == [False] * (LEARN_RUN - 1) + [True]
    assert latch.source == NAT


def test_a_new_ip_evicts_the_shortest_run() -> None:
    latch = Latch()
    latch.follow(SDP)
    assert not any(run(latch, NAT, LEARN_RUN - 1))  # the phone's run is long already
    for k in range(5 * MAX_CANDIDATES):  # many IPs, one packet each
        assert not latch.offer((f"203.0.113.{k}", 5000), True, k, k, 0.1)
    assert latch.offer(NAT, True, 100 + LEARN_RUN - 1, 0xABC, 1.0)  # its run survived


def test_once_latched_no_other_source_gets_in() -> None:
    latch = Latch()
    latch.follow(SDP)
    assert latch.offer(SDP, True, 1, 1, 0.0)
    assert not any(run(latch, EVIL, 5 * LEARN_RUN))
    assert not any(run(latch, (SDP[0], SDP[1] + 2), 5 * LEARN_RUN))  # same IP, other port
    assert latch.source == SDP
    # learnt (NAT) sources are as strict
    nat = Latch()
    nat.follow(SDP)
    assert run(nat, NAT, LEARN_RUN)[-1]
    assert not any(run(nat, EVIL, 5 * LEARN_RUN, t0=1.0))
    assert nat.source == NAT


def test_the_sdp_address_wins_over_a_learnt_source_and_for_good() -> None:
    latch = Latch()
    latch.follow(SDP)
    assert run(latch, EVIL, LEARN_RUN)[-1]  # a sprayer learnt its way in first
    assert latch.offer(SDP, True, 1, 1, 1.0)  # the phone's first packet takes over
    assert (latch.source, latch.exact) == (SDP, True)
    assert not any(run(latch, EVIL, 3 * LEARN_RUN, t0=2.0, seq0=5000))
    assert latch.source == SDP


def test_the_same_sdp_address_again_keeps_the_latch() -> None:
    latch = Latch()
    latch.follow(SDP)
    assert run(latch, NAT, LEARN_RUN)[-1]
    assert not latch.follow(SDP)  # a re-INVITE for hold or a codec change
    assert latch.source == NAT


def test_new_sdp_is_followed_and_the_old_address_never_comes_back() -> None:
    """Issue 12 point 2: 183 → 200 on another port, RTP trailing from the old port."""
    early, final = ("192.0.2.10", 4000), ("192.0.2.10", 4002)
    latch = Latch()
    latch.follow(early)
    assert latch.offer(early, True, 1, 1, 0.0)
    assert latch.follow(final)  # the 200's SDP moves the media
    assert latch.source is None and latch.sdp == final
    # packets still trailing from the old port: never taken back, however many
    assert not any(run(latch, early, 5 * LEARN_RUN, t0=0.1, seq0=2))
    assert latch.offer(final, True, 9000, 2, 0.5)
    assert latch.source == final
    assert early in latch.barred


def test_a_learnt_source_left_by_new_sdp_is_barred_too() -> None:
    latch = Latch()
    latch.follow(SDP)
    assert run(latch, NAT, LEARN_RUN)[-1]
    moved = ("192.0.2.20", 5000)
    latch.follow(moved)
    assert not any(run(latch, NAT, 5 * LEARN_RUN, t0=1.0, seq0=200))
    assert set(latch.barred) == {SDP, NAT}
    # a NAT'd phone at the new SDP address can still learn from a fresh source
    assert run(latch, ("198.51.100.7", 31002), LEARN_RUN, t0=3.0)[-1]


def test_sdp_naming_a_barred_address_again_lifts_that_bar() -> None:
    a, b = ("192.0.2.10", 4000), ("192.0.2.10", 4002)
    latch = Latch()
    latch.follow(a)
    latch.follow(b)
    assert a in latch.barred
    latch.follow(a)  # the newest SDP is back at a
    assert a not in latch.barred and b in latch.barred
    assert latch.offer(a, True, 1, 1, 0.0)


def test_the_barred_list_is_bounded() -> None:
    latch = Latch()
    for port in range(4000, 4000 + 2 * (MAX_BARRED + 5), 2):
        latch.follow(("192.0.2.10", port))
    assert len(latch.barred) == MAX_BARRED
    assert latch.barred[-1] == ("192.0.2.10", 4000 + 2 * (MAX_BARRED + 3))
