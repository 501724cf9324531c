"""Structured logging: one line per event, ``key=value`` pairs after a timestamp and level.

Every module logs through the standard ``logging`` package with messages that are already
``event=name key=value …``; this module only owns the line format and the set-up.
"""

from __future__ import annotations

import logging
import sys
import time


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
        line += f"logger={record.name} {record.getMessage()}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info))
        return line


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def quote_value(value: object) -> str:
    """A log value that keeps the line parseable (quoted when it has spaces or quotes)."""
    text = str(value)
    if text and not any(c in text for c in ' "=\r\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
