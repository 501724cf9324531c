"""Random identifiers for SIP (Call-IDs, tags, branches): unpredictable, and cheap.

``secrets.token_hex`` makes one ``getrandom`` system call per identifier; a call set-up
takes about ten (two Call-IDs, two From tags, a branch per request), and at 100 set-ups a
second those calls — each also a moment the event loop gives up the GIL — were ~5 % of
the service process (py-spy of ``bench/calls.py``). :func:`token_hex` serves the same
operating-system randomness (``os.urandom``) from a pool drawn 4 KiB at a time: as
unpredictable as one call per identifier, each byte handed out once. The pool is emptied
in a child process after ``fork`` (a child must never repeat its parent's identifiers)
and is guarded by a lock (the writer threads may ask too).
"""

from __future__ import annotations

import os
import threading

__all__ = ["token_bytes", "token_hex"]

_POOL_SIZE = 4096


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        if n > _POOL_SIZE // 4:  # a large request: its own draw
            return os.urandom(n)
        with self._lock:
            pos = self._pos
            if pos + n > len(self._data):
                self._data, pos = os.urandom(_POOL_SIZE), 0
            self._pos = pos + n
            return self._data[pos : pos + n]

    def reset(self) -> None:
        """Forget the pool (in a forked child: its bytes are the parent's too)."""
        self._lock = threading.Lock()
        self._data, self._pos = b"", 0


_pool = _Pool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.reset)


def token_bytes(nbytes: int) -> bytes:
    """``nbytes`` random bytes from the operating system's generator (via the pool)."""
    if nbytes < 0:
        raise ValueError("nbytes must not be negative")
    return _pool.take(nbytes)


def token_hex(nbytes: int) -> str:
    """``2 * nbytes`` hex digits of randomness, as ``secrets.token_hex(nbytes)``."""
    return token_bytes(nbytes).hex()
