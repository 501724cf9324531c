"""RTP port allocation: even UDP ports from the ``[sip] rtp_ports`` range, bound on demand.

Owns which ports of the range are in use by this process. :meth:`PortAllocator.allocate`
hands out a *bound* non-blocking UDP socket on a free even port (RTP convention; the odd
port above it is left for RTCP, which the relay does not terminate) chosen **at random**
(``secrets``), so nobody can tell from one call's SDP which ports the next calls get and
spray RTP at them ahead of the phones. A released port *rests* before it is handed out
again (the most recently released quarter of the range, at most :data:`MAX_RESTING`
ports), so a port is not reused while its last peer may still send; the resting ones are
handed out, oldest first, only when no other port is free. A port that fails to bind
(taken by another process) rests too and is retried later. When no port of the range
binds, :class:`PortsExhausted` is raised.

The sockets are bound without ``SO_REUSEADDR``/``SO_REUSEPORT``: no other socket may
share a live relay port (the relay clears both again once the loop has the socket).
"""

from __future__ import annotations

import secrets
import socket
from collections import deque
from collections.abc import Callable

from sipdialer.rtp.errors import RtpError

__all__ = ["MAX_RESTING", "PortAllocator", "PortsExhausted"]

#: At most this many released ports rest before they may be handed out again.
MAX_RESTING = 64


class PortsExhausted(RtpError, RuntimeError):
    """No even port of the RTP range is free (or every free one failed to bind)."""


class PortAllocator:
    """Even ports of ``[low, high]`` (both inclusive), chosen at random among the free ones;
    released and unbindable ones rest first.

    ``choose(n)`` picks an index below ``n`` (default :func:`secrets.randbelow`; tests may
    pass a seeded one)."""

    def __init__(
        self, low: int, high: int, *, choose: Callable[[int], int] = secrets.randbelow
    ) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad RTP port range {low}-{high}")
        first = low + (low & 1)
        self.low = low
        self.high = high
        self._choose = choose
        self._free: list[int] = list(range(first, high + 1, 2))  # any order: picked at random
        self._resting: deque[int] = deque()  # least recently released first
        self._used: set[int] = set()
        if not self._free:
            raise ValueError(f"RTP port range {low}-{high} holds no even port")
        self._rest = min(MAX_RESTING, len(self._free) // 4)

    @property
    def capacity(self) -> int:
        return len(self._free) + len(self._resting) + len(self._used)

    @property
    def available(self) -> int:
        return len(self._free) + len(self._resting)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def _take(self) -> int:
        """A random free port, or the longest-resting one when none is free."""
        free = self._free
        if not free:
            return self._resting.popleft()
        i = self._choose(len(free))
        port = free[i]
        free[i] = free[-1]
        free.pop()
        return port

    def _put_to_rest(self, port: int) -> None:
        self._resting.append(port)
        while len(self._resting) > self._rest:
            self._free.append(self._resting.popleft())

    def allocate(self, host: str) -> socket.socket:
        """A non-blocking UDP socket bound to ``(host, port)`` on a random free even port.

        Its port is ``sock.getsockname()[1]``; give it back with :meth:`release` after
        closing the socket.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        unbindable: list[int] = []  # in use elsewhere for now: rest, try them again later
        try:
            for _ in range(self.available):
                port = self._take()  # each port at most once per call
                sock = socket.socket(family, socket.SOCK_DGRAM)
                try:
                    sock.bind((host, port))
                except OSError:
                    sock.close()
                    unbindable.append(port)
                    continue
                sock.setblocking(False)
                self._used.add(port)
                return sock
        finally:
            for port in unbindable:
                self._put_to_rest(port)
        raise PortsExhausted(
            f"no free RTP port in {self.low}-{self.high} on {host} "
            f"({len(self._used)} in use by this process)"
        )

    def release(self, port: int) -> None:
        """Return ``port`` to the pool, to rest first (a port not handed out is ignored)."""
        if port in self._used:
            self._used.discard(port)
            self._put_to_rest(port)
