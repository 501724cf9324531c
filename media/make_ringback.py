"""Write media/ringback.wav: one 3 s cycle of 400+450 Hz double ring, 8 kHz mono 16-bit.

    .venv/bin/python media/make_ringback.py

The tone is defined in ``sipdialer.rtp.ringback.synthesize_ringback``.
"""

from __future__ import annotations

from pathlib import Path

import soundfile

from sipdialer.rtp.ringback import RATE, synthesize_ringback

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "ringback.wav"
    soundfile.write(str(out), synthesize_ringback(), RATE, subtype="PCM_16")
    print(f"wrote {out}")
