"""RTP port allocation: even UDP ports from the ``[sip] rtp_ports`` range, bound on demand.

Owns which ports of the range are in use by this process. :meth:`PortAllocator.allocate`
hands out a *bound* non-blocking UDP socket on the next free even port (RTP convention;
the odd port above it is left for RTCP, which the relay does not terminate); a port that
fails to bind (taken by another process) is skipped and retried later, after the other
free ports. :meth:`PortAllocator.release` returns a port after its socket is closed. When
no port of the range binds, :class:`PortsExhausted` is raised.
"""

from __future__ import annotations

import socket
from collections import deque

from sipdialer.rtp.errors import RtpError

__all__ = ["PortAllocator", "PortsExhausted"]


class PortsExhausted(RtpError, RuntimeError):
    """No even port of the RTP range is free (or every free one failed to bind)."""


class PortAllocator:
    """Even ports of ``[low, high]`` (both inclusive), round-robin, skipping unbindable ones."""

    def __init__(self, low: int, high: int) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad RTP port range {low}-{high}")
        first = low + (low & 1)
        self.low = low
        self.high = high
        # Least recently released first: a port is not reused while its peer may still send.
        self._free: deque[int] = deque(range(first, high + 1, 2))
        self._used: set[int] = set()
        if not self._free:
            raise ValueError(f"RTP port range {low}-{high} holds no even port")

    @property
    def capacity(self) -> int:
        return len(self._free) + len(self._used)

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def allocate(self, host: str) -> socket.socket:
        """A non-blocking UDP socket bound to ``(host, port)`` on a free even port.

        Its port is ``sock.getsockname()[1]``; give it back with :meth:`release` after
        closing the socket.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _ in range(len(self._free)):
            port = self._free.popleft()
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()
                self._free.append(port)  # in use elsewhere for now: try it again later
                continue
            sock.setblocking(False)
            self._used.add(port)
            return sock
        raise PortsExhausted(
            f"no free RTP port in {self.low}-{self.high} on {host} "
            f"({len(self._used)} in use by this process)"
        )

    def release(self, port: int) -> None:
        """Return ``port`` to the pool (a port not handed out is ignored)."""
        if port in self._used:
            self._used.discard(port)
            self._free.append(port)
