"""The call recorder: G.711 payloads of both legs → one stereo WAV, time-aligned, crash-safe.

Owns the recording file. Format: RIFF/WAVE, PCM 16-bit, 8 kHz, two channels, **A (agent)
left, B (callee) right**, a plain 44-byte header followed by the ``data`` chunk.

*Cheap feeding.* :meth:`Recorder.feed_a` / :meth:`Recorder.feed_b` (and the relay, which
appends to the lists of :attr:`Recorder.a` / :attr:`Recorder.b` directly) only append
payload, codec name and arrival time to three parallel lists (no tuple per packet: none
of these objects is tracked by the garbage collector, so buffering ~50 packets per second
per side costs no GC passes). Decoding (one numpy table lookup over the
joined payloads) and writing happen in :meth:`Recorder.flush`, which the *owner* calls
about every :data:`FLUSH_INTERVAL` seconds — the :class:`~sipdialer.rtp.relay.Bridge` arms
a loop timer for it, so this class needs no event loop and tests drive it with explicit
times. A crash loses at most the last interval (plus the alignment hold-back).

*Time alignment.* Each channel is placed by arrival time relative to the recording start
(``now`` at construction), a packet's audio ending at its arrival. A packet continues its
channel contiguously while its position is within :data:`TOLERANCE` samples (40 ms) of
the channel's end — so network jitter and single lost packets never cause clicks — and a
longer silence (a real gap, a hold, a late start) is filled with zeros up to the packet's
position. The alignment error between the channels is thus bounded by the tolerance.
Each flush writes both channels up to ``now − TOLERANCE`` (no later packet can land
before that), padding a channel that has received nothing with silence, so both channels
always have the same length and the file's length follows the wall clock (gaps and loss
become silence, never a shorter file). Telephone-event packets never reach the recorder.

*Header.* Hand-written instead of through soundfile/libsndfile: the header is three fixed
fields of a 44-byte layout, and doing it ourselves keeps one plain file descriptor per
call (no SNDFILE handle, no cffi call per flush, no library-side buffering): each flush is
one ``write`` of the new frames and two 4-byte ``pwrite`` patches of the RIFF and ``data``
sizes, so the header is valid after every flush and a killed process leaves a playable
file. If the process dies between the frame write and the patch, :func:`repair_wav` sets
the sizes from the file's length (cut to whole frames) and returns the frame count.

:func:`new_recording_ref` makes the unguessable, URL-safe reference a recording is
published under (never a path).
"""

from __future__ import annotations

import os
import re
import secrets
import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sipdialer.rtp.g711 import ALAW_DECODE, ULAW_DECODE

__all__ = [
    "CHANNELS",
    "FLUSH_INTERVAL",
    "RATE",
    "TOLERANCE",
    "Channel",
    "Recorder",
    "new_recording_ref",
    "repair_wav",
]

RATE = 8000
CHANNELS = 2
SAMPLE_BYTES = 2
BLOCK_ALIGN = CHANNELS * SAMPLE_BYTES
#: A packet whose arrival is within this many samples of its channel's end is placed
#: contiguously; beyond it, silence fills the gap (40 ms: two 20 ms packets).
TOLERANCE = 320
#: How often the owner should call :meth:`Recorder.flush` (seconds).
FLUSH_INTERVAL = 1.0
HEADER_SIZE = 44
_MAX_DATA = 0xFFFFFFFF - 36

_DECODE: dict[str, npt.NDArray[np.int16]] = {"PCMU": ULAW_DECODE, "PCMA": ALAW_DECODE}
_EMPTY = np.zeros(0, dtype=np.int16)


def _header(data_bytes: int) -> bytes:
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        CHANNELS,
        RATE,
        RATE * BLOCK_ALIGN,
        BLOCK_ALIGN,
        8 * SAMPLE_BYTES,
        b"data",
        data_bytes,
    )


class Channel:
    """One side: packets not yet placed (three parallel append-only lists), and the
    placed samples not yet written.

    Invariant: ``len(tail) == cursor - recorder.frames``. The lists are never rebound
    (the relay holds their ``append``).
    """

    __slots__ = ("arrivals", "codecs", "cursor", "payloads", "tail")

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.codecs: list[str] = []
        self.arrivals: list[float] = []
        self.cursor = 0  # absolute sample index just past the last placed sample
        self.tail: npt.NDArray[np.int16] = _EMPTY

    def take(self) -> tuple[list[bytes], list[str], list[float]]:
        """Everything fed since the last call (and empty the lists in place)."""
        payloads, codecs, arrivals = self.payloads[:], self.codecs[:], self.arrivals[:]
        del self.payloads[:], self.codecs[:], self.arrivals[:]
        return payloads, codecs, arrivals


def _decode_items(
    payloads: list[bytes], codecs: list[str]
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int64]]:
    """All payloads decoded back to back, and each one's length in samples."""
    lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
    codec = codecs[0]
    table = _DECODE.get(codec)
    if table is not None and codecs.count(codec) == len(codecs):
        return table.take(np.frombuffer(b"".join(payloads), dtype=np.uint8)), lengths
    parts = []
    for payload, name in zip(payloads, codecs, strict=True):
        table = _DECODE.get(name)
        if table is None:  # not G.711: keep the time it covers, as silence
            parts.append(np.zeros(len(payload), dtype=np.int16))
        else:
            parts.append(table.take(np.frombuffer(payload, dtype=np.uint8)))
    return np.concatenate(parts), lengths


class Recorder:
    """Stereo WAV recorder for one call; see the module docstring for the rules."""

    def __init__(self, path: Path, *, now: float) -> None:
        self.path = Path(path)
        self.start = now
        self.frames = 0  # stereo frames written (and announced in the header)
        self.closed = False
        #: Left (agent) and right (callee) channel; the relay appends to their lists.
        self.a = Channel()
        self.b = Channel()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(self._fd, _header(0))
        except BaseException:
            os.close(self._fd)
            raise

    # -- feeding (cheap) ---------------------------------------------------------------

    def feed_a(self, payload: bytes, codec_name: str, arrival: float) -> None:
        """Buffer one agent-side payload (``"PCMU"``/``"PCMA"``) received at ``arrival``."""
        a = self.a
        a.payloads.append(payload)
        a.codecs.append(codec_name)
        a.arrivals.append(arrival)

    def feed_b(self, payload: bytes, codec_name: str, arrival: float) -> None:
        """Buffer one callee-side payload received at ``arrival``."""
        b = self.b
        b.payloads.append(payload)
        b.codecs.append(codec_name)
        b.arrivals.append(arrival)

    # -- batch work --------------------------------------------------------------------

    def _position(self, t: float) -> int:
        return int((t - self.start) * RATE + 0.5)

    def _place(self, ch: Channel) -> None:
        """Decode the channel's pending packets and append them to its tail."""
        if not ch.payloads:
            return
        payloads, codecs, arrivals = ch.take()
        decoded, lengths = _decode_items(payloads, codecs)
        # A packet's audio ends when it arrives (it was sent once complete).
        ends = np.floor((np.array(arrivals) - self.start) * RATE + 0.5).astype(np.int64)
        positions = ends - lengths
        cursor = ch.cursor
        contiguous = cursor + np.cumsum(lengths) - lengths
        if not (positions - contiguous > TOLERANCE).any():  # the usual case: no gap
            ch.tail = np.concatenate([ch.tail, decoded]) if len(ch.tail) else decoded
            ch.cursor = cursor + len(decoded)
            return
        pieces = [ch.tail]
        done = 0  # samples of ``decoded`` already in ``pieces``
        offset = 0
        for p, n in zip(positions.tolist(), lengths.tolist(), strict=True):
            if p - cursor > TOLERANCE:
                if offset > done:
                    pieces.append(decoded[done:offset])
                    done = offset
                pieces.append(np.zeros(p - cursor, dtype=np.int16))
                cursor = p
            cursor += n
            offset += n
        pieces.append(decoded[done:])
        ch.tail = np.concatenate(pieces)
        ch.cursor = cursor

    def _write(self, upto: int) -> int:
        """Write both channels up to absolute frame ``upto``, padding with silence."""
        n = upto - self.frames
        if n <= 0:
            return 0
        if (self.frames + n) * BLOCK_ALIGN > _MAX_DATA:  # WAV's 4 GiB limit (~37 h)
            n = _MAX_DATA // BLOCK_ALIGN - self.frames
            if n <= 0:
                return 0
        out = np.empty((n, CHANNELS), dtype=np.int16)
        for col, ch in enumerate((self.a, self.b)):
            k = min(n, len(ch.tail))
            if k:
                out[:k, col] = ch.tail[:k]
                ch.tail = ch.tail[k:]
            if k < n:
                out[k:, col] = 0
            if ch.cursor < self.frames + n:
                ch.cursor = self.frames + n
        os.write(self._fd, out.data)  # C-contiguous: written from its buffer, no copy
        self.frames += n
        size = self.frames * BLOCK_ALIGN
        os.pwrite(self._fd, struct.pack("<I", 36 + size), 4)
        os.pwrite(self._fd, struct.pack("<I", size), 40)
        return n

    def flush(self, now: float) -> int:
        """Decode what was fed and write both channels up to ``now − TOLERANCE``.

        Returns the number of frames written. The file is a valid WAV afterwards.
        """
        if self.closed:
            return 0
        self._place(self.a)
        self._place(self.b)
        return self._write(self._position(now) - TOLERANCE)

    def close(self, now: float | None = None) -> None:
        """Write everything left, both channels to the same length, and close the file.

        With ``now`` the file is at least as long as the recording's elapsed time;
        without it, it ends with the last audio placed. Idempotent.
        """
        if self.closed:
            return
        try:
            self._place(self.a)
            self._place(self.b)
            end = max(self.a.cursor, self.b.cursor)
            if now is not None:
                end = max(end, self._position(now))
            self._write(end)
        finally:
            self.closed = True
            os.close(self._fd)

    @property
    def duration(self) -> float:
        """Seconds of audio written so far."""
        return self.frames / RATE


def repair_wav(path: Path) -> int:
    """Fix the RIFF and ``data`` sizes of a WAV cut short by a crash; returns its frames.

    The ``data`` chunk is taken to run to the end of the file (as the recorder writes
    it); a trailing partial frame is cut off. ``ValueError`` if ``path`` is no WAV.
    """
    with open(path, "r+b") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise ValueError(f"{path}: not a RIFF/WAVE file")
        size = os.fstat(f.fileno()).st_size
        block_align = 0
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"fmt ":
                fmt = f.read(16)
                if len(fmt) < 16:
                    break
                block_align = struct.unpack_from("<H", fmt, 12)[0]
            elif chunk_id == b"data":
                if not block_align:
                    raise ValueError(f"{path}: data chunk before fmt chunk")
                start = pos + 8
                frames = (size - start) // block_align
                data_bytes = frames * block_align
                f.truncate(start + data_bytes)
                f.seek(pos + 4)
                f.write(struct.pack("<I", data_bytes))
                f.seek(4)
                f.write(struct.pack("<I", start + data_bytes - 8))
                return frames
            pos += 8 + chunk_size + (chunk_size & 1)
        raise ValueError(f"{path}: no data chunk")


#: A recording reference: ``secrets.token_urlsafe(16)`` makes 22 of these characters;
#: up to 64 are accepted so that longer references stay servable.
RECORDING_REF = re.compile(r"[A-Za-z0-9_-]{16,64}", re.ASCII)


def new_recording_ref() -> str:
    """A fresh recording reference: 128 random bits, URL-safe base64 (22 chars, no ``/``)."""
    return secrets.token_urlsafe(16)
