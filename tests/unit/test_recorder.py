"""The stereo WAV recorder: the wall-clock timeline (gaps, excess, oversize, bounded memory),
crash safety, repair, and disk faults (header always true, no empty files); the same
through the writer thread (``flush_async`` / ``close_async``), and a write that stalls.

The recorder needs no event loop: tests feed payloads with explicit arrival times and
call ``flush(now)`` / ``close(now)`` the way the bridge's timer does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import re
import select
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sipdialer.rtp import g711, recorder
from sipdialer.rtp.recorder import (
    AHEAD,
    BUFFER_CAP,
    PENDING_BYTES,
    PENDING_PACKETS,
    TOLERANCE,
    WRITE_STALL,
    Recorder,
    RecordingsDisk,
    describe_os_error,
    new_recording_ref,
    recordings_disk,
    repair_wav,
)

T0 = 1000.0  # the loop time the recording starts at
FRAME = 160


def tone(hz: float, seconds: float, amp: float = 8000.0) -> np.ndarray:
    t = np.arange(round(seconds * 8000)) / 8000
    return (np.sin(2 * np.pi * hz * t) * amp).astype(np.int16)


def packets(samples: np.ndarray, codec: str = "PCMU") -> list[bytes]:
    coded = g711.encode(samples, codec)
    return [coded[i : i + FRAME] for i in range(0, len(coded), FRAME)]


def feed(
    rec: Recorder,
    side: str,
    payloads: list[bytes],
    *,
    start: float = 0.0,
    jitter: float = 0.0,
    skip: set[int] | None = None,
    codec: str = "PCMU",
    rng: random.Random | None = None,
) -> None:
    rng = rng or random.Random(1)
    fn = rec.feed_a if side == "a" else rec.feed_b
    for i, p in enumerate(payloads):
        if skip and i in skip:
            continue
        # a packet is sent when its 20 ms are complete, then travels a while
        arrival = T0 + start + (i + 1) * 0.02 + 0.005 + rng.uniform(0, jitter)
        fn(p, codec, arrival)


def peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x.astype(float) * np.hanning(len(x))))
    return float(np.argmax(spec) * 8000 / len(x))


def longest_zero_run(x: np.ndarray) -> int:
    z = np.concatenate([[0], (x == 0).astype(np.int8), [0]])
    d = np.diff(z)
    starts, ends = np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]
    return int((ends - starts).max()) if len(starts) else 0


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(float) ** 2))) if len(x) else 0.0


def test_two_tones_left_and_right(tmp_path: Path) -> None:
    path = tmp_path / "r.wav"
    rec = Recorder(path, now=T0)
    feed(rec, "a", packets(tone(440, 3.0)), jitter=0.008, rng=random.Random(2))
    feed(rec, "b", packets(tone(1000, 3.0)), jitter=0.008, rng=random.Random(3))
    for s in (1.0, 2.0, 3.0):
        rec.flush(T0 + s)  # (arrival order vs flush order does not matter here)
    rec.close(T0 + 3.03)
    data, rate = soundfile.read(path, dtype="int16")
    info = soundfile.info(path)
    assert rate == 8000 and info.channels == 2 and info.subtype == "PCM_16"
    assert abs(len(data) - 3.03 * 8000) <= FRAME
    left, right = data[:, 0], data[:, 1]
    assert abs(peak_hz(left[800:-800]) - 440) < 3
    assert abs(peak_hz(right[800:-800]) - 1000) < 3
    # jitter of a few ms creates no inserted silence (clicks) inside the tone
    assert longest_zero_run(left[400:-400]) < 4 and longest_zero_run(right[400:-400]) < 4
    # each side is a contiguous copy of what was sent, starting at its first arrival
    # (within the tolerance of the start, the first packet starts the channel)
    sent = g711.decode_ulaw(g711.encode_ulaw(tone(440, 3.0)))
    lags = [k for k in range(0, 105) if np.array_equal(left[k : k + 8000], sent[:8000])]
    assert len(lags) == 1


def test_one_second_gap_becomes_silence_not_a_shorter_channel(tmp_path: Path) -> None:
    path = tmp_path / "gap.wav"
    rec = Recorder(path, now=T0)
    n = 150  # 3 s of packets
    feed(rec, "a", packets(tone(440, 3.0)))
    feed(rec, "b", packets(tone(1000, 3.0)), skip=set(range(50, 100)))  # 1.0 s..2.0 s lost
    rec.flush(T0 + 1.5)
    rec.flush(T0 + 2.5)
    elapsed = n * 0.02 + 0.01
    rec.close(T0 + elapsed)
    data, _ = soundfile.read(path, dtype="int16")
    assert abs(len(data) - elapsed * 8000) <= FRAME
    right = data[:, 1]
    # the gap sits where it happened in time (±tolerance), the rest is still aligned
    gap = right[int(1.1 * 8000) : int(1.95 * 8000)]
    assert rms(gap) == 0.0
    assert rms(right[int(0.2 * 8000) : int(0.9 * 8000)]) > 3000
    after = right[int(2.1 * 8000) : int(2.9 * 8000)]
    assert rms(after) > 3000 and abs(peak_hz(after) - 1000) < 5
    assert rms(data[int(1.1 * 8000) : int(1.95 * 8000), 0]) > 3000  # A went on meanwhile
    # B after the gap starts at its arrival time, aligned with A (same offset as before)
    first_after = np.nonzero(right[int(1.5 * 8000) :])[0][0] + int(1.5 * 8000)
    assert abs(first_after - int((2.0 + 0.005) * 8000)) <= 2


def test_isolated_packet_loss_keeps_length_and_alignment_bounded(tmp_path: Path) -> None:
    path = tmp_path / "loss.wav"
    rec = Recorder(path, now=T0)
    feed(rec, "a", packets(tone(440, 4.0)), skip=set(range(5, 200, 7)))  # ~14 % loss
    feed(rec, "b", packets(tone(1000, 4.0)))
    rec.close(T0 + 4.0)
    data, _ = soundfile.read(path, dtype="int16")
    assert abs(len(data) - 4.0 * 8000) <= FRAME
    assert rms(data[-2000:-400, 0]) > 3000  # A's audio runs until the end


def test_late_start_of_one_side(tmp_path: Path) -> None:
    path = tmp_path / "late.wav"
    rec = Recorder(path, now=T0)
    feed(rec, "a", packets(tone(440, 2.0)))
    feed(rec, "b", packets(tone(1000, 1.0)), start=1.0)
    rec.flush(T0 + 1.0)
    rec.close(T0 + 2.02)
    data, _ = soundfile.read(path, dtype="int16")
    right = data[:, 1]
    assert rms(right[: int(0.95 * 8000)]) == 0.0
    assert rms(right[int(1.1 * 8000) : int(1.9 * 8000)]) > 3000


def test_header_is_valid_after_a_flush_without_close(tmp_path: Path) -> None:
    path = tmp_path / "crash.wav"
    rec = Recorder(path, now=T0)
    feed(rec, "a", packets(tone(440, 2.0)))
    feed(rec, "b", packets(tone(1000, 2.0)))
    assert soundfile.info(path).frames == 0  # valid, empty, right after creation
    written = rec.flush(T0 + 2.0)
    assert written == 2 * 8000 - TOLERANCE
    # the process "crashes" here: no close()
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == 8000 and data.shape == (written, 2)
    assert abs(peak_hz(data[400:, 0]) - 440) < 3 and abs(peak_hz(data[400:, 1]) - 1000) < 3
    assert rec.duration == pytest.approx(written / 8000)
    rec.close(T0 + 2.0)
    # the last packet arrived at 2.005 s (see feed): each channel starts and ends where
    # its packets arrived, so the file runs to it
    assert soundfile.info(path).frames == round(2.005 * 8000)


def test_repair_wav_fixes_zeroed_sizes_and_partial_frame(tmp_path: Path) -> None:
    path = tmp_path / "broken.wav"
    rec = Recorder(path, now=T0)
    feed(rec, "a", packets(tone(440, 1.0)))
    feed(rec, "b", packets(tone(1000, 1.0)))
    rec.close(T0 + 1.0)
    frames = soundfile.info(path).frames
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(b"\x00\x00\x00\x00")
        f.seek(40)
        f.write(b"\x00\x00\x00\x00")
        f.seek(0, 2)
        f.write(b"\x01\x02\x03")  # half a frame written when the process died
    info_before = None
    try:
        info_before = soundfile.info(path).frames
    except RuntimeError:
        pass
    assert info_before in (None, 0)
    assert repair_wav(path) == frames
    raw = path.read_bytes()
    assert len(raw) == 44 + frames * 4
    assert struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8
    assert struct.unpack_from("<I", raw, 40)[0] == frames * 4
    data, _ = soundfile.read(path, dtype="int16")
    assert data.shape == (frames, 2)
    assert repair_wav(path) == frames  # idempotent


def test_repair_wav_rejects_other_files(tmp_path: Path) -> None:
    p = tmp_path / "x.wav"
    p.write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError):
        repair_wav(p)


def test_mixed_codecs_and_unknown_codec(tmp_path: Path) -> None:
    path = tmp_path / "mixed.wav"
    rec = Recorder(path, now=T0)
    x = tone(440, 1.0)
    ulaw, alaw = packets(x, "PCMU"), packets(x, "PCMA")
    for i in range(50):
        codec = "PCMA" if i % 2 else "PCMU"
        rec.feed_a((alaw if i % 2 else ulaw)[i], codec, T0 + (i + 1) * 0.02)
    rec.feed_b(b"\x00" * 160, "G729", T0 + 0.02)  # not G.711: kept as silence
    rec.close(T0 + 1.02)
    data, _ = soundfile.read(path, dtype="int16")
    left = data[:8000, 0].astype(int)
    assert np.max(np.abs(left - x)) < 300
    assert rms(data[:, 1]) == 0.0


def test_close_without_now_ends_with_last_audio(tmp_path: Path) -> None:
    path = tmp_path / "end.wav"
    rec = Recorder(path, now=T0)
    rec.feed_a(b"\xff" * 160, "PCMU", T0)
    rec.feed_b(b"\xff" * 160, "PCMU", T0)
    rec.close()
    rec.close()  # idempotent
    assert rec.flush(T0 + 5) == 0
    assert soundfile.info(path).frames == 160


def test_new_recording_ref() -> None:
    refs = {new_recording_ref() for _ in range(1000)}
    assert len(refs) == 1000
    for ref in list(refs)[:50]:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", ref)


# -- bounded by time, not by what is sent (issue 11 point 2) ----------------------------------


def test_oversize_and_flooded_payloads_are_dropped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "flood.wav"
    rec = Recorder(path, now=T0)
    peak = 0
    for i in range(300):  # 3 s: 100 packets/s of 8,000 then of 65,000 bytes on B
        t = T0 + (i + 1) * 0.01
        rec.feed_b(b"\x00" * (8000 if i < 150 else 65000), "PCMU", t)
        if i % 2:
            rec.feed_a(b"\xff" * 160, "PCMU", t)
        peak = max(peak, rec.buffered_bytes)
        if i % 100 == 99:
            rec.flush(t)
    assert rec.oversize_packets == 300 and rec.overflow_packets == 0
    # 2,000 packets of 1,000 bytes (125 ms each) in 1 s: not oversize, but 16 s of audio
    for i in range(2000):
        rec.feed_b(b"\x00" * 1000, "PCMU", T0 + 3.0 + (i + 1) * 0.0005)
        peak = max(peak, rec.buffered_bytes)
    assert rec.overflow_packets == 2000 - PENDING_BYTES // 1000  # the rest did not fit
    held = sum(len(p) for ch in (rec.a, rec.b) for p in ch.payloads)
    held += rec.a.tail.nbytes + rec.b.tail.nbytes
    assert rec.buffered_bytes == held and peak <= BUFFER_CAP
    rec.close(T0 + 4.0)
    data, _ = soundfile.read(path, dtype="int16")
    assert len(data) == 4 * 8000  # the call's length, whatever was sent
    right = data[:, 1]
    assert rms(right[: 3 * 8000 - 200]) == 0.0  # the oversize blast left nothing
    # what fitted of the 1,000-byte packets covers (at most) the time they arrived in
    assert np.count_nonzero(right[3 * 8000 - 200 :]) <= 8000 + AHEAD


def test_pending_packets_are_bounded_in_number(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "many.wav", now=T0)
    for i in range(PENDING_PACKETS + 100):  # tiny packets, thousands a second
        rec.feed_a(b"\xff", "PCMU", T0 + i * 0.0001)
    assert len(rec.a.payloads) == len(rec.a.codecs) == len(rec.a.arrivals) == PENDING_PACKETS
    assert rec.a.arrivals[0] == T0 + 100 * 0.0001  # the oldest went, all three in step
    rec.close(T0 + 1.0)


@dataclass
class Stream:
    """One sender: each packet's arrival and payload; ``held`` packets came late in a burst."""

    arrivals: list[float]
    payloads: list[bytes]
    held: set[int]


MARK = g711.encode_ulaw(np.full(FRAME, 8000, dtype=np.int16))
QUIET = b"\xff" * FRAME


def stream(
    seconds: float,
    *,
    period: float = 0.02,
    stalls: float = 0.0,
    every: float = 7.0,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> Stream:
    """A sender of 20 ms packets every ``period`` s (0.0199: a clock 0.5 % fast), stalled
    for ``stalls`` s every ``every`` s (what was due is then sent at once), with network
    delay ``uniform(0, jitter)`` (never reordering); two marker packets every 25."""
    rng = rng or random.Random(5)
    arrivals: list[float] = []
    payloads: list[bytes] = []
    held: set[int] = set()
    last = 0.0
    for i in range(int(seconds / period) - 5):
        due = 0.1 + i * period
        if stalls and due % every < stalls and due > every / 2:
            due += stalls - due % every
            held.add(i)
        last = max(last, due + rng.uniform(0, jitter))
        arrivals.append(T0 + last)
        payloads.append(MARK if i % 25 in (0, 1) else QUIET)
    return Stream(arrivals, payloads, held)


def marker_offsets(x: np.ndarray, s: Stream) -> list[float]:
    """For each marker whose two packets were not held: where the marker ends in ``x``
    minus where its last packet arrived, in ms (inf when not found within 200 ms)."""
    out = []
    for i in range(1, len(s.arrivals), 25):
        if i in s.held or i - 1 in s.held:
            continue
        expected = round((s.arrivals[i] - T0) * 8000)
        lo, hi = max(0, expected - 1600), min(len(x), expected + 1600)
        loud = np.nonzero(np.abs(x[lo:hi].astype(np.int32)) > 4000)[0]
        out.append((lo + int(loud[-1]) + 1 - expected) / 8 if len(loud) else float("inf"))
    return out


def record(tmp_path: Path, a: Stream, b: Stream, seconds: float) -> np.ndarray:
    """Feed both streams in arrival order with a flush every second, as the bridge does."""
    rec = Recorder(tmp_path / "timeline.wav", now=T0)
    events = sorted(
        [(t, 0, p) for t, p in zip(a.arrivals, a.payloads, strict=True)]
        + [(t, 1, p) for t, p in zip(b.arrivals, b.payloads, strict=True)],
        key=lambda e: e[0],
    )
    next_flush = T0 + 0.7
    for t, side, payload in events:
        while t >= next_flush:
            rec.flush(next_flush)
            next_flush += 1.0
        (rec.feed_a if side == 0 else rec.feed_b)(payload, "PCMU", t)
        assert rec.buffered_bytes <= BUFFER_CAP
    rec.close(T0 + seconds)
    data, _ = soundfile.read(tmp_path / "timeline.wav", dtype="int16")
    assert len(data) == round(seconds * 8000)  # the file ends with the call
    return data


@pytest.mark.parametrize(
    ("name", "a", "b"),
    [
        ("0.5 % fast / 300 ms bursts", stream(60, period=0.0199), stream(60, stalls=0.3)),
        ("0.5 % slow / jitter 30 ms", stream(60, period=0.0201), stream(60, jitter=0.03)),
        (
            "fast with bursts / fast with jitter",
            stream(60, period=0.0199, stalls=0.3, every=5),
            stream(60, period=0.0199, jitter=0.03),
        ),
    ],
)
def test_each_channel_stays_within_40_ms_of_the_wall_clock(
    tmp_path: Path, name: str, a: Stream, b: Stream
) -> None:
    """60 s of each pattern: every marker ends within 40 ms of its packet's arrival."""
    data = record(tmp_path, a, b, 60.0)
    for col, s in enumerate((a, b)):
        offsets = marker_offsets(data[:, col], s)
        assert len(offsets) >= 100
        assert max(map(abs, offsets)) <= 40, (name, col, offsets)


def test_a_late_start_is_placed_at_its_arrival_and_jitter_makes_no_clicks(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "start.wav", now=T0)
    rec.flush(T0 + 0.5)  # B was silent so far: padded with silence up to 0.46 s
    rng = random.Random(9)
    arrivals = [T0 + 0.6 + (i + 1) * 0.02 + rng.uniform(0, 0.03) for i in range(100)]
    for payload, t in zip(packets(tone(440, 2.0) + 1000), arrivals, strict=True):
        rec.feed_b(payload, "PCMU", t)
    rec.close(T0 + 2.7)
    data, _ = soundfile.read(tmp_path / "start.wav", dtype="int16")
    right = data[:, 1]
    first = int(np.nonzero(right)[0][0])
    # where its first packet arrived (minus its 20 ms), not at the padding's end
    assert first == round((arrivals[0] - T0) * 8000) - FRAME
    assert longest_zero_run(right[first : first + 15000]) < 4  # 30 ms jitter: no gaps
    assert rec.excess_samples == 0


# -- disk faults (issue 11 point 7) -------------------------------------------------------------


class FullDisk:
    """Stands in for the recorder's ``os``: ``write`` takes ``room`` more bytes, then
    fails with ENOSPC (a partial write first, as the kernel does)."""

    def __init__(self, room: int) -> None:
        self.room = room

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(data), self.room)
        self.room -= n
        return os.write(fd, bytes(data[:n]))

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)


def check_header(path: Path) -> int:
    """The header's sizes match the file exactly; returns its frames."""
    raw = path.read_bytes()
    assert len(raw) > 44 and (len(raw) - 44) % 4 == 0
    assert struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8
    assert struct.unpack_from("<I", raw, 40)[0] == len(raw) - 44
    frames = (len(raw) - 44) // 4
    assert soundfile.info(path).frames == frames
    return frames


def test_disk_full_mid_call_leaves_a_header_matching_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = RecordingsDisk()
    path = tmp_path / "full.wav"
    rec = Recorder(path, now=T0, disk=disk)
    feed(rec, "a", packets(tone(440, 3.0)))
    feed(rec, "b", packets(tone(1000, 3.0)))
    rec.flush(T0 + 1.0)
    assert disk.last_write_at is not None and not disk.failing
    full = FullDisk(room=10_001)  # 2,500 frames and one byte more, then ENOSPC
    monkeypatch.setattr(recorder, "os", full)
    with pytest.raises(OSError) as raised:
        rec.flush(T0 + 2.0)
    assert raised.value.errno == errno.ENOSPC
    assert rec.partial and rec.closed and not rec.removed
    assert rec.error is not None and rec.error.errno == errno.ENOSPC
    assert check_header(path) == 8000 - TOLERANCE + 2500 == rec.frames
    assert rec.flush(T0 + 3.0) == 0
    rec.close(T0 + 3.0)  # after a failure: nothing more, no error
    assert disk.failing and disk.failures == 1 and disk.partial_recordings == 1
    assert disk.last_error == "ENOSPC: No space left on device"
    monkeypatch.setattr(recorder, "os", os)
    other = Recorder(tmp_path / "next.wav", now=T0, disk=disk)
    other.close(T0 + 1.0)
    assert not disk.failing  # a write went through since


def test_a_recording_that_cannot_start_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = RecordingsDisk()
    monkeypatch.setattr(recorder, "os", FullDisk(room=0))
    with pytest.raises(OSError) as raised:
        Recorder(tmp_path / "none.wav", now=T0, disk=disk)
    assert raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    assert disk.failing and disk.partial_recordings == 1
    monkeypatch.setattr(recorder, "os", FullDisk(room=20))  # half a header
    with pytest.raises(OSError):
        Recorder(tmp_path / "half.wav", now=T0, disk=disk)
    assert list(tmp_path.iterdir()) == []


def test_a_recording_without_audio_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(tmp_path / "empty.wav", now=T0)
    rec.close()
    assert rec.removed and not rec.partial and list(tmp_path.iterdir()) == []
    # a disk full before the first frame: removed too, and partial
    rec = Recorder(tmp_path / "lost.wav", now=T0, disk=RecordingsDisk())
    feed(rec, "a", packets(tone(440, 1.0)))
    monkeypatch.setattr(recorder, "os", FullDisk(room=0))
    with pytest.raises(OSError):
        rec.flush(T0 + 1.0)
    assert rec.removed and rec.partial and rec.frames == 0
    assert list(tmp_path.iterdir()) == []


def test_recordings_disk_is_one_per_directory_and_errors_name_no_path(tmp_path: Path) -> None:
    (tmp_path / "rec").mkdir()
    assert recordings_disk(tmp_path / "rec") is recordings_disk(tmp_path / "rec" / ".." / "rec")
    assert recordings_disk(tmp_path / "rec") is not recordings_disk(tmp_path)
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "rec" / "x.wav"))
    assert describe_os_error(exc) == "ENOSPC: No space left on device"


# ---- off the event loop (flush_async / close_async) -----------------------------------------


def test_flush_async_writes_on_the_writer_thread_and_close_async_finishes_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "async.wav"
    rec = Recorder(path, now=T0)
    feed(rec, "a", packets(tone(440, 3.0)))
    feed(rec, "b", packets(tone(1000, 3.0)))
    for s in (1.0, 2.0, 3.0):
        rec.flush_async(T0 + s)
        deadline = 0
        while rec._in_flight_since is not None and deadline < 2000:  # until the block landed
            threading.Event().wait(0.005)
            deadline += 1
    done = rec.close_async(T0 + 3.03)
    assert rec.closed and rec.close_async() is done  # idempotent
    done.result(timeout=10)
    assert rec.finished and not rec.partial and not rec.removed
    assert check_header(path) == rec.frames == round(3.03 * 8000)


def test_a_write_stalled_past_write_stall_stops_the_recording_as_partial(tmp_path: Path) -> None:
    """The file is a FIFO nobody reads: the first block's write blocks. Later flushes
    prepare nothing while it is in flight; once it has been for WRITE_STALL seconds the
    recording stops (ETIMEDOUT, partial) and its close waits for the stuck write only."""
    fifo = tmp_path / "stuck.wav"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
        disk = RecordingsDisk()
        rec = Recorder(fifo, now=T0, disk=disk)
        feed(rec, "a", packets(tone(440, 1.0)))
        rec.flush_async(T0 + 1.0)  # 7,680 frames: more than the pipe holds
        assert rec._in_flight_since == T0 + 1.0
        feed(rec, "a", packets(tone(440, 1.0)), start=1.0)
        rec.flush_async(T0 + 2.0)  # still in flight: nothing prepared, the audio waits
        assert rec.a.payloads.nbytes == 8000 and rec.frames == 0
        with pytest.raises(OSError) as raised:
            rec.flush_async(T0 + 1.0 + WRITE_STALL)
        assert raised.value.errno == errno.ETIMEDOUT
        assert rec.partial and disk.failing and disk.partial_recordings == 1
        done = rec.close_async(T0 + 7.0)
        assert not done.done()  # behind the stuck write
        while not done.done():  # let the write go: drain the pipe
            select.select([reader], [], [], 0.05)
            with contextlib.suppress(BlockingIOError):
                os.read(reader, 65536)
        done.result()  # nothing more was written after the stall
        assert rec.finished and rec.partial and rec.error is not None
    finally:
        os.close(reader)
