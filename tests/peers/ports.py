"""Free loopback ports for test peers (owns port choice and in-process reservations).

Ports are probed by binding on 127.0.0.1 and then released, so another process can
still grab one before the peer binds it; the window is small. Within this process, a
port handed out once is *reserved* and never handed out again until ``release()``, so
two fixtures (or the dialer and a trunk's trusted phone range) never get the same one.

Ports are drawn at random from below the kernel's ephemeral range (so outgoing
connections do not take them meanwhile), never below 10000 and never in 5100-5199
(the lab recipe's trusted phone range).
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterable
from typing import Literal

from sipdialer.testing.ports import bindable as _bind_check
from sipdialer.testing.ports import ephemeral_low

Kind = Literal["udp", "tcp", "both"]

HOST = "127.0.0.1"
LOWEST = 10000
AVOID = range(5100, 5200)

_lock = threading.Lock()
_reserved: set[int] = set()
_rng = random.Random()


_HIGHEST = max(ephemeral_low() - 1, LOWEST + 2000)

_TYPES = {
    "udp": [socket.SOCK_DGRAM],
    "tcp": [socket.SOCK_STREAM],
    "both": [socket.SOCK_DGRAM, socket.SOCK_STREAM],
}


def _bindable(port: int, kind: Kind) -> bool:
    """True if ``port`` can be bound on 127.0.0.1 for ``kind`` right now (TCP with
    SO_REUSEADDR, as servers do, so a port in TIME_WAIT counts as free)."""
    return all(_bind_check(HOST, port, t) for t in _TYPES[kind])


def _usable(port: int) -> bool:
    return LOWEST <= port <= _HIGHEST and port not in AVOID and port not in _reserved


def port_is_free(port: int, kind: Kind = "both") -> bool:
    """True if ``port`` is bindable now (ignores this module's reservations)."""
    return _bindable(port, kind)


def free_port(kind: Kind = "both") -> int:
    """Reserve and return a port free on 127.0.0.1 for UDP, TCP or both."""
    with _lock:
        for _ in range(2000):
            port = _rng.randint(LOWEST, _HIGHEST)
            if _usable(port) and _bindable(port, kind):
                _reserved.add(port)
                return port
    raise RuntimeError(f"no free {kind} port found on {HOST}")


def free_port_range(n: int, kind: Kind = "both", align: int = 2) -> int:
    """Reserve ``n`` consecutive free ports; return the first (a multiple of ``align``).

    Use for RTP ranges (``kind="udp"``, even start) and for a trunk's trusted phone
    range.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    with _lock:
        for _ in range(500):
            base = _rng.randint(LOWEST, _HIGHEST - n)
            base -= base % align
            ports = range(base, base + n)
            if all(_usable(p) for p in ports) and all(_bindable(p, kind) for p in ports):
                _reserved.update(ports)
                return base
    raise RuntimeError(f"no {n} consecutive free {kind} ports found on {HOST}")


def reserve(ports: Iterable[int]) -> None:
    """Mark ports as taken by this process (e.g. a port the caller chose itself)."""
    with _lock:
        _reserved.update(ports)


def release(ports: Iterable[int]) -> None:
    """Give reserved ports back (call after the peer that used them has stopped)."""
    with _lock:
        _reserved.difference_update(ports)


def is_reserved(port: int) -> bool:
    """True if this process reserved ``port`` and has not released it."""
    with _lock:
        return port in _reserved
