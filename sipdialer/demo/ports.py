"""Free loopback ports for the simulated peers and the demo's service.

Owns port choice only. Ports are drawn below the kernel's ephemeral range, so that
outgoing connections do not take them meanwhile (binding port 0 would pick from that very
range, where a SIP listener's UDP port may well be busy as a TCP port):
:func:`free_port` for one port, UDP or UDP+TCP, and :func:`free_port_range` for a block
of consecutive ports for ``[sip] rtp_ports``. Ports are probed by binding and
releasing, so another process could still take one: callers retry, and the RTP allocator
skips a port that no longer binds.
"""

from __future__ import annotations

import random
import socket

__all__ = ["bindable", "ephemeral_low", "free_port", "free_port_range"]

LOWEST = 20000


def ephemeral_low() -> int:
    """The lowest port the kernel hands out for outgoing connections (ports below it
    are not taken from under us by a client socket)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def bindable(host: str, port: int, kind: int) -> bool:
    """Can ``port`` be bound on ``host`` for socket ``kind`` right now? (TCP with
    SO_REUSEADDR, as servers do, so a port in TIME_WAIT counts as free.)"""
    s = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError:
        return False
    finally:
        s.close()
    return True


def free_port(host: str = "127.0.0.1", *, tcp_too: bool = False, attempts: int = 200) -> int:
    """A UDP port (and TCP on the same number with ``tcp_too``, as a SIP listener needs)
    that binds right now, drawn at random from below the ephemeral range."""
    top = max(ephemeral_low() - 1, LOWEST + 1000)
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randrange(LOWEST, top)
        if bindable(host, port, socket.SOCK_DGRAM) and (
            not tcp_too or bindable(host, port, socket.SOCK_STREAM)
        ):
            return port
    raise OSError(f"no free port found on {host}")


def free_port_range(count: int, host: str = "127.0.0.1", *, attempts: int = 50) -> tuple[int, int]:
    """``(low, high)``: ``count`` consecutive UDP ports, every even one bindable now."""
    if count < 2:
        raise ValueError("count must be at least 2")
    top = max(ephemeral_low() - count - 1, LOWEST + 1000)
    rng = random.Random()
    for _ in range(attempts):
        low = rng.randrange(LOWEST, top) & ~1
        if all(bindable(host, p, socket.SOCK_DGRAM) for p in range(low, low + count, 2)):
            return low, low + count - 1
    raise OSError(f"no block of {count} free UDP ports found on {host}")
