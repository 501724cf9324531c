"""The call recorder: G.711 payloads of both legs → one stereo WAV on a wall-clock timeline.

Owns the recording file, the rules that place audio in time, and the write health of each
recordings directory (:class:`RecordingsDisk`). Format: RIFF/WAVE, PCM 16-bit, 8 kHz, two
channels, **A (agent) left, B (callee) right**, a plain 44-byte header followed by the
``data`` chunk.

*Cheap, bounded feeding.* Each recorded packet's payload, arrival and codec go into its
channel's :class:`PendingPayloads` (a C type, :mod:`sipdialer.rtp._fastrelay`: the payloads
back to back in one buffer, a small record per packet; the relay's C fast path copies into
it directly, :meth:`Recorder.feed_a` / :meth:`Recorder.feed_b` go through its ``feed``),
bounded at :data:`PENDING_PACKETS` (more packets than that between two flushes push the
oldest out). A payload is kept only if it is at most :data:`MAX_PAYLOAD` bytes (200 ms of
G.711; a longer one is *oversize*) and fits in the channel's :data:`PENDING_BYTES` until the
next flush (else *overflow*); a refused payload is counted and takes its place in the count
bound with no audio. That makes the recorder's memory a hard cap whatever a peer sends: at
most :data:`BUFFER_CAP` bytes of audio per call (:attr:`Recorder.buffered_bytes`). Decoding
(in C, by the queue's ``take``, with :mod:`sipdialer.rtp.g711`'s tables), placing (one
vectorised check for the usual case) and interleaving (in C) happen in
:meth:`Recorder.flush`, which the *owner* calls about every :data:`FLUSH_INTERVAL`
seconds, so this class needs no event loop and tests drive it with explicit times. A
crash loses at most the last interval (plus the hold-back and a block in flight).
Telephone-event packets never reach the recorder.

*Off the event loop.* :meth:`Recorder.flush` and :meth:`Recorder.close` block on the
disk; the :class:`~sipdialer.rtp.relay.Bridge` calls :meth:`Recorder.flush_async` from a
loop timer instead, and :meth:`Recorder.close_async` at the end. These do the CPU work
(placing, and interleaving both channels into one block, bounded by the channels' caps)
on the loop and hand the block to the process's one writer thread, which writes it and
patches the header, in order. A recorder has at most one block in flight: while it is,
no other is prepared and what is fed waits in the channels (their caps drop the excess,
counted as overflow), so a slow disk costs audio, never the relay's latency, and the
writer's queue holds at most a block and a close per recorder. A block still in flight
after :data:`WRITE_STALL` seconds stops the recording (``ETIMEDOUT``, partial). The
writer thread owns the file (``frames``, ``partial``, ``error``, ``removed``,
``finished``) until the future of :meth:`Recorder.close_async` is done; errors of its
writes reach the owner at its next :meth:`Recorder.flush_async`.

*The timeline.* Each channel is placed by arrival time relative to the recording start
(``now`` at construction): a packet's audio ends at its arrival (it was sent once
complete). Let the channel's *end* be the sample just past its last placed sample. For
each packet, in arrival order:

1. **Gap.** If the packet starts more than :data:`TOLERANCE` samples (40 ms) after the
   channel's end — or after it at all while the channel is *idle* (nothing placed yet, or
   padded with silence by a write for longer than the tolerance) — silence fills the gap
   and the packet starts at its own position. Smaller lateness (jitter, one lost packet)
   is absorbed: the packet continues the channel contiguously, so there are no clicks.
2. **Ahead.** A channel never ends more than :data:`AHEAD` samples (20 ms) after its latest
   packet's arrival: when the whole packet would take it further (a sender whose clock
   runs fast, a burst of packets released at once after a stall, payloads longer than the
   time between them), only the packet's last ``arrival − end`` samples are kept, each
   still at its own time, and the rest is dropped (counted in
   :attr:`Recorder.excess_samples`).
3. Otherwise the packet continues the channel contiguously.

So each channel's end stays within 40 ms behind and 20 ms ahead of the wall clock
whatever the arrival pattern, a channel never holds more samples than elapsed time allows
(plus the 20 ms), and the file's length is the recording's elapsed time: gaps and loss
become silence, excess is dropped. The common case (no gap, nothing ahead) is one
vectorised check and one concatenation per channel per flush. Each flush writes both
channels up to ``now − TOLERANCE`` (no later packet can land before that), padding a
channel that has received nothing with silence, so both channels always have the same
length.

*Header and disk faults.* Hand-written instead of through soundfile/libsndfile: the header
is three fixed fields of a 44-byte layout, and doing it ourselves keeps one plain file
descriptor per call (no SNDFILE handle, no cffi call per flush, no library-side
buffering): each flush is one ``write`` of the new frames (repeated if the kernel takes
part of it) and one ``pwrite`` of the header's bytes 4–44 (holding the RIFF and ``data``
sizes), so the header is valid after every flush and a killed process leaves a playable
file. When a write fails (disk full, I/O error) the file is cut back to the whole frames
that did land, the header is patched to say exactly that, the file is closed, the
recorder is marked :attr:`Recorder.partial` and the error is raised to the owner (by
:meth:`Recorder.flush_async` at its next call), which stops recording; the call goes on.
**No empty files:** a recording whose header cannot be written is removed at once (the
constructor raises), and one that ends holding no audio frame is removed at close
(:attr:`Recorder.removed`). Every failure and success is noted
in the :class:`RecordingsDisk` of the file's directory (:func:`recordings_disk`), which
``/healthz`` reports. If the process dies between the frame write and the patch,
:func:`repair_wav` sets the sizes from the file's length (cut to whole frames) and
returns the frame count.

:func:`new_recording_ref` makes the unguessable, URL-safe reference a recording is
published under (never a path).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import logging
import os
import queue
import re
import secrets
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sipdialer.rtp import _fastrelay
from sipdialer.rtp._fastrelay import PendingPayloads, configure, interleave
from sipdialer.rtp.g711 import ALAW_DECODE, ULAW_DECODE

__all__ = [
    "AHEAD",
    "BUFFER_CAP",
    "CHANNELS",
    "FLUSH_INTERVAL",
    "MAX_PAYLOAD",
    "PENDING_BYTES",
    "PENDING_PACKETS",
    "RATE",
    "TOLERANCE",
    "WRITE_STALL",
    "Channel",
    "PendingPayloads",
    "Recorder",
    "RecordingsDisk",
    "describe_os_error",
    "new_recording_ref",
    "recordings_disk",
    "repair_wav",
]

RATE = 8000
CHANNELS = 2
SAMPLE_BYTES = 2
BLOCK_ALIGN = CHANNELS * SAMPLE_BYTES
#: A packet that starts within this many samples after its channel's end continues the
#: channel; beyond it, silence fills the gap (40 ms: two 20 ms packets). Also how far
#: behind ``now`` each flush stops writing.
TOLERANCE = 320
#: How far (samples) a channel may end after its latest packet's arrival (20 ms): the
#: jitter allowance for packets that arrive early; beyond it the excess is dropped.
AHEAD = 160
#: Longest payload kept, in bytes (= G.711 samples): 200 ms. Longer ones are *oversize*.
MAX_PAYLOAD = 1600
#: Payload bytes a channel may hold between two flushes (4 s of G.711); beyond: *overflow*.
PENDING_BYTES = 32000
#: Packets a channel may hold between two flushes (5 s at 10 ms per packet).
PENDING_PACKETS = 512
#: The most audio bytes one recorder holds between flushes (:attr:`Recorder.buffered_bytes`):
#: per channel its pending payloads, plus the placed samples a flush leaves unwritten — at
#: most ``TOLERANCE + AHEAD`` of them, as no channel ends more than ``AHEAD`` past its
#: latest arrival and each flush writes up to ``now − TOLERANCE`` (65,920 bytes).
BUFFER_CAP = CHANNELS * (PENDING_BYTES + (TOLERANCE + AHEAD) * SAMPLE_BYTES)
#: How often the owner should call :meth:`Recorder.flush` (seconds).
FLUSH_INTERVAL = 1.0
#: A block handed to the writer thread that has not landed after this many seconds
#: stops the recording (:meth:`Recorder.flush_async` raises ``ETIMEDOUT``): while one is in
#: flight the recorder prepares no other, so this also bounds the next block's size.
WRITE_STALL = 5.0
HEADER_SIZE = 44
_MAX_DATA = 0xFFFFFFFF - 36

log = logging.getLogger("sipdialer.rtp")

_DECODE: dict[str, npt.NDArray[np.int16]] = {"PCMU": ULAW_DECODE, "PCMA": ALAW_DECODE}
_EMPTY = np.zeros(0, dtype=np.int16)

# the C queue decodes with these tables and enforces these bounds
configure(ULAW_DECODE.astype("=i2").tobytes(), ALAW_DECODE.astype("=i2").tobytes())
if (_fastrelay.MAX_PAYLOAD, _fastrelay.PENDING_BYTES, _fastrelay.PENDING_PACKETS) != (
    MAX_PAYLOAD,
    PENDING_BYTES,
    PENDING_PACKETS,
):  # pragma: no cover - a build of _fastrelay.c out of step with this module
    raise ImportError("sipdialer.rtp._fastrelay was built with other recorder bounds")


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


class _BlockBuffers:
    """Buffers for the interleaved blocks, reused: a block is written (on the writer
    thread) and its buffer comes back here, so the next flush of any recorder fills memory
    that is already mapped. A fresh 32 kB buffer per call-second cost the relay's process a
    page fault and a zeroed page per 4 kB (perf: 6 % of its CPU at 1,000 recorded calls).
    At most :attr:`keep` buffers wait here; list appends and pops are atomic under the GIL.
    """

    keep = 64

    def __init__(self) -> None:
        self._free: list[bytearray] = []

    def get(self, nbytes: int) -> bytearray:
        free = self._free
        while free:
            try:
                buf = free.pop()
            except IndexError:  # taken by another thread meanwhile
                break
            if len(buf) >= nbytes:
                return buf
        return bytearray(max(nbytes, RATE * BLOCK_ALIGN))  # one second at least

    def put(self, block: npt.NDArray[np.int16]) -> None:
        """Take back the buffer under a block from :meth:`get` (others are ignored)."""
        base: object = block
        while isinstance(base, np.ndarray):  # reshape → frombuffer → memoryview
            base = base.base
        buf = base.obj if isinstance(base, memoryview) else None
        if isinstance(buf, bytearray) and len(self._free) < self.keep:
            self._free.append(buf)


_BLOCKS = _BlockBuffers()


def describe_os_error(exc: BaseException) -> str:
    """``ENOSPC: No space left on device`` — an error without its file name (a recording's
    path holds its reference, which must not reach unauthenticated readers)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
        return f"{name}: {exc.strerror or os.strerror(exc.errno)}"
    return type(exc).__name__


class RecordingsDisk:
    """Write health of one recordings directory, shared by every recorder writing there.

    ``failing`` is true from a failed write (or a recording that could not be created)
    until a later write succeeds. Times are Unix seconds. Thread-safe enough for its use:
    one event loop writes, ``/healthz`` reads.
    """

    __slots__ = (
        "failing",
        "failures",
        "last_error",
        "last_error_at",
        "last_write_at",
        "partial_recordings",
    )

    def __init__(self) -> None:
        self.failing = False
        self.failures = 0
        self.partial_recordings = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_write_at: float | None = None

    def note_write(self) -> None:
        self.last_write_at = time.time()
        self.failing = False

    def note_failure(self, exc: BaseException, *, partial: bool) -> None:
        """A write failed; ``partial``: a recording lost audio (or could not start)."""
        self.failing = True
        self.failures += 1
        self.partial_recordings += partial
        self.last_error = describe_os_error(exc)
        self.last_error_at = time.time()


_disks: dict[str, RecordingsDisk] = {}
_disks_lock = threading.Lock()


def recordings_disk(directory: str | os.PathLike[str]) -> RecordingsDisk:
    """The :class:`RecordingsDisk` of ``directory`` (one per real path, made on first use)."""
    key = os.path.realpath(directory)
    with _disks_lock:
        disk = _disks.get(key)
        if disk is None:
            disk = _disks[key] = RecordingsDisk()
        return disk


class Channel:
    """One side: packets not yet placed (:attr:`payloads`), and the placed samples not yet
    written.

    Invariant: ``len(tail) == cursor - recorder._prepared`` (the frames taken for
    writing). ``payloads`` is never rebound (the relay holds it).
    """

    __slots__ = ("cursor", "excess", "idle", "payloads", "tail")

    def __init__(self) -> None:
        self.payloads = PendingPayloads()
        self.cursor = 0  # absolute sample index just past the last placed sample
        self.tail: npt.NDArray[np.int16] = _EMPTY
        self.idle = True  # nothing placed since the start or a long silence padding
        self.excess = 0  # samples dropped by the "ahead" rule

    @property
    def codecs(self) -> list[str]:
        """The codec names of the packets held, oldest first ("" for a refused one)."""
        return self.payloads.codecs

    @property
    def arrivals(self) -> list[float]:
        """The arrival times of the packets held, oldest first."""
        return self.payloads.arrivals

    @property
    def buffered_bytes(self) -> int:
        return self.payloads.nbytes + self.tail.nbytes


class Recorder:
    """Stereo WAV recorder for one call; see the module docstring for the rules.

    ``disk`` is where failures and writes are noted (default: the one of the file's
    directory, :func:`recordings_disk`). The constructor raises ``OSError`` when the file
    cannot be created with its header, and then leaves no file behind.
    """

    def __init__(self, path: Path, *, now: float, disk: RecordingsDisk | None = None) -> None:
        self.path = Path(path)
        self.start = now
        self.frames = 0  # stereo frames written (and announced in the header)
        #: True once no more audio is taken: a close was asked for, or a write failed.
        self.closed = False
        #: True once the file is closed (with :meth:`close_async`: on the writer thread).
        self.finished = False
        self._released = False
        self._prepared = 0  # frames taken for writing (== frames when no block is in flight)
        #: The owner's time the block on the writer thread was handed over (None: none).
        self._in_flight_since: float | None = None
        self._close_future: concurrent.futures.Future[None] | None = None
        #: True once a write failed: the file holds the call only up to the failure.
        self.partial = False
        #: The write error that made the recording partial.
        self.error: OSError | None = None
        #: True when the file was removed because it held no audio frame.
        self.removed = False
        self.disk = disk if disk is not None else recordings_disk(self.path.parent)
        #: Left (agent) and right (callee) channel; the relay appends to their queues.
        self.a = Channel()
        self.b = Channel()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        except OSError as exc:
            self.disk.note_failure(exc, partial=True)
            raise
        try:
            _write_all(self._fd, _header(0))
        except BaseException as exc:
            os.close(self._fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # no empty (or header-less) file is left behind
            if isinstance(exc, _PartialWrite):
                self.disk.note_failure(exc.error, partial=True)
                raise exc.error from None
            if isinstance(exc, OSError):
                self.disk.note_failure(exc, partial=True)
            raise

    # -- feeding (cheap) ---------------------------------------------------------------

    def feed_a(self, payload: bytes, codec_name: str, arrival: float) -> None:
        """Buffer one agent-side payload (``"PCMU"``/``"PCMA"``) received at ``arrival``."""
        self.a.payloads.feed(payload, codec_name, arrival)

    def feed_b(self, payload: bytes, codec_name: str, arrival: float) -> None:
        """Buffer one callee-side payload received at ``arrival``."""
        self.b.payloads.feed(payload, codec_name, arrival)

    # -- what was dropped, what is held --------------------------------------------------

    @property
    def oversize_packets(self) -> int:
        """Packets dropped because their payload was longer than :data:`MAX_PAYLOAD`."""
        return self.a.payloads.oversize + self.b.payloads.oversize

    @property
    def overflow_packets(self) -> int:
        """Packets dropped because their channel already held :data:`PENDING_BYTES`."""
        return self.a.payloads.overflow + self.b.payloads.overflow

    @property
    def excess_samples(self) -> int:
        """Samples dropped because they would have run a channel ahead of the clock."""
        return self.a.excess + self.b.excess

    @property
    def buffered_bytes(self) -> int:
        """Audio bytes held in memory now (never more than :data:`BUFFER_CAP`)."""
        return self.a.buffered_bytes + self.b.buffered_bytes

    # -- batch work --------------------------------------------------------------------

    def _position(self, t: float) -> int:
        return int((t - self.start) * RATE + 0.5)

    def _place(self, ch: Channel) -> None:
        """Decode the channel's pending packets and place them on its timeline."""
        taken = ch.payloads.take()  # decoded in C, back to back; refused packets left out
        if taken is None:
            return
        decoded = np.frombuffer(taken[0], dtype=np.int16)
        lengths = np.frombuffer(taken[1], dtype=np.int64)
        # a packet's audio ends when it arrives (it was sent once complete)
        ends = np.floor((np.frombuffer(taken[2], dtype=np.float64) - self.start) * RATE + 0.5)
        cursor = ch.cursor
        if not ch.idle:
            # The usual case, checked for all packets at once: appended back to back, no
            # packet would leave its channel more than TOLERANCE behind or AHEAD past its
            # arrival.
            lead = np.cumsum(lengths) + cursor - ends
            if lead.max() <= AHEAD and lead.min() >= -TOLERANCE:
                ch.tail = np.concatenate([ch.tail, decoded]) if len(ch.tail) else decoded
                ch.cursor = cursor + len(decoded)
                return
        pieces = [ch.tail]
        offset = 0  # index in ``decoded`` of the current packet's first sample
        run = 0  # start in ``decoded`` of the contiguous run not yet in ``pieces``
        idle = ch.idle
        excess = 0
        for e, n in zip(ends.astype(np.int64).tolist(), lengths.tolist(), strict=True):
            begin = e - n
            if begin - cursor > (0 if idle else TOLERANCE):  # a gap: silence, then the packet
                if offset > run:
                    pieces.append(decoded[run:offset])
                pieces.append(np.zeros(begin - cursor, dtype=np.int16))
                run = offset  # the packet starts a new run
                cursor = e
            elif cursor + n - e > AHEAD:  # would run ahead: keep only what fits in time
                if offset > run:
                    pieces.append(decoded[run:offset])
                keep = e - cursor
                if keep > 0:
                    run = offset + n - keep  # its last ``keep`` samples start a new run
                    cursor = e
                else:
                    keep = 0
                    run = offset + n
                excess += n - keep
            else:  # continues the run
                cursor += n
            idle = False
            offset += n
        if offset > run:
            pieces.append(decoded[run:offset])
        ch.tail = np.concatenate(pieces)
        ch.cursor = cursor
        ch.idle = idle
        ch.excess += excess

    def _take(self, upto: int) -> tuple[npt.NDArray[np.int16], int] | None:
        """Both channels' frames up to absolute frame ``upto``, silence-padded, as one
        interleaved block ``(frames, end)`` for :meth:`_commit` (None: nothing to write).

        CPU only (no IO): on the loop in :meth:`flush_async`.
        """
        n = upto - self._prepared
        if n <= 0:
            return None
        if (self._prepared + n) * BLOCK_ALIGN > _MAX_DATA:  # WAV's 4 GiB limit (~37 h)
            n = _MAX_DATA // BLOCK_ALIGN - self._prepared
            if n <= 0:  # the file is full: what comes is dropped, not held
                for ch in (self.a, self.b):
                    ch.tail = _EMPTY
                    ch.cursor = self._prepared
                return None
        end = self._prepared + n
        # both channels' first n samples, silence past a channel's end, in one C pass
        buf = _BLOCKS.get(n * BLOCK_ALIGN)
        interleave(self.a.tail[:n], self.b.tail[:n], n, buf)
        out = np.frombuffer(buf, dtype=np.int16, count=n * CHANNELS).reshape(n, CHANNELS)
        for ch in (self.a, self.b):
            ch.tail = ch.tail[n:]
            if ch.cursor < end:
                if end - ch.cursor > TOLERANCE:  # silent for a while: restart at arrival
                    ch.idle = True
                ch.cursor = end
        self._prepared = end
        return out, end

    def _commit(self, block: tuple[npt.NDArray[np.int16], int]) -> int:
        try:
            return self._write_block(block)
        finally:
            _BLOCKS.put(block[0])

    def _write_block(self, block: tuple[npt.NDArray[np.int16], int]) -> int:
        """Append a :meth:`_take` block to the file and patch the header; returns its frames.

        The file IO (on the writer thread in :meth:`flush_async`). On a write error: cut
        the file to the frames that landed, fix its header, close it (:meth:`_fail`) and
        raise.
        """
        if self._released:
            return 0
        out, end = block
        fd = self._fd
        done = 0
        try:
            done = _write_all(fd, out.data.cast("B"))  # C-contiguous: no copy
            # both sizes (RIFF at 4, data at 40) in one write of the header's bytes 4..44
            os.pwrite(fd, _header(end * BLOCK_ALIGN)[4:], 4)
        except _PartialWrite as exc:
            self._fail(exc.error, self.frames + exc.done // BLOCK_ALIGN)
            raise exc.error from None
        except OSError as exc:
            self._fail(exc, self.frames + done // BLOCK_ALIGN)
            raise
        n = end - self.frames
        self.frames = end
        self.disk.note_write()
        return n

    def _fail(self, exc: OSError, frames: int) -> None:
        """A write failed with ``frames`` whole frames in the file: make the file say
        exactly that (or remove it if that is none), close it, note the failure."""
        self.error = exc
        self.partial = True
        self.closed = True
        self.frames = frames
        size = frames * BLOCK_ALIGN
        with contextlib.suppress(OSError):  # best effort: the disk is failing
            os.ftruncate(self._fd, HEADER_SIZE + size)
            os.pwrite(self._fd, struct.pack("<I", 36 + size), 4)
            os.pwrite(self._fd, struct.pack("<I", size), 40)
        self.disk.note_failure(exc, partial=True)
        self._release()

    def _release(self) -> None:
        """Close the file (once); remove it if it holds no audio frame."""
        if self._released:
            return
        self._released = True
        try:
            os.close(self._fd)
        except OSError as exc:  # e.g. NFS reporting a failed write-back at close
            if not self.partial:
                self.partial = True
                self.error = exc
                self.disk.note_failure(exc, partial=True)
        if self.frames == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.removed = True
        self.finished = True

    def _final_block(self, now: float | None) -> tuple[npt.NDArray[np.int16], int] | None:
        self._place(self.a)
        self._place(self.b)
        end = max(self.a.cursor, self.b.cursor)
        if now is not None:
            end = max(end, self._position(now))
        return self._take(end)

    def flush(self, now: float) -> int:
        """Place what was fed and write both channels up to ``now − TOLERANCE``.

        Returns the number of frames written. The file is a valid WAV afterwards, also
        when this raises ``OSError`` (the recording is then :attr:`partial` and closed).
        Blocks on the disk: an event loop calls :meth:`flush_async` instead.
        """
        if self.closed:
            return 0
        self._place(self.a)
        self._place(self.b)
        block = self._take(self._position(now) - TOLERANCE)
        return 0 if block is None else self._commit(block)

    def close(self, now: float | None = None) -> None:
        """Write everything left, both channels to the same length, and close the file.

        With ``now`` the file is at least as long as the recording's elapsed time;
        without it, it ends with the last audio placed. A file that ends up with no
        audio frame is removed. Idempotent; raises ``OSError`` if the last write failed.
        Blocks on the disk: an event loop calls :meth:`close_async` instead.
        """
        if self.closed:
            return
        self.closed = True
        try:
            block = self._final_block(now)
            if block is not None:
                self._commit(block)
        finally:
            self._release()

    # -- off the loop ------------------------------------------------------------------

    def flush_async(self, now: float) -> None:
        """:meth:`flush` with the file IO on the process's writer thread; never blocks.

        The placing and the block's interleaving (CPU, bounded by the channels' caps) run
        here; the ``write`` and header patches run on the writer thread. While a block is
        in flight no other is prepared: what is fed meanwhile waits in the channels (whose
        caps then drop the excess, counted as overflow). Raises the ``OSError`` of a write
        that failed on the writer thread since the last call (the recording is then
        :attr:`partial` and its file closed), or ``ETIMEDOUT`` once a block has been in
        flight for :data:`WRITE_STALL` seconds (the recording is then :attr:`partial`; it
        ends where the last landed block ended). The owner then calls :meth:`close_async`.
        """
        error = self.error
        if error is not None:
            raise error
        if self.closed:
            return
        since = self._in_flight_since
        if since is not None:
            if now - since < WRITE_STALL:
                return
            exc = OSError(errno.ETIMEDOUT, "recording write stalled")
            self.partial = True
            self.error = exc
            self.disk.note_failure(exc, partial=True)
            raise exc
        self._place(self.a)
        self._place(self.b)
        block = self._take(self._position(now) - TOLERANCE)
        if block is not None:
            self._in_flight_since = now
            _writer().submit(self._commit_job, block)

    def _commit_job(self, block: tuple[npt.NDArray[np.int16], int]) -> None:
        try:
            self._commit(block)
        except OSError:
            pass  # kept in self.error; the owner's next flush_async raises it
        finally:
            self._in_flight_since = None

    def close_async(self, now: float | None = None) -> concurrent.futures.Future[None]:
        """:meth:`close` with the file IO on the writer thread (after any block in flight).

        The future is done once the file is closed (or removed): only then are
        :attr:`frames`, :attr:`partial`, :attr:`removed` and :attr:`error` final. It
        fails with the ``OSError`` of a failed last write. Idempotent (the same future).
        After a stall (see :meth:`flush_async`) nothing more is written.
        """
        if self._close_future is not None:
            return self._close_future
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._close_future = future
        block = None
        if not self.closed:
            self.closed = True
            if self.error is None:
                block = self._final_block(now)
        _writer().submit(self._close_job, block, future)
        return future

    def _close_job(
        self,
        block: tuple[npt.NDArray[np.int16], int] | None,
        future: concurrent.futures.Future[None],
    ) -> None:
        try:
            try:
                if block is not None:
                    self._commit(block)
            finally:
                self._release()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)

    @property
    def duration(self) -> float:
        """Seconds of audio written so far."""
        return self.frames / RATE


class _PartialWrite(OSError):
    """A write failed after ``done`` bytes had landed."""

    def __init__(self, done: int, error: OSError) -> None:
        super().__init__(error.errno, error.strerror)
        self.done = done
        self.error = error


def _write_all(fd: int, data: bytes | memoryview) -> int:
    """Write all of ``data`` (the kernel may take part of it per call); returns its length.

    Raises :class:`_PartialWrite` (saying how much landed) when a write fails.
    """
    view = memoryview(data)
    done = 0
    total = len(view)
    while done < total:
        try:
            written = os.write(fd, view[done:])
        except OSError as exc:
            raise _PartialWrite(done, exc) from exc
        if written <= 0:  # a regular file only does this when it cannot take more
            raise _PartialWrite(done, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        done += written
    return done


class _Writer:
    """The process's recording writer: one daemon thread running jobs in order.

    Its queue needs no bound of its own: a recorder has at most one block and one close
    in it (:meth:`Recorder.flush_async` prepares no block while one is in flight).
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]]] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[..., None], *args: object) -> None:
        self._jobs.put((job, args))

    def _run(self) -> None:
        while True:
            job, args = self._jobs.get()
            try:
                job(*args)
            except Exception:  # a job handles its own errors: this is a bug, keep going
                log.exception("event=recording_writer_error")


_the_writer: _Writer | None = None
_writer_lock = threading.Lock()


def _writer() -> _Writer:
    """The writer thread of this process (started on first use, again after a fork)."""
    global _the_writer
    w = _the_writer
    if w is None or w.pid != os.getpid():
        with _writer_lock:
            w = _the_writer
            if w is None or w.pid != os.getpid():
                w = _the_writer = _Writer()
    return w


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
