"""What is in a recording: per-channel dominant frequency and level, and a picture of it.

Owns :func:`measure_wav` (reads a 16-bit PCM WAV with the stdlib ``wave`` module and
measures each channel with numpy), :func:`format_report` (the lines ``sipdialer
inspect`` and ``sipdialer demo`` print) and :func:`plot_wav` (a PNG: a 25 ms window of
each channel's waveform above its spectrogram, agent = left channel, callee = right).
matplotlib is imported only by :func:`plot_wav`, and is optional (the ``[plot]`` extra:
``pip install 'sipdialer[plot]'``); without it :func:`plot_wav` raises
:class:`PlotUnavailableError`, whose message names the extra, and the rest works.

Measurements, per channel:

* **dominant frequency** — the highest peak of the magnitude spectrum (real FFT of the
  whole channel, Hann window), refined by parabolic interpolation between the
  neighbouring bins; 0 for a silent channel;
* **level** — RMS in dBFS (a full-scale sine is −3.0 dBFS) over the *active* 20 ms blocks,
  i.e. those louder than −60 dBFS, so silence before or after the talk does not dilute
  it; ``active_seconds`` says how much of the channel that is.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sipdialer.rtp.errors import RtpError

__all__ = [
    "PLOT_EXTRA",
    "ChannelReport",
    "PlotUnavailableError",
    "WavReport",
    "dominant_frequency",
    "format_report",
    "measure_wav",
    "plot_wav",
]

BLOCK_SECONDS = 0.02
SILENCE_DBFS = -60.0
FULL_SCALE = 32768.0
CHANNEL_NAMES = ("left (agent)", "right (callee)")
SPECTROGRAM_RANGE_DB = 60.0
#: How to install what :func:`plot_wav` needs.
PLOT_EXTRA = "pip install 'sipdialer[plot]'"


class PlotUnavailableError(RtpError):
    """matplotlib, which drawing needs, is not installed (the ``[plot]`` extra)."""


@dataclass(frozen=True)
class ChannelReport:
    """One channel of a recording, measured."""

    name: str
    """``left (agent)``, ``right (callee)`` or ``channel N``."""
    peak_hz: float
    """Dominant frequency; 0.0 when the channel is silent."""
    rms_dbfs: float
    """RMS level of the active blocks in dBFS; ``-inf`` when silent."""
    active_seconds: float
    """Length of the blocks louder than −60 dBFS."""


@dataclass(frozen=True)
class WavReport:
    """A recording, measured."""

    path: Path
    rate: int
    frames: int
    channels: tuple[ChannelReport, ...]

    @property
    def seconds(self) -> float:
        return self.frames / self.rate if self.rate else 0.0


def dominant_frequency(samples: npt.ArrayLike, rate: int) -> float:
    """The frequency of the highest spectral peak of ``samples`` (0.0 if silent)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size < 4 or not np.any(x):
        return 0.0
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(x.size)))
    k = int(np.argmax(spectrum))
    if spectrum[k] == 0.0:
        return 0.0
    shift = 0.0
    if 0 < k < spectrum.size - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denominator = a - 2 * b + c
        if denominator != 0:
            shift = 0.5 * (a - c) / denominator
    return float((k + shift) * rate / x.size)


def _level(samples: npt.NDArray[np.float64], rate: int) -> tuple[float, float]:
    """(RMS dBFS of the active blocks, active seconds)."""
    block = max(1, int(rate * BLOCK_SECONDS))
    usable = samples[: samples.size - samples.size % block]
    if usable.size == 0:
        return -math.inf, 0.0
    power = np.mean((usable.reshape(-1, block) / FULL_SCALE) ** 2, axis=1)
    threshold = 10 ** (SILENCE_DBFS / 10)
    active = power > threshold
    if not np.any(active):
        return -math.inf, 0.0
    rms = math.sqrt(float(np.mean(power[active])))
    return 20 * math.log10(rms), float(np.count_nonzero(active) * block / rate)


def read_wav(path: Path | str) -> tuple[npt.NDArray[np.int16], int]:
    """``(samples, rate)`` of a 16-bit PCM WAV; samples shaped (frames, channels).
    ValueError for anything else (a crash-truncated last frame is dropped)."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getcomptype() != "NONE":
                raise ValueError(f"{path}: not 16-bit PCM")
            channels, rate = w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a WAV file ({exc})") from None
    usable = len(raw) - len(raw) % (2 * channels)
    data = np.frombuffer(raw[:usable], dtype="<i2").astype(np.int16)
    return data.reshape(-1, channels), rate


def measure_wav(path: Path | str) -> WavReport:
    """Measure every channel of the WAV at ``path`` (see the module docstring)."""
    samples, rate = read_wav(path)
    reports = []
    for i in range(samples.shape[1]):
        x = samples[:, i].astype(np.float64)
        rms, active = _level(x, rate)
        name = CHANNEL_NAMES[i] if samples.shape[1] == 2 else f"channel {i + 1}"
        reports.append(ChannelReport(name, dominant_frequency(x, rate), rms, active))
    return WavReport(Path(path), rate, int(samples.shape[0]), tuple(reports))


def format_report(report: WavReport, indent: str = "  ") -> list[str]:
    """Readable lines: the format, then one aligned line per channel."""
    kinds = {1: "mono", 2: "stereo"}
    kind = kinds.get(len(report.channels), f"{len(report.channels)} channels")
    lines = [
        f"{indent}{report.path}",
        f"{indent}{report.rate} Hz, 16-bit, {kind}, {report.seconds:.2f} s",
    ]
    for ch in report.channels:
        if ch.active_seconds == 0:
            lines.append(f"{indent}  {ch.name:<15} silent")
            continue
        lines.append(
            f"{indent}  {ch.name:<15} {ch.peak_hz:7.1f} Hz   {ch.rms_dbfs:6.1f} dBFS RMS   "
            f"active {ch.active_seconds:.2f} s"
        )
    return lines


def plot_wav(path: Path | str, png: Path | str | None = None, *, title: str | None = None) -> Path:
    """Write a PNG of the recording (default: beside it, ``.png``); returns its path.

    Top row: a 25 ms window from the middle of each channel's active part (a few cycles
    of the tone); bottom row: each channel's spectrogram, 0–4 kHz. Left column = left
    channel (agent), right column = right channel (callee).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailableError(
            f"drawing needs matplotlib, which is not installed: {PLOT_EXTRA}"
        ) from exc

    samples, rate = read_wav(path)
    report = measure_wav(path)
    out = Path(png) if png is not None else Path(path).with_suffix(".png")
    n_channels = samples.shape[1]
    fig, axes = plt.subplots(
        2, n_channels, figsize=(4.6 * n_channels, 5.2), dpi=80, squeeze=False, layout="tight"
    )
    window = int(rate * 0.025)
    for i in range(n_channels):
        x = samples[:, i].astype(np.float64) / FULL_SCALE
        ch = report.channels[i]
        loud = np.flatnonzero(np.abs(x) > 10 ** (SILENCE_DBFS / 20))
        middle = int(loud[loud.size // 2]) if loud.size else x.size // 2
        start = max(0, min(middle - window // 2, x.size - window))
        t_ms = (np.arange(start, start + window) - start) / rate * 1000
        top = axes[0][i]
        top.plot(t_ms, x[start : start + window], linewidth=1.2, color=f"C{i}")
        top.set_ylim(-1, 1)
        top.set_xlim(0, t_ms[-1] if t_ms.size else 1)
        top.set_xlabel(f"ms from {start / rate:.2f} s")
        top.set_ylabel("amplitude (full scale = 1)")
        top.grid(alpha=0.3)
        heading = ch.name if ch.active_seconds else f"{ch.name}: silent"
        if ch.active_seconds:
            heading += f" — {ch.peak_hz:.0f} Hz, {ch.rms_dbfs:.1f} dBFS"
        top.set_title(heading, fontsize=10)
        bottom = axes[1][i]
        if x.size >= 256 and np.any(x):
            spectrum, _, _, image = bottom.specgram(
                x, NFFT=256, Fs=rate, noverlap=128, cmap="magma"
            )
            top_db = 10 * math.log10(float(spectrum.max()) + 1e-20)
            image.set_clim(top_db - SPECTROGRAM_RANGE_DB, top_db)
        bottom.set_title("spectrogram (60 dB range)", fontsize=9)
        bottom.set_ylim(0, rate / 2)
        bottom.set_xlabel("seconds")
        bottom.set_ylabel("Hz")
    fig.suptitle(title or Path(path).name, fontsize=10)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
