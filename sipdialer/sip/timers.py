"""SIP timer values (RFC 3261 §17 and Table 4, RFC 6026 §8).

Owns :class:`TimerConfig`: the three base values T1, T2, T4 and every timer derived from
them, so that transactions and dialogs never hard-code a duration. Timers whose value
depends on the transport take ``reliable`` (TCP/TLS: ``True``); on a reliable transport
the "wait for retransmissions" timers D, I, J and K are zero and the retransmission
timers A, E and G are not used at all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimerConfig:
    """Base timer values in seconds; everything else is derived from them."""

    t1: float = 0.5
    """RTT estimate: first retransmission interval (Timers A, E, G start at T1)."""
    t2: float = 4.0
    """Cap on the retransmission interval of non-INVITE requests and INVITE responses."""
    t4: float = 5.0
    """Longest time a message stays in the network (Timers I and K on UDP)."""
    trying: float = 0.2
    """An INVITE server transaction sends 100 Trying if the TU is silent this long
    (RFC 3261 §17.2.1 "200 ms"); 0 sends it as soon as the INVITE arrives."""

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 >= 0 and self.trying >= 0):
            raise ValueError(f"inconsistent SIP timers: {self}")

    # ---- transport-independent -----------------------------------------------------
    @property
    def timer_b(self) -> float:
        """INVITE client transaction gives up (64·T1)."""
        return 64 * self.t1

    @property
    def timer_f(self) -> float:
        """Non-INVITE client transaction gives up (64·T1)."""
        return 64 * self.t1

    @property
    def timer_h(self) -> float:
        """INVITE server transaction stops waiting for the ACK of a non-2xx (64·T1)."""
        return 64 * self.t1

    @property
    def timer_l(self) -> float:
        """RFC 6026: INVITE server transaction lingers in Accepted (64·T1)."""
        return 64 * self.t1

    @property
    def timer_m(self) -> float:
        """RFC 6026: INVITE client transaction lingers in Accepted (64·T1)."""
        return 64 * self.t1

    # ---- zero on a reliable transport ------------------------------------------------
    def timer_d(self, reliable: bool) -> float:
        """INVITE client absorbs retransmitted finals: > 32 s on UDP, 0 on TCP."""
        return 0.0 if reliable else max(32.0, 64 * self.t1)

    def timer_i(self, reliable: bool) -> float:
        """INVITE server absorbs retransmitted ACKs: T4 on UDP, 0 on TCP."""
        return 0.0 if reliable else self.t4

    def timer_j(self, reliable: bool) -> float:
        """Non-INVITE server absorbs retransmitted requests: 64·T1 on UDP, 0 on TCP."""
        return 0.0 if reliable else 64 * self.t1

    def timer_k(self, reliable: bool) -> float:
        """Non-INVITE client absorbs retransmitted responses: T4 on UDP, 0 on TCP."""
        return 0.0 if reliable else self.t4


DEFAULT_TIMERS = TimerConfig()
