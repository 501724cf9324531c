"""The ringback tone the agent hears while the callee's phone rings.

Owns the tone's definition and loading. The tone is the double ring used in South Africa
and the UK: 400 Hz + 450 Hz, cadence 0.4 s on, 0.2 s off, 0.4 s on, 2.0 s off (one 3 s
cycle, looped by the relay), each tone at −13 dBm0-ish (0.2 of full scale), with 5 ms
ramps so the bursts do not click. :func:`synthesize_ringback` makes it;
``media/make_ringback.py`` writes it to ``media/ringback.wav`` (8 kHz mono 16-bit);
:func:`load_ringback` reads such a file into the int16 array that
:meth:`~sipdialer.rtp.relay.Bridge.play_to_a` takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile

__all__ = ["DEFAULT_RINGBACK", "RATE", "load_ringback", "synthesize_ringback"]

RATE = 8000
#: ``media/ringback.wav`` of the source tree.
DEFAULT_RINGBACK = Path(__file__).resolve().parents[2] / "media" / "ringback.wav"

_FREQS = (400.0, 450.0)
_CADENCE = ((0.4, True), (0.2, False), (0.4, True), (2.0, False))
_LEVEL = 0.2  # of full scale, per tone
_RAMP = 0.005


def synthesize_ringback() -> npt.NDArray[np.int16]:
    """One 3 s cycle of 400+450 Hz double ring, int16 at 8 kHz."""
    parts = []
    t0 = 0.0
    for seconds, on in _CADENCE:
        n = round(seconds * RATE)
        if on:
            t = t0 + np.arange(n) / RATE
            burst = sum(np.sin(2 * np.pi * f * t) for f in _FREQS) * _LEVEL
            ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (_RAMP * RATE))
            parts.append(burst * ramp)
        else:
            parts.append(np.zeros(n))
        t0 += seconds
    return np.round(np.concatenate(parts) * 32767).astype(np.int16)


def load_ringback(path: Path | None = None) -> npt.NDArray[np.int16]:
    """Read an 8 kHz mono WAV as int16 samples; ``ValueError`` for any other format.

    Without ``path``: ``media/ringback.wav`` of a checkout, or, in an installed package
    (which does not carry ``media/``), the same tone synthesised."""
    if path is None:
        if not DEFAULT_RINGBACK.is_file():
            return synthesize_ringback()
        path = DEFAULT_RINGBACK
    data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    if rate != RATE:
        raise ValueError(f"{path}: ringback must be {RATE} Hz, not {rate}")
    if data.shape[1] != 1:
        raise ValueError(f"{path}: ringback must be mono, not {data.shape[1]} channels")
    if not len(data):
        raise ValueError(f"{path}: ringback is empty")
    return np.ascontiguousarray(data[:, 0])
