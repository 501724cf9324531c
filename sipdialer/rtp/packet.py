"""Minimal RTP (RFC 3550) header access: read the fixed header, find the payload, rewrite.

Owns the wire layout of an RTP packet and nothing else: :func:`parse` for code off the
hot path and tests, :func:`payload_bounds` for the header length including CSRCs and a
header extension (and trailing padding), :func:`rewrite` to patch marker/PT, sequence,
timestamp and SSRC of a ``bytearray`` in place with one ``struct.pack_into``, and
:func:`build` to make a packet with a plain 12-byte header. Malformed input (short, version
≠ 2, lengths that overrun the packet) gives ``None`` / ``-1``, never an exception, so the
relay can drop it. The relay inlines the common case (``b0 == 0x80``, 12-byte header)
instead of calling these per packet; the layout constants below are shared with it.

Hand-written: the fixed header is 12 bytes and one ``struct`` call; RTP libraries
(e.g. aiortc's) carry RTCP/SRTP/jitter-buffer machinery the relay does not want per packet.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "REWRITE",
    "RtpHeader",
    "build",
    "parse",
    "payload_bounds",
    "rewrite",
]

HEADER_SIZE = 12
#: The fixed header: V/P/X/CC byte, M/PT byte, sequence, timestamp, SSRC.
HEADER = struct.Struct("!BBHII")
#: Bytes 1..11 of the fixed header (M/PT, sequence, timestamp, SSRC), packed at offset 1.
REWRITE = struct.Struct("!BHII")


class RtpHeader(NamedTuple):
    version: int
    padding: bool
    extension: bool
    csrc_count: int
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    header_length: int  # fixed header + CSRCs + extension
    payload_end: int  # len(packet) minus padding


def payload_bounds(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """``(start, end)`` of the payload, or ``(-1, -1)`` for a malformed packet."""
    n = len(data)
    if n < HEADER_SIZE:
        return -1, -1
    b0 = data[0]
    if b0 & 0xC0 != 0x80:
        return -1, -1
    start = HEADER_SIZE + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if start + 4 > n:
            return -1, -1
        start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
    end = n
    if b0 & 0x20:
        end -= data[n - 1]
    if start > end or start > n:
        return -1, -1
    return start, end


def parse(data: bytes | bytearray | memoryview) -> RtpHeader | None:
    """The header fields of ``data``, or ``None`` if it is no valid RTP packet."""
    start, end = payload_bounds(data)
    if start < 0:
        return None
    b0, b1, seq, ts, ssrc = HEADER.unpack_from(data)
    return RtpHeader(
        version=b0 >> 6,
        padding=bool(b0 & 0x20),
        extension=bool(b0 & 0x10),
        csrc_count=b0 & 0x0F,
        marker=bool(b1 & 0x80),
        payload_type=b1 & 0x7F,
        sequence=seq,
        timestamp=ts,
        ssrc=ssrc,
        header_length=start,
        payload_end=end,
    )


def rewrite(
    buf: bytearray, *, payload_type: int, sequence: int, timestamp: int, ssrc: int, marker: bool
) -> None:
    """Patch marker, payload type, sequence, timestamp and SSRC of ``buf`` in place."""
    REWRITE.pack_into(
        buf,
        1,
        (0x80 if marker else 0) | (payload_type & 0x7F),
        sequence & 0xFFFF,
        timestamp & 0xFFFFFFFF,
        ssrc & 0xFFFFFFFF,
    )


def build(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    *,
    marker: bool = False,
) -> bytes:
    """A version-2 RTP packet with a 12-byte header (no CSRC, extension or padding)."""
    return (
        HEADER.pack(
            0x80,
            (0x80 if marker else 0) | (payload_type & 0x7F),
            sequence & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            ssrc & 0xFFFFFFFF,
        )
        + payload
    )
