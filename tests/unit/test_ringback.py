"""The ringback tone: the checkout's WAV is the synthesised tone, and an installed package
(no ``media/``) synthesises it instead of failing to start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sipdialer.rtp import ringback


def test_the_checkout_wav_is_the_synthesised_tone() -> None:
    assert ringback.DEFAULT_RINGBACK.is_file()
    assert np.array_equal(ringback.load_ringback(), ringback.synthesize_ringback())


def test_without_media_the_tone_is_synthesised(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(ringback, "DEFAULT_RINGBACK", tmp_path / "missing.wav")
    tone = ringback.load_ringback()
    assert tone.dtype == np.int16 and len(tone) == 3 * ringback.RATE
    assert np.array_equal(tone, ringback.synthesize_ringback())


def test_a_wrong_file_is_refused(tmp_path: Path) -> None:
    import soundfile

    wav = tmp_path / "stereo.wav"
    soundfile.write(wav, np.zeros((800, 2), dtype=np.int16), 8000)
    with pytest.raises(ValueError, match="mono"):
        ringback.load_ringback(wav)
