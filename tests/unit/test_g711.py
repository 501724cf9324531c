"""G.711 tables: ITU-T reference points, round trips, code conversion, vectorised encode."""

from __future__ import annotations

import numpy as np
import pytest

from sipdialer.rtp import g711

CODES = np.arange(256, dtype=np.uint8)


def test_ulaw_decode_reference_points() -> None:
    d = g711.ULAW_DECODE
    assert d.dtype == np.int16 and d.shape == (256,)
    assert d[0xFF] == 0 and d[0x7F] == 0  # +0 / −0
    assert d[0x80] == 32124 and d[0x00] == -32124  # full scale
    assert d[0xFE] == 8 and d[0x7E] == -8  # smallest step
    assert d[0xF0] == 120  # end of segment 0 (15 × 8)
    assert d[0xEF] == 132 and d[0xE0] == 372  # segment 1, step 16
    # odd symmetry: code with the sign bit flipped decodes to the negative value
    assert np.array_equal(d[CODES ^ 0x80], -d)


def test_alaw_decode_reference_points() -> None:
    d = g711.ALAW_DECODE
    assert d.dtype == np.int16 and d.shape == (256,)
    assert d[0xD5] == 8 and d[0x55] == -8  # smallest magnitudes (no zero in A-law)
    assert d[0xAA] == 32256 and d[0x2A] == -32256  # full scale
    assert d[0xD4] == 24  # segment 0, step 16
    assert d[0xC5] == 264  # segment 1 starts at 256 + 8
    assert np.array_equal(d[CODES ^ 0x80], -d)
    assert 0 not in d


def test_decode_is_monotonic_per_sign() -> None:
    # µ-law: 0x80..0xFF positive descending magnitude; A-law after even-bit inversion
    pos_u = g711.ULAW_DECODE[0x80:]
    assert np.all(np.diff(pos_u.astype(int)) < 0)
    mags = np.arange(128)
    pos_a = g711.ALAW_DECODE[(mags ^ 0x55) | 0x80]
    assert np.all(np.diff(pos_a.astype(int)) > 0)


def test_round_trip_code_to_linear_to_code() -> None:
    u = np.frombuffer(g711.encode_ulaw(g711.ULAW_DECODE), dtype=np.uint8)
    mismatch = np.nonzero(u != CODES)[0].tolist()
    assert mismatch == [0x7F]  # −0 re-encodes as +0
    a = np.frombuffer(g711.encode_alaw(g711.ALAW_DECODE), dtype=np.uint8)
    assert np.array_equal(a, CODES)


def test_encode_reference_points_and_clipping() -> None:
    x = np.array([0, 1, -1, 32767, -32768, 8, -8], dtype=np.int16)
    assert list(g711.encode_ulaw(x)) == [0xFF, 0xFF, 0x7F, 0x80, 0x00, 0xFE, 0x7E]
    assert list(g711.encode_alaw(x)) == [0xD5, 0xD5, 0x55, 0xAA, 0x2A, 0xD5, 0x55]
    # float input is rounded and clipped
    assert g711.encode_ulaw(np.array([1e6, -1e6])) == bytes([0x80, 0x00])


@pytest.mark.parametrize("name", ["PCMU", "PCMA"])
def test_linear_round_trip_error_is_within_half_a_step(name: str) -> None:
    x = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    y = g711.decode(g711.encode(x, name), name).astype(np.int32)
    err = np.abs(y - x.astype(np.int32))
    # quantisation error grows with the segment: at most ~1/32 of the magnitude (+ floor)
    assert np.all(err <= np.abs(x.astype(np.int32)) / 30 + 16)
    # and the reconstruction is the nearest level for almost all inputs
    levels = np.unique((g711.ULAW_DECODE if name == "PCMU" else g711.ALAW_DECODE).astype(int))
    idx = np.clip(np.searchsorted(levels, x.astype(int)), 1, len(levels) - 1)
    nearest = np.minimum(np.abs(levels[idx] - x), np.abs(levels[idx - 1] - x))
    assert np.mean(err <= nearest + 1) > 0.99


def test_translate_tables_are_itu_code_conversion() -> None:
    u2a, a2u = g711.ULAW_TO_ALAW, g711.ALAW_TO_ULAW
    assert len(u2a) == 256 and len(a2u) == 256
    assert u2a[0xFF] == 0xD5 and u2a[0x7F] == 0x55  # ±0 → ±smallest A-law level
    assert u2a[0x80] == 0xAA and u2a[0x00] == 0x2A  # full scale → full scale
    assert a2u[0xD5] == 0xFE and a2u[0x55] == 0x7E
    assert a2u[0xAA] == 0x80 and a2u[0x2A] == 0x00
    # G.711 Table 3/4 details: µ-law magnitudes 0/1 share A-law 0; A 24/25 share µ 32
    assert u2a[0xFF] == u2a[0xFE]
    assert a2u[0xD5 ^ 24] == a2u[0xD5 ^ 25] == 0xFF ^ 32


def test_transcoding_preserves_value() -> None:
    u = bytes(range(256))
    x = g711.ULAW_DECODE.astype(float)
    y = g711.ALAW_DECODE[np.frombuffer(u.translate(g711.ULAW_TO_ALAW), np.uint8)].astype(float)
    assert np.all(np.abs(y - x) <= np.maximum(16, np.abs(x) / 16))
    assert np.all(np.sign(y) == np.sign(np.where(x == 0, y, x)))
    a = bytes(range(256))
    x = g711.ALAW_DECODE.astype(float)
    y = g711.ULAW_DECODE[np.frombuffer(a.translate(g711.ALAW_TO_ULAW), np.uint8)].astype(float)
    assert np.all(np.abs(y - x) <= np.maximum(16, np.abs(x) / 16))
    # µ → A → µ is stable to within one µ-law code
    back = np.frombuffer(u.translate(g711.ULAW_TO_ALAW).translate(g711.ALAW_TO_ULAW), np.uint8)
    assert np.all(np.abs(g711.ULAW_DECODE[back].astype(int) - g711.ULAW_DECODE.astype(int)) <= 264)


def test_tone_survives_encode_decode() -> None:
    t = np.arange(8000) / 8000
    x = (np.sin(2 * np.pi * 440 * t) * 10000).astype(np.int16)
    for name in ("PCMU", "PCMA"):
        y = g711.decode(g711.encode(x, name), name)
        snr = 10 * np.log10(np.sum(x.astype(float) ** 2) / np.sum((y - x).astype(float) ** 2))
        assert snr > 30, (name, snr)


def test_unknown_codec_name() -> None:
    with pytest.raises(ValueError):
        g711.decode(b"\x00", "G729")
    with pytest.raises(ValueError):
        g711.encode(np.zeros(1, np.int16), "opus")
