"""Structured logging: one line per event, ``key=value`` pairs after a timestamp and level.

Every module logs through the standard ``logging`` package with messages that are already
``event=name key=value …``; this module owns the line format, the set-up, the quoting of
values that come from the network (:func:`quote_value`) and the budget that keeps a flood
from turning into a flood of log lines (:class:`LogThrottle`).

A line is always one line: the formatter escapes every control character (NUL, ESC, CR,
LF, …) left in a message, so even a value that reached a log call unquoted cannot start
a forged line or send escape sequences to an operator's terminal. Quoting with
:func:`quote_value` is still what keeps ``key=value`` look-alikes inside one field.

Lines are written by :class:`BatchedStreamHandler`: on the event loop's thread a line at
INFO or below is kept for at most 20 ms and written with the others of that time (one
``write`` instead of one per line: at 100 call set-ups a second the service logs ~2,000
lines a second, and a write per line — a system call that also hands the GIL to the
writer threads — was ~10 % of the loop); a WARNING or worse, or a line from any other
thread, is written at once with whatever is pending, so lines keep their order. What a
SIGKILL can lose is the INFO lines of the last 20 ms; a normal exit flushes them
(``logging.shutdown``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TextIO

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_QUOTE_TRIGGERS = frozenset(' "=\\')


def _escape(c: str) -> str:
    """One character of a quoted value: backslash escapes for quotes, backslashes and
    whitespace controls, ``\\xNN``/``\\uNNNN`` for anything else that does not print."""
    if c in _ESCAPES:
        return _ESCAPES[c]
    if c.isprintable():
        return c
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every non-printable character (NUL, ESC, CR, LF, DEL, U+2028, lone
    surrogates from undecodable bytes…) written as an escape; printable text unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def quote_value(value: object, *, limit: int | None = None) -> str:
    """A log value that keeps the line parseable: as is when it is printable and holds no
    space, quote, backslash or ``=``; else in double quotes with backslash escapes (``\\"``,
    ``\\\\``, ``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\x00``…), so a ``key=value`` look-alike
    inside it stays inside one field. ``limit`` cuts a long value to that many characters
    (then ``...`` marks the cut). Use it for every value that comes from the network."""
    text = str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text and text.isprintable() and not any(c in _QUOTE_TRIGGERS for c in text):
        return text
    return '"' + "".join(_escape(c) for c in text) + '"'


class _Formatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # strftime once a second, not once a line
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        line = f"{self._stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
        line += f"logger={record.name} {escape_controls(record.getMessage())}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def _running_loop() -> Any:
    """The asyncio event loop running in this thread, or None. Looked up in ``sys.modules``
    rather than imported: this module sits below the sans-IO SIP core, which must not
    import asyncio (if no module imported asyncio, no loop can be running)."""
    asyncio = sys.modules.get("asyncio")
    return None if asyncio is None else asyncio._get_running_loop()


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes the event loop's INFO lines in batches.

    On a thread with a running event loop, a record below ``immediate_level`` is formatted
    and kept; the first one kept schedules :meth:`flush` ``delay`` seconds later on that
    loop, so the lines of that time go out in one ``write``. Any other record (a warning, or
    one logged where no loop runs: a writer thread, start-up) is written at once, after the
    lines kept before it, so the order of lines is the order of the calls.
    """

    def __init__(
        self, stream: TextIO, immediate_level: int = logging.WARNING, delay: float = 0.02
    ) -> None:
        super().__init__(stream)
        self.immediate_level = immediate_level
        self.delay = delay
        self._pending: list[str] = []
        self._flush_on: Any = None  # the event loop a flush waits on

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            loop = _running_loop()
            if loop is not None and record.levelno < self.immediate_level:
                self._pending.append(line)
                # a flush already waits on this loop; else (none yet, or one left on a loop
                # that was closed before running it) this loop writes them shortly
                if self._flush_on is not loop:
                    try:
                        loop.call_later(self.delay, self.flush)
                        self._flush_on = loop
                    except RuntimeError:  # a closed loop: it will not write them
                        self._write_pending()
                return
            self._pending.append(line)
            self._write_pending()
        except RecursionError:  # as logging.StreamHandler
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write the kept lines (also ``logging.shutdown``'s call at exit)."""
        self.acquire()
        try:
            self._flush_on = None
            self._write_pending()
        except Exception:  # a broken stream must not raise into the loop
            self._pending.clear()
        finally:
            self.release()

    def _write_pending(self) -> None:
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            self.stream.write(text)
        if self.stream and hasattr(self.stream, "flush"):
            self.stream.flush()


def configure_logging(level: str = "INFO") -> None:
    handler = BatchedStreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    for old in root.handlers:
        old.flush()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@dataclass
class _Window:
    started: float
    lines: int = 0
    suppressed: int = 0


class LogThrottle:
    """A budget of log lines per key (e.g. a source IP) and in total, per second.

    :meth:`admit` says whether to log one more line for ``key`` now: ``None`` means drop
    it (it is counted), a number means log it and report that many lines of this key
    suppressed since its last logged line (add ``suppressed=N`` when it is not 0). At most
    ``per_key`` lines per key and ``total`` lines over all keys pass in any one-second
    window; at most ``max_keys`` keys are remembered (the least recently seen is
    forgotten, with its count). Pure: the caller passes ``now``.
    """

    def __init__(self, per_key: int = 5, total: int = 50, max_keys: int = 4096) -> None:
        if per_key < 1 or total < 1 or max_keys < 1:
            raise ValueError("per_key, total and max_keys must be at least 1")
        self.per_key = per_key
        self.total = total
        self.max_keys = max_keys
        self.suppressed_total = 0
        """Lines dropped since start, over all keys."""
        self._keys: OrderedDict[str, _Window] = OrderedDict()
        self._all = _Window(started=float("-inf"))

    def admit(self, key: str, now: float) -> int | None:
        """``None``: suppress this line; else log it, with this many earlier lines of
        ``key`` suppressed since its last logged line."""
        window = self._keys.get(key)
        if window is None:
            if len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
            window = self._keys[key] = _Window(started=now)
        else:
            self._keys.move_to_end(key)
        if now - window.started >= 1.0:
            window.started, window.lines = now, 0
        if now - self._all.started >= 1.0:
            self._all.started, self._all.lines = now, 0
        if window.lines >= self.per_key or self._all.lines >= self.total:
            window.suppressed += 1
            self.suppressed_total += 1
            return None
        window.lines += 1
        self._all.lines += 1
        suppressed, window.suppressed = window.suppressed, 0
        return suppressed
