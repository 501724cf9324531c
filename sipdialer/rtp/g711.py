"""G.711 (µ-law / A-law) as numpy lookup tables and ``bytes.translate`` tables.

Owns every G.711 conversion the media layer does:

* ``ULAW_DECODE`` / ``ALAW_DECODE`` — 256-entry ``int16`` tables, code → linear sample
  (16-bit scaling of ITU-T G.711, as in the reference ``g711.c``: µ-law 0x00 → −32124,
  A-law 0xD5 → +8);
* ``ULAW_ENCODE`` / ``ALAW_ENCODE`` — 65536-entry ``uint8`` tables indexed by the sample's
  bits as ``uint16``, so :func:`encode_ulaw` / :func:`encode_alaw` are one vectorised
  lookup (used for ringback and tests, never per relayed packet);
* ``ULAW_TO_ALAW`` / ``ALAW_TO_ULAW`` — 256-byte tables for ``bytes.translate``: the relay
  transcodes a payload in one C call. They are G.711's own code-to-code conversion tables
  (Tables 3 and 4 of the Recommendation, as carried in the reference ``g711.c``), not
  decode-then-encode, which differs in a few codes.

Hand-written rather than taken from a library: the stdlib ``audioop`` is deprecated and
gone in 3.13, and the tables are a few lines of numpy computed once at import.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_DECODE",
    "ALAW_ENCODE",
    "ALAW_TO_ULAW",
    "ULAW_DECODE",
    "ULAW_ENCODE",
    "ULAW_TO_ALAW",
    "decode",
    "decode_alaw",
    "decode_ulaw",
    "encode",
    "encode_alaw",
    "encode_ulaw",
]

Int16Array = npt.NDArray[np.int16]

# µ-law segment ends on the biased 16-bit magnitude (reference g711.c).
_SEG_END = np.array([0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF], dtype=np.int32)
_BIAS = 0x84
# A-law segment ends on the 13-bit magnitude.
_SEG_END_A13 = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _ulaw_to_linear(codes: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    u = ~codes & 0xFF
    t = ((u & 0x0F) << 3) + _BIAS
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _BIAS - t, t - _BIAS)


def _alaw_to_linear(codes: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    a = codes ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t)


def _linear_to_ulaw(pcm: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    negative = pcm < 0
    mag = np.where(negative, _BIAS - pcm, pcm + _BIAS)
    mask = np.where(negative, 0x7F, 0xFF)
    seg = np.searchsorted(_SEG_END, mag, side="left")  # first seg with mag <= end
    shift = np.minimum(seg, 7) + 3
    uval = (seg << 4) | ((mag >> shift) & 0x0F)
    return np.where(seg >= 8, 0x7F ^ mask, uval ^ mask)


def _linear_to_alaw(pcm: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    # 13-bit magnitude as in G.191's reference encoder (the 16-bit shortcut of some
    # g711.c copies maps -1..-7 to -248).
    v = pcm >> 3
    negative = v < 0
    mag = np.where(negative, -v - 1, v)
    mask = np.where(negative, 0x55, 0xD5)
    seg = np.searchsorted(_SEG_END_A13, mag, side="left")
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    aval = (seg << 4) | ((mag >> shift) & 0x0F)
    return np.where(seg >= 8, 0x7F ^ mask, aval ^ mask)


_CODES = np.arange(256, dtype=np.int32)
ULAW_DECODE: Int16Array = _ulaw_to_linear(_CODES).astype(np.int16)
ALAW_DECODE: Int16Array = _alaw_to_linear(_CODES).astype(np.int16)
ULAW_DECODE.flags.writeable = False
ALAW_DECODE.flags.writeable = False

# Indexed by int16 samples viewed as uint16 (0..32767 then -32768..-1).
_PCM = np.arange(65536, dtype=np.int32)
_PCM = np.where(_PCM >= 32768, _PCM - 65536, _PCM)
ULAW_ENCODE: npt.NDArray[np.uint8] = _linear_to_ulaw(_PCM).astype(np.uint8)
ALAW_ENCODE: npt.NDArray[np.uint8] = _linear_to_alaw(_PCM).astype(np.uint8)
ULAW_ENCODE.flags.writeable = False
ALAW_ENCODE.flags.writeable = False
del _PCM

# G.711 Tables 3/4: µ-law magnitude code → A-law magnitude code + 1, and A-law magnitude
# code → µ-law magnitude code (magnitude code = 7-bit code after removing sign/inversion).
_U2A = (
    1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8,
    9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
    25, 27, 29, 31, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62,
    64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79,
    81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96,
    97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112,
    113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128,
)  # fmt: skip
_A2U = (
    1, 3, 5, 7, 9, 11, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23,
    24, 25, 26, 27, 28, 29, 30, 31, 32, 32, 33, 33, 34, 34, 35, 35,
    36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 48, 49, 49,
    50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 64,
    65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 79,
    80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95,
    96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111,
    112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127,
)  # fmt: skip


def _ulaw_to_alaw_code(u: int) -> int:
    if u & 0x80:
        return 0xD5 ^ (_U2A[0xFF ^ u] - 1)
    return 0x55 ^ (_U2A[0x7F ^ u] - 1)


def _alaw_to_ulaw_code(a: int) -> int:
    if a & 0x80:
        return 0xFF ^ _A2U[a ^ 0xD5]
    return 0x7F ^ _A2U[a ^ 0x55]


ULAW_TO_ALAW: bytes = bytes(_ulaw_to_alaw_code(u) for u in range(256))
ALAW_TO_ULAW: bytes = bytes(_alaw_to_ulaw_code(a) for a in range(256))


def decode_ulaw(data: bytes | bytearray | memoryview) -> Int16Array:
    """µ-law bytes → int16 samples."""
    return ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def decode_alaw(data: bytes | bytearray | memoryview) -> Int16Array:
    """A-law bytes → int16 samples."""
    return ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def _as_uint16(samples: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    arr = np.asarray(samples)
    if arr.dtype != np.int16:
        arr = np.clip(np.rint(arr), -32768, 32767).astype(np.int16)
    return np.ascontiguousarray(arr).view(np.uint16)


def encode_ulaw(samples: npt.ArrayLike) -> bytes:
    """int16 samples (other numeric dtypes are rounded and clipped) → µ-law bytes."""
    return ULAW_ENCODE[_as_uint16(samples)].tobytes()


def encode_alaw(samples: npt.ArrayLike) -> bytes:
    """int16 samples (other numeric dtypes are rounded and clipped) → A-law bytes."""
    return ALAW_ENCODE[_as_uint16(samples)].tobytes()


def decode(data: bytes | bytearray | memoryview, codec_name: str) -> Int16Array:
    """Decode ``PCMU`` or ``PCMA`` bytes; ``ValueError`` for any other codec name."""
    if codec_name == "PCMU":
        return decode_ulaw(data)
    if codec_name == "PCMA":
        return decode_alaw(data)
    raise ValueError(f"not a G.711 codec: {codec_name!r}")


def encode(samples: npt.ArrayLike, codec_name: str) -> bytes:
    """Encode int16 samples as ``PCMU`` or ``PCMA``; ``ValueError`` for any other name."""
    if codec_name == "PCMU":
        return encode_ulaw(samples)
    if codec_name == "PCMA":
        return encode_alaw(samples)
    raise ValueError(f"not a G.711 codec: {codec_name!r}")
