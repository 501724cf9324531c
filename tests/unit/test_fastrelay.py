"""The C recorder queue and interleaver (``sipdialer.rtp._fastrelay``), without sockets.

The relay's fast path itself is tested on loopback (tests/service/test_relay_fastpath.py);
the recorder's rules through :class:`~sipdialer.rtp.recorder.Recorder` (test_recorder.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from sipdialer.rtp import g711
from sipdialer.rtp._fastrelay import PendingPayloads, interleave
from sipdialer.rtp.recorder import MAX_PAYLOAD, PENDING_BYTES, PENDING_PACKETS


def taken(q: PendingPayloads) -> tuple[np.ndarray, list[int], list[float]]:
    out = q.take()
    assert out is not None
    pcm, lengths, arrivals = out
    return (
        np.frombuffer(pcm, dtype=np.int16),
        np.frombuffer(lengths, dtype=np.int64).tolist(),
        np.frombuffer(arrivals, dtype=np.float64).tolist(),
    )


def test_take_decodes_each_payload_with_its_codec_and_empties_the_queue() -> None:
    q = PendingPayloads()
    codes = bytes(range(256))
    q.feed(codes, "PCMU", 1.0)
    q.feed(codes[:7], "PCMA", 2.0)
    q.feed(b"\x01\x02\x03", "G729", 3.0)  # not G.711: its time, silent
    assert len(q) == 3 and q.nbytes == 266 and q.room == PENDING_BYTES - 266
    assert q.codecs == ["PCMU", "PCMA", "?"] and q.arrivals == [1.0, 2.0, 3.0]
    pcm, lengths, arrivals = taken(q)
    assert lengths == [256, 7, 3] and arrivals == [1.0, 2.0, 3.0]
    assert pcm[:256].tolist() == g711.ULAW_DECODE.tolist()
    assert pcm[256:263].tolist() == g711.ALAW_DECODE[:7].tolist()
    assert pcm[263:].tolist() == [0, 0, 0]
    assert len(q) == 0 and q.room == PENDING_BYTES and q.take() is None


def test_refused_payloads_are_counted_hold_their_place_and_carry_no_audio() -> None:
    q = PendingPayloads()
    q.feed(b"\xff" * (MAX_PAYLOAD + 1), "PCMU", 1.0)  # oversize
    q.feed(b"\xff" * 160, "PCMU", 1.02)
    q.refuse(200)  # what the relay's Python path does when the room is gone
    assert (q.oversize, q.overflow, len(q)) == (1, 1, 3)
    assert list(q) == [b"", b"\xff" * 160, b""] and q.codecs == ["", "PCMU", ""]
    pcm, lengths, arrivals = taken(q)
    assert lengths == [160] and arrivals == [1.02] and len(pcm) == 160


def test_the_byte_bound_refuses_newcomers_until_the_next_take() -> None:
    q = PendingPayloads()
    for i in range(PENDING_BYTES // 1600):
        q.feed(b"\x00" * 1600, "PCMU", float(i))
    assert q.room == 0
    q.feed(b"\x00", "PCMU", 99.0)
    assert q.overflow == 1 and q.nbytes == PENDING_BYTES
    q.take()
    q.feed(b"\x00" * 1600, "PCMU", 100.0)
    assert q.overflow == 1 and q.nbytes == 1600


def test_the_count_bound_pushes_the_oldest_out() -> None:
    q = PendingPayloads()
    for i in range(PENDING_PACKETS + 30):
        q.feed(bytes([i % 256]), "PCMA", float(i))
    assert len(q) == PENDING_PACKETS
    assert q.arrivals[0] == 30.0 and q.arrivals[-1] == PENDING_PACKETS + 29.0
    assert next(iter(q)) == bytes([30])
    pcm, lengths, arrivals = taken(q)
    assert len(lengths) == PENDING_PACKETS and arrivals[0] == 30.0
    assert pcm[0] == g711.ALAW_DECODE[30]


def test_feed_checks_its_arguments() -> None:
    q = PendingPayloads()
    with pytest.raises(TypeError):
        q.feed("text", "PCMU", 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        q.feed(b"\x00", "PCMU", "soon")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PendingPayloads(5)  # type: ignore[call-arg]
    assert len(q) == 0


def test_interleave_pads_the_shorter_channel_with_silence() -> None:
    left = np.arange(1, 6, dtype=np.int16)
    right = np.arange(-1, -4, -1, dtype=np.int16)
    out = np.frombuffer(interleave(left, right, 6), dtype=np.int16).reshape(6, 2)
    assert out[:, 0].tolist() == [1, 2, 3, 4, 5, 0]
    assert out[:, 1].tolist() == [-1, -2, -3, 0, 0, 0]
    assert interleave(left, right, 0) == b""
    assert np.frombuffer(interleave(left, right, 2), dtype=np.int16).tolist() == [1, -1, 2, -2]
    with pytest.raises(ValueError):
        interleave(left, right, -1)


def test_interleave_into_a_buffer_reuses_it() -> None:
    left = np.array([1, 2], dtype=np.int16)
    right = np.array([3], dtype=np.int16)
    buf = bytearray(b"\x7f" * 12)
    assert interleave(left, right, 2, buf) is buf
    assert np.frombuffer(buf, dtype=np.int16).tolist() == [1, 3, 2, 0, 0x7F7F, 0x7F7F]
    with pytest.raises(ValueError):
        interleave(left, right, 4, buf)  # 16 bytes do not fit in 12
    with pytest.raises(BufferError):
        interleave(left, right, 1, b"read-only")
