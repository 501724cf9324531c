"""What to answer to a GET or HEAD of a file: conditional requests (RFC 9110 §13) and byte
ranges (RFC 9110 §14), decided from the request headers, the file's size and its validators.

Pure: no I/O, no aiohttp. :func:`plan_download` returns a :class:`Plan` — the status and the
part of the file to send — and the HTTP layer only carries it out. Written here instead of
using aiohttp's ``FileResponse``, which (3.14) applies a Range even when an ``If-Range``
entity tag no longer matches (a recording grows while its call runs, so a resumed download
would splice two versions), answers 416 instead of ignoring an invalid or multi-range
``Range``, and serves the whole file for the unsatisfiable ``bytes=-0``.

Rules, in RFC 9110 §13.2.2 order:

1. ``If-Match`` (strong comparison; ``*`` matches) fails → 412; else, without If-Match,
   ``If-Unmodified-Since`` older than the file → 412.
2. ``If-None-Match`` (weak comparison) matches → 304; else, without If-None-Match,
   ``If-Modified-Since`` not older than the file → 304.
3. GET only (HEAD ignores Range, as §14.2 requires): a ``Range`` is honoured when there is
   no ``If-Range`` or it matches (an entity tag compared strongly, or a date equal to
   Last-Modified). A syntactically invalid Range, another unit than ``bytes``, or one with
   several ranges is ignored (200, the whole file — §14.2 allows it). One range: 206 with
   ``Content-Range``; not satisfiable (starts at or past the end, or ``bytes=-0``) → 416
   with ``Content-Range: bytes */SIZE``.

Invalid dates in the conditional headers are ignored, as §13.1.3/§13.1.4 require.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

__all__ = ["Plan", "Validators", "http_date", "plan_download"]

_ETAG = re.compile(r'\s*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|\Z)', re.ASCII)
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)
_UNIT = re.compile(r"bytes=", re.ASCII | re.IGNORECASE)
_MAX_DIGITS = 19  # positions beyond 10^19 bytes are nonsense; refuse to parse them


@dataclass(frozen=True)
class Validators:
    """A file's validators: ``etag`` is a strong entity tag with its quotes."""

    etag: str
    last_modified: int  # whole Unix seconds

    @classmethod
    def of(cls, size: int, mtime_ns: int) -> Validators:
        return cls(etag=f'"{mtime_ns:x}-{size:x}"', last_modified=mtime_ns // 1_000_000_000)


@dataclass(frozen=True)
class Plan:
    """What to answer: ``status``, and for 200/206 which bytes (``start``, ``length``)."""

    status: int
    start: int = 0
    length: int = 0
    content_range: str | None = None

    @property
    def sends_file(self) -> bool:
        return self.status in (200, 206)


def http_date(seconds: int) -> str:
    """IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return format_datetime(datetime.fromtimestamp(seconds, tz=UTC), usegmt=True)


def _parse_date(text: str | None) -> int | None:
    if not text:
        return None
    try:
        dt = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:
        return int(dt.timestamp())
    except (OverflowError, OSError, ValueError):
        return None


def _etags(text: str) -> list[tuple[bool, str]] | None:
    """``[(weak, opaque)]`` of an If-Match / If-None-Match value; None for ``*``;
    an empty list when the value is malformed (matches nothing)."""
    text = text.strip()
    if text == "*":
        return None
    tags: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(text):
        m = _ETAG.match(text, pos)
        if m is None or m.end() == pos:
            return []
        tags.append((m.group(1) is not None, m.group(2)))
        pos = m.end()
    return tags


def _opaque(etag: str) -> str:
    return etag.strip('"')


def _matches(header: str, etag: str, *, weak: bool) -> bool:
    tags = _etags(header)
    if tags is None:
        return True
    ours = _opaque(etag)
    return any(value == ours and (weak or not is_weak) for is_weak, value in tags)


def _if_range_holds(value: str, v: Validators) -> bool:
    value = value.strip()
    if value.startswith(('"', "W/")):
        tags = _etags(value)
        # None is "*", which is no entity tag: If-Range needs exactly one strong tag
        return (
            tags is not None and len(tags) == 1 and not tags[0][0] and tags[0][1] == _opaque(v.etag)
        )
    date = _parse_date(value)
    return date is not None and date == v.last_modified


def _single_range(header: str, size: int) -> Plan | None:
    """The plan for a ``Range`` value, or None to ignore it (serve the whole file)."""
    unit = _UNIT.match(header)
    if unit is None:
        return None
    specs: list[tuple[int, int]] = []  # (first, last) inclusive, already clamped
    satisfiable = 0
    any_spec = False
    for raw in header[unit.end() :].split(","):
        part = raw.strip(" \t")
        if not part:
            continue  # RFC 9110 list syntax allows empty elements
        m = _RANGE_SPEC.fullmatch(part)
        if m is None or (not m.group(1) and not m.group(2)):
            return None
        if len(m.group(1)) > _MAX_DIGITS or len(m.group(2)) > _MAX_DIGITS:
            return None
        any_spec = True
        if m.group(1):
            first = int(m.group(1))
            last = int(m.group(2)) if m.group(2) else None
            if last is not None and last < first:
                return None  # invalid range-spec: ignore the whole header
            if first < size:
                satisfiable += 1
                specs.append((first, min(last if last is not None else size - 1, size - 1)))
        else:
            suffix = int(m.group(2))
            if suffix > 0 and size > 0:
                satisfiable += 1
                specs.append((max(size - suffix, 0), size - 1))
    if not any_spec:
        return None
    if satisfiable == 0:
        return Plan(416, content_range=f"bytes */{size}")
    if len(specs) > 1 or size == 0:
        return None  # several ranges: the whole file (no multipart/byteranges)
    first, last = specs[0]
    return Plan(206, first, last - first + 1, f"bytes {first}-{last}/{size}")


def plan_download(method: str, headers: Mapping[str, str], size: int, v: Validators) -> Plan:
    """Decide the answer to ``method`` (GET or HEAD) of a file of ``size`` bytes."""
    full = Plan(200, 0, size)
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not _matches(if_match, v.etag, weak=False):
            return Plan(412)
    else:
        since = _parse_date(headers.get("If-Unmodified-Since"))
        if since is not None and v.last_modified > since:
            return Plan(412)
    if_none = headers.get("If-None-Match")
    if if_none is not None:
        if _matches(if_none, v.etag, weak=True):
            return Plan(304)
    else:
        since = _parse_date(headers.get("If-Modified-Since"))
        if since is not None and v.last_modified <= since:
            return Plan(304)
    if method != "GET":
        return full
    rng = headers.get("Range")
    if rng is None:
        return full
    if_range = headers.get("If-Range")
    if if_range is not None and not _if_range_holds(if_range, v):
        return full
    return _single_range(rng, size) or full
