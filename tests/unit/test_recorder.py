"""The stereo WAV recorder: channel placement by arrival time, crash safety, repair.

The recorder needs no event loop: tests feed payloads with explicit arrival times and
call ``flush(now)`` / ``close(now)`` the way the bridge's timer does.
"""

from __future__ import annotations

import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sipdialer.rtp import g711
from sipdialer.rtp.recorder import TOLERANCE, Recorder, new_recording_ref, repair_wav

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
