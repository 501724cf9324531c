"""The log line format: values from the network quoted and escaped (:func:`quote_value`),
control characters never reaching a line raw (the formatter), and the per-key budget of
lines (:class:`LogThrottle`)."""

from __future__ import annotations

import asyncio
import io
import logging
import re

import pytest

from sipdialer.logs import (
    BatchedStreamHandler,
    LogThrottle,
    _Formatter,
    escape_controls,
    quote_value,
)

NASTY_FROM = '"\x1b[31mAdmin\x00" <sip:x@evil> event=call_state state=bridged\nlevel=error\r\u2028'


def fields(line: str) -> list[tuple[str, str]]:
    """``key=value`` pairs of a line the way a logfmt reader splits them: a value is a
    double-quoted string with backslash escapes, or runs to the next space."""
    pattern = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
    return [(m.group(1), m.group(2)) for m in pattern.finditer(line)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("", '""'),
        ("two words", '"two words"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("cr\rlf", '"cr\\rlf"'),
        ("tab\t", '"tab\\t"'),
        ("\x1b[2J", '"\\x1b[2J"'),
        ("nul\x00", '"nul\\x00"'),
        ("del\x7f", '"del\\x7f"'),
        ("nel\x85", '"nel\\x85"'),
        ("sep\u2028", '"sep\\u2028"'),
        ("bad\udcff", '"bad\\udcff"'),  # an undecodable byte (surrogateescape)
        ("café", "café"),
    ],
)
def test_quote_value(value: str, expected: str) -> None:
    assert quote_value(value) == expected


def test_quote_value_limit_cuts_long_values() -> None:
    assert quote_value("x" * 300, limit=10) == "xxxxxxxxxx..."
    assert quote_value("short", limit=10) == "short"


def format_line(message: str, *args: object) -> str:
    record = logging.LogRecord("sipdialer.sip", logging.INFO, __file__, 1, message, args, None)
    return _Formatter().format(record)


def test_a_quoted_hostile_value_stays_one_field_on_one_line() -> None:
    line = format_line(
        "event=sip_invite_refused source=%s from=%s", "192.0.2.1", quote_value(NASTY_FROM)
    )
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x00" not in line
    assert "\u2028" not in line
    assert [k for k, _ in fields(line)] == ["level", "logger", "event", "source", "from"]
    assert dict(fields(line))["event"] == "sip_invite_refused"


def test_the_formatter_escapes_controls_even_in_unquoted_values() -> None:
    """Defence in depth: a module that forgot quote_value still cannot forge a line."""
    line = format_line("event=x from=%s", "a\nlevel=error event=forged\x1b[0m\x00")
    assert line.count("\n") == 0 and "\x1b" not in line and "\x00" not in line
    assert line.endswith("from=a\\nlevel=error event=forged\\x1b[0m\\x00")
    assert escape_controls("ok as is") == "ok as is"


def test_log_throttle_per_key_and_total() -> None:
    throttle = LogThrottle(per_key=2, total=3)
    assert [throttle.admit("a", 0.0) for _ in range(4)] == [0, 0, None, None]
    assert throttle.admit("b", 0.1) == 0
    assert throttle.admit("c", 0.2) is None  # the total for this second is spent
    assert throttle.admit("a", 1.0) == 2  # a new second: logged, with the two it dropped
    assert throttle.admit("c", 1.1) == 1
    assert throttle.suppressed_total == 3


def test_log_throttle_forgets_the_least_recent_key() -> None:
    throttle = LogThrottle(per_key=1, total=100, max_keys=2)
    throttle.admit("a", 0.0)
    throttle.admit("b", 0.0)
    throttle.admit("c", 0.0)  # "a" goes
    assert throttle.admit("a", 0.0) == 0


# ---- the handler: the loop's INFO lines in batches -------------------------------------------


class _Stream(io.StringIO):
    """Counts the writes it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _logger(stream: _Stream, delay: float = 0.02) -> tuple[logging.Logger, BatchedStreamHandler]:
    handler = BatchedStreamHandler(stream, delay=delay)
    handler.setFormatter(_Formatter())
    logger = logging.getLogger(f"sipdialer.test_batched.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler


def test_the_loops_info_lines_are_kept_then_written_together_in_order() -> None:
    stream = _Stream()
    logger, handler = _logger(stream, delay=3600)  # no timer fires during the test
    kept: list[int] = []

    async def main() -> None:
        for i in range(5):
            logger.info("event=one n=%d", i)
        await asyncio.sleep(0)  # later rounds of the loop: still kept
        await asyncio.sleep(0)
        kept.append(len(stream.writes))
        handler.flush()  # what the timer does

    asyncio.run(main())
    assert kept == [0]
    assert len(stream.writes) == 1
    lines = stream.getvalue().splitlines()
    assert [line.split()[-1] for line in lines] == [f"n={i}" for i in range(5)]


def test_the_loop_writes_the_kept_lines_by_itself() -> None:
    stream = _Stream()
    logger, _ = _logger(stream, delay=0)

    async def main() -> None:
        logger.info("event=kept")
        for _ in range(3):
            await asyncio.sleep(0)  # the flush timer (0 s) runs in one of these rounds

    asyncio.run(main())
    assert stream.getvalue().endswith("event=kept\n")
    assert len(stream.writes) == 1


def test_a_warning_is_written_at_once_after_the_lines_kept_before_it() -> None:
    stream = _Stream()
    logger, _ = _logger(stream)

    async def main() -> None:
        logger.info("event=first")
        logger.warning("event=second")
        assert "event=first" in stream.getvalue()
        assert stream.getvalue().index("event=first") < stream.getvalue().index("event=second")

    asyncio.run(main())


def test_without_a_running_loop_each_line_is_written_at_once() -> None:
    stream = _Stream()
    logger, _ = _logger(stream)
    logger.info("event=alone")
    assert stream.getvalue().endswith("event=alone\n")


def test_lines_kept_on_a_loop_closed_before_its_flush_are_not_lost() -> None:
    """A loop that closes with the flush still scheduled: the next loop writes the kept
    lines with its own (and ``flush``, as ``logging.shutdown`` calls it, would too)."""
    stream = _Stream()
    logger, handler = _logger(stream, delay=0)
    loop = asyncio.new_event_loop()
    loop.call_soon(logger.info, "event=kept")  # schedules the handler's flush…
    loop.call_soon(loop.stop)  # …but the loop stops before it runs
    loop.run_forever()
    loop.close()
    assert stream.getvalue() == ""

    async def later() -> None:
        logger.info("event=later")
        for _ in range(3):
            await asyncio.sleep(0)  # this loop's flush runs

    asyncio.run(later())
    assert [line.split()[-1] for line in stream.getvalue().splitlines()] == [
        "event=kept",
        "event=later",
    ]
    logger.info("event=after")
    handler.flush()
    assert stream.getvalue().endswith("event=after\n")
