"""The media workers' control channel: its messages, their framing and their validation.

Owns the wire between the call engine's process (:mod:`sipdialer.rtp.pool`) and a media
worker process (:mod:`sipdialer.rtp.worker`). Pure: no sockets, no loop; the two ends
feed bytes in (:class:`FrameReader`) and get checked, typed messages out
(:func:`parse_request`, :func:`parse_event`), and turn messages into bytes with
:func:`encode`. Every call's media goes over it when ``[media] workers`` > 0 (the
default: one worker per CPU).

*Framing.* A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON holding one object; a frame is at most :data:`MAX_FRAME` bytes (a longer length
prefix is an error that ends the channel: the stream cannot be trusted after it).
JSON rather than pickle: a worker must never execute what arrives on its channel, and
JSON's cost is small next to the relay's (one message per call event, one stats frame
per second per :data:`MAX_STATS_PER_FRAME` bridges).

*Validation.* Every field of every message is checked — type (a ``bool`` is not an
int), range, length, pattern, no missing and no unexpected field — and the first
problem raises :class:`ControlError` whose :attr:`~ControlError.field` names the field
as a path (``codec.pt``, ``bridges[3].a.packets_in``). Nothing else escapes the parsers,
whatever the bytes: a receiver answers an invalid message with a
:class:`Failed` event (the worker) or a log line (the pool) and carries on.

*Requests* (engine → worker) carry a ``bridge`` id the pool chose; those that need an
answer carry a ``req`` id too (:class:`OpenBridge`, :class:`StartRecording`,
:class:`CloseBridge`, :class:`Query`; :class:`SetSrtp` when the sender wants to wait)
and get :class:`Opened`, :class:`Done`, :class:`Closed` or :class:`Stats` back with the
same ``req``, or :class:`Failed`. The others are fire-and-forget; a failure among them
still comes back as a :class:`Failed` without ``req``. Ringback is defined once per
worker (:class:`DefineTone`, int16 samples) and then played by name (:class:`PlayToA`).

*Events* (worker → engine): :class:`Hello` once at start, the replies above, and every
second or so :class:`Stats` frames with each bridge's counters, how long each leg has
been silent (``idle``, seconds: a duration, not a clock, so the two processes need not
share one), where it sends and its latched source. ``applied`` counts the bridge's
requests the worker has carried out, so the engine can tell a stats frame written
before its latest request reached the worker.

*Secrets.* SRTP master keys travel only in :class:`SetSrtp` (base64 in the JSON); the
key is kept out of every ``repr`` and out of :class:`ControlError` messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from sipdialer.rtp.errors import RtpError

__all__ = [
    "FAILURE_KINDS",
    "LEG_STATS_FIELDS",
    "MAX_FRAME",
    "MAX_STATS_PER_FRAME",
    "MAX_TONE_SAMPLES",
    "PROTOCOL_VERSION",
    "SRTP_KEY_LENGTHS",
    "Address",
    "BridgeStats",
    "CloseBridge",
    "Closed",
    "CodecSpec",
    "Connect",
    "ControlError",
    "DefineTone",
    "Done",
    "Event",
    "Failed",
    "FrameReader",
    "Hello",
    "Hold",
    "LegStats",
    "OpenBridge",
    "Opened",
    "PlayToA",
    "Query",
    "RecordingResult",
    "Request",
    "SetRemote",
    "SetSrtp",
    "SrtpParams",
    "StartRecording",
    "Stats",
    "StopRecording",
    "encode",
    "parse_event",
    "parse_request",
]

PROTOCOL_VERSION = 1
#: Largest frame body (bytes of JSON), either direction.
MAX_FRAME = 256 * 1024
#: Longest ringback tone a worker keeps (10 s at 8 kHz).
MAX_TONE_SAMPLES = 80_000
#: Bridges per :class:`Stats` frame (a worker sends several frames for more).
MAX_STATS_PER_FRAME = 100
#: Tones a worker keeps at most.
MAX_TONES = 16
#: Master key + salt lengths of the SDES suites the relay speaks (RFC 4568, RFC 7714).
SRTP_KEY_LENGTHS = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AEAD_AES_128_GCM": 28,
    "AEAD_AES_256_GCM": 44,
}

_ID_MAX = 2**53 - 1  # exact in every JSON reader
_COUNT_MAX = 2**63 - 1
_IDLE_MAX = 10.0 * 365 * 86400
_TEXT_MAX = 1000
_PATH_MAX = 4096
_HOST_MAX = 64
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
_HEADER = struct.Struct(">I")

Leg: TypeAlias = Literal["A", "B"]
Address: TypeAlias = tuple[str, int]


class ControlError(RtpError, ValueError):
    """An invalid frame or message; :attr:`field` names what is wrong (``frame`` for the
    framing or the JSON itself)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# ---- framing -----------------------------------------------------------------------------


def encode(msg: Request | Event) -> bytes:
    """``msg`` as one frame (length prefix + JSON)."""
    body = json.dumps(msg.to_wire(), separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_FRAME:
        raise ControlError("frame", f"{len(body)} bytes is over the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into frame bodies. :meth:`feed` raises :class:`ControlError`
    (field ``frame``) for a length over :data:`MAX_FRAME` or zero; the stream is then
    unusable (close it)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _HEADER.unpack_from(buf, pos)
            if not 0 < n <= MAX_FRAME:
                raise ControlError("frame", f"length {n} is outside 1-{MAX_FRAME}")
            if len(buf) - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes held of an incomplete frame."""
        return len(self._buf)


# ---- field checks ------------------------------------------------------------------------


def _object(v: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> Any:
    if not isinstance(v, dict):
        raise ControlError(path or "message", f"must be an object, not {_kind(v)}")
    for k in v:
        if k not in required and k not in optional:
            name = k if _KEY_RE.fullmatch(k) else repr(k[:64])
            raise ControlError(_join(path, name), "unexpected field")
    for k in required:
        if k not in v:
            raise ControlError(_join(path, k), "missing")
    return v


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(v: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _int(v: Any, path: str, lo: int, hi: int) -> int:
    if type(v) is not int:
        raise ControlError(path, f"must be an integer, not {_kind(v)}")
    if not lo <= v <= hi:
        raise ControlError(path, f"{v} is outside {lo}-{hi}")
    return v


def _number(v: Any, path: str, lo: float, hi: float) -> float:
    if type(v) is not int and type(v) is not float:
        raise ControlError(path, f"must be a number, not {_kind(v)}")
    x = float(v)
    if not math.isfinite(x) or not lo <= x <= hi:
        raise ControlError(path, f"{x} is outside {lo}-{hi}")
    return x


def _bool(v: Any, path: str) -> bool:
    if type(v) is not bool:
        raise ControlError(path, f"must be true or false, not {_kind(v)}")
    return v


def _str(v: Any, path: str, max_len: int, pattern: re.Pattern[str] | None = None) -> str:
    if type(v) is not str:
        raise ControlError(path, f"must be a string, not {_kind(v)}")
    if not v or len(v) > max_len:
        raise ControlError(path, f"length {len(v)} is outside 1-{max_len}")
    if "\x00" in v:
        raise ControlError(path, "holds a NUL character")
    if pattern is not None and pattern.fullmatch(v) is None:
        raise ControlError(path, f"must match {pattern.pattern}")
    return v


def _optional(v: Any, path: str, check: Callable[[Any, str], Any]) -> Any:
    return None if v is None else check(v, path)


def _b64(v: Any, path: str, max_bytes: int) -> bytes:
    text = _str(v, path, (max_bytes + 2) // 3 * 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ControlError(path, "is not valid base64") from None


def _bridge(v: Any, path: str = "bridge") -> int:
    return _int(v, path, 1, _ID_MAX)


def _req(v: Any, path: str = "req") -> int:
    return _int(v, path, 1, _ID_MAX)


def _leg(v: Any, path: str = "leg") -> Leg:
    if v == "A" and type(v) is str:
        return "A"
    if v == "B" and type(v) is str:
        return "B"
    raise ControlError(path, 'must be "A" or "B"')


def _count(v: Any, path: str) -> int:
    return _int(v, path, 0, _COUNT_MAX)


def _port(v: Any, path: str) -> int:
    return _int(v, path, 0, 65535)


def _text(v: Any, path: str) -> str:
    return _str(v, path, _TEXT_MAX)


def _address(v: Any, path: str) -> Address:
    if not isinstance(v, list) or len(v) != 2:
        raise ControlError(path, "must be [host, port]")
    return (_str(v[0], f"{path}[0]", _HOST_MAX), _port(v[1], f"{path}[1]"))


def _is_address(v: Any) -> bool:
    """:func:`_address` would accept ``v`` (the fast path's check)."""
    if type(v) is not list or len(v) != 2:
        return False
    host, port = v
    return (
        type(host) is str
        and 0 < len(host) <= _HOST_MAX
        and "\x00" not in host
        and type(port) is int
        and 0 <= port <= 65535
    )


def _path(v: Any, path: str) -> str:
    p = _str(v, path, _PATH_MAX)
    if not p.startswith("/"):
        raise ControlError(path, "must be an absolute path")
    return p


# ---- values inside messages --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A leg's codec as :class:`~sipdialer.rtp.relay.Codec` takes it."""

    name: str
    pt: int
    dtmf_pt: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "pt": self.pt, "dtmf_pt": self.dtmf_pt}

    @classmethod
    def from_wire(cls, v: Any, path: str) -> CodecSpec:
        d = _object(v, path, ("name", "pt", "dtmf_pt"))
        name = d["name"]
        if type(name) is not str or name not in ("PCMU", "PCMA"):
            raise ControlError(f"{path}.name", 'must be "PCMU" or "PCMA"')
        pt = _int(d["pt"], f"{path}.pt", 0, 127)
        dtmf = _optional(d["dtmf_pt"], f"{path}.dtmf_pt", lambda x, p: _int(x, p, 0, 127))
        if dtmf == pt:
            raise ControlError(f"{path}.dtmf_pt", "must differ from pt")
        return cls(name, pt, dtmf)


@dataclass(frozen=True, slots=True)
class SrtpParams:
    """One direction's SDES master key and salt. The key never shows in ``repr``."""

    suite: str
    key_salt: bytes = field(repr=False)

    def __post_init__(self) -> None:
        want = SRTP_KEY_LENGTHS.get(self.suite)
        if want is None:
            raise ControlError("suite", f"unsupported SRTP suite {self.suite[:64]!r}")
        if len(self.key_salt) != want:
            raise ControlError("key", f"{self.suite} needs {want} bytes of key and salt")

    def to_wire(self) -> dict[str, Any]:
        return {"suite": self.suite, "key": base64.b64encode(self.key_salt).decode()}

    @classmethod
    def from_wire(cls, v: Any, path: str) -> SrtpParams:
        d = _object(v, path, ("suite", "key"))
        suite = _str(d["suite"], f"{path}.suite", 64)
        want = SRTP_KEY_LENGTHS.get(suite)
        if want is None:
            raise ControlError(f"{path}.suite", "is not a supported SRTP suite")
        key = _b64(d["key"], f"{path}.key", want)
        if len(key) != want:
            raise ControlError(f"{path}.key", f"{suite} needs {want} bytes of key and salt")
        return cls(suite, key)


#: The order of a :class:`LegStats` on the wire (a compact array, one per leg).
LEG_STATS_FIELDS = (
    "packets_in",
    "bytes_in",
    "packets_out",
    "packets_dropped",
    "packets_foreign",
    "srtp_forged",
    "srtp_replayed",
    "idle",
    "source",
    "remote",
)


@dataclass(frozen=True, slots=True)
class LegStats:
    """One leg's relay counters (see :class:`~sipdialer.rtp.relay.MediaLeg`; the SRTP
    ones stay 0 on a relay without SRTP); ``idle``: seconds since its last audio/DTMF
    packet (since the bridge opened before any)."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    packets_dropped: int = 0
    packets_foreign: int = 0
    srtp_forged: int = 0
    srtp_replayed: int = 0
    idle: float = 0.0
    source: Address | None = None
    remote: Address | None = None

    def to_wire(self) -> list[Any]:
        return [
            self.packets_in,
            self.bytes_in,
            self.packets_out,
            self.packets_dropped,
            self.packets_foreign,
            self.srtp_forged,
            self.srtp_replayed,
            round(self.idle, 3),
            None if self.source is None else list(self.source),
            None if self.remote is None else list(self.remote),
        ]

    @classmethod
    def from_wire(cls, v: Any, path: str) -> LegStats:
        # fast path (a thousand legs a second): every field checked in one expression;
        # anything off takes the slow path, which names the field
        if type(v) is list and len(v) == 10:
            p_in, b_in, p_out, drop, foreign, forged, replayed, idle, src, rem = v
            if (
                type(p_in) is int
                and type(b_in) is int
                and type(p_out) is int
                and type(drop) is int
                and type(foreign) is int
                and type(forged) is int
                and type(replayed) is int
                and 0 <= p_in <= _COUNT_MAX
                and 0 <= b_in <= _COUNT_MAX
                and 0 <= p_out <= _COUNT_MAX
                and 0 <= drop <= _COUNT_MAX
                and 0 <= foreign <= _COUNT_MAX
                and 0 <= forged <= _COUNT_MAX
                and 0 <= replayed <= _COUNT_MAX
                and (type(idle) is float or type(idle) is int)
                and 0.0 <= idle <= _IDLE_MAX  # False for NaN
                and (src is None or _is_address(src))
                and (rem is None or _is_address(rem))
            ):
                return cls(
                    p_in,
                    b_in,
                    p_out,
                    drop,
                    foreign,
                    forged,
                    replayed,
                    float(idle),
                    None if src is None else (src[0], src[1]),
                    None if rem is None else (rem[0], rem[1]),
                )
        return cls._slow(v, path)

    @classmethod
    def _slow(cls, v: Any, path: str) -> LegStats:
        if not isinstance(v, list) or len(v) != len(LEG_STATS_FIELDS):
            raise ControlError(path, f"must be an array of {len(LEG_STATS_FIELDS)}")
        f = [f"{path}.{name}" for name in LEG_STATS_FIELDS]
        return cls(
            _count(v[0], f[0]),
            _count(v[1], f[1]),
            _count(v[2], f[2]),
            _count(v[3], f[3]),
            _count(v[4], f[4]),
            _count(v[5], f[5]),
            _count(v[6], f[6]),
            _number(v[7], f[7], 0.0, _IDLE_MAX),
            _optional(v[8], f[8], _address),
            _optional(v[9], f[9], _address),
        )


@dataclass(frozen=True, slots=True)
class BridgeStats:
    """A bridge as the worker sees it: both legs, whether ringback plays, a recording
    failure (disk full: the recording stopped, the call goes on), and ``applied``: how
    many of this bridge's requests the worker has carried out."""

    bridge: int
    applied: int
    a: LegStats
    b: LegStats
    playing: bool = False
    recording_error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "bridge": self.bridge,
            "applied": self.applied,
            "a": self.a.to_wire(),
            "b": self.b.to_wire(),
            "playing": self.playing,
            "recording_error": self.recording_error,
        }

    @classmethod
    def from_wire(cls, v: Any, path: str) -> BridgeStats:
        d = _object(v, path, ("bridge", "applied", "a", "b", "playing", "recording_error"))
        return cls(
            _bridge(d["bridge"], f"{path}.bridge"),
            _count(d["applied"], f"{path}.applied"),
            LegStats.from_wire(d["a"], f"{path}.a"),
            LegStats.from_wire(d["b"], f"{path}.b"),
            _bool(d["playing"], f"{path}.playing"),
            _optional(d["recording_error"], f"{path}.recording_error", _text),
        )


@dataclass(frozen=True, slots=True)
class RecordingResult:
    """What the engine needs of a finished :class:`~sipdialer.rtp.recorder.Recorder`."""

    path: str
    frames: int = 0
    duration: float = 0.0
    partial: bool = False
    removed: bool = False
    oversize_packets: int = 0
    overflow_packets: int = 0
    excess_samples: int = 0
    error: str | None = None

    _FIELDS = (
        "path",
        "frames",
        "duration",
        "partial",
        "removed",
        "oversize_packets",
        "overflow_packets",
        "excess_samples",
        "error",
    )

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._FIELDS}

    @classmethod
    def from_wire(cls, v: Any, path: str) -> RecordingResult:
        d = _object(v, path, cls._FIELDS)
        p = f"{path}."
        return cls(
            _path(d["path"], p + "path"),
            _count(d["frames"], p + "frames"),
            _number(d["duration"], p + "duration", 0.0, _IDLE_MAX),
            _bool(d["partial"], p + "partial"),
            _bool(d["removed"], p + "removed"),
            _count(d["oversize_packets"], p + "oversize_packets"),
            _count(d["overflow_packets"], p + "overflow_packets"),
            _count(d["excess_samples"], p + "excess_samples"),
            _optional(d["error"], p + "error", _text),
        )


# ---- requests (engine → worker) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenBridge:
    """Open a bridge (two sockets) on ``host``; answered by :class:`Opened`."""

    req: int
    bridge: int
    host: str

    def to_wire(self) -> dict[str, Any]:
        return {"op": "open", "req": self.req, "bridge": self.bridge, "host": self.host}


@dataclass(frozen=True, slots=True)
class SetRemote:
    """:meth:`~sipdialer.rtp.relay.MediaLeg.set_remote` of leg ``leg``."""

    bridge: int
    leg: Leg
    host: str
    port: int
    codec: CodecSpec

    def to_wire(self) -> dict[str, Any]:
        return {
            "op": "set_remote",
            "bridge": self.bridge,
            "leg": self.leg,
            "host": self.host,
            "port": self.port,
            "codec": self.codec.to_wire(),
        }


@dataclass(frozen=True, slots=True)
class Hold:
    """:meth:`~sipdialer.rtp.relay.MediaLeg.hold` of leg ``leg``."""

    bridge: int
    leg: Leg
    on: bool

    def to_wire(self) -> dict[str, Any]:
        return {"op": "hold", "bridge": self.bridge, "leg": self.leg, "on": self.on}


@dataclass(frozen=True, slots=True)
class Connect:
    """:meth:`~sipdialer.rtp.relay.Bridge.connect`."""

    bridge: int

    def to_wire(self) -> dict[str, Any]:
        return {"op": "connect", "bridge": self.bridge}


@dataclass(frozen=True, slots=True)
class DefineTone:
    """Keep int16 little-endian 8 kHz mono ``samples`` under ``name`` for :class:`PlayToA`
    (defining a name again replaces it; at most :data:`MAX_TONES` names)."""

    name: str
    samples: bytes = field(repr=False)

    def to_wire(self) -> dict[str, Any]:
        return {
            "op": "define_tone",
            "name": self.name,
            "samples": base64.b64encode(self.samples).decode(),
        }


@dataclass(frozen=True, slots=True)
class PlayToA:
    """:meth:`~sipdialer.rtp.relay.Bridge.play_to_a` with a defined tone; None stops."""

    bridge: int
    tone: str | None

    def to_wire(self) -> dict[str, Any]:
        return {"op": "play_to_a", "bridge": self.bridge, "tone": self.tone}


@dataclass(frozen=True, slots=True)
class StartRecording:
    """Record the bridge into a new WAV at ``path`` (absolute; its directory is made);
    answered by :class:`Done`, or :class:`Failed` when the file cannot be created."""

    req: int
    bridge: int
    path: str

    def to_wire(self) -> dict[str, Any]:
        return {"op": "start_recording", "req": self.req, "bridge": self.bridge, "path": self.path}


@dataclass(frozen=True, slots=True)
class StopRecording:
    """:meth:`~sipdialer.rtp.relay.Bridge.stop_recording`."""

    bridge: int

    def to_wire(self) -> dict[str, Any]:
        return {"op": "stop_recording", "bridge": self.bridge}


@dataclass(frozen=True, slots=True)
class SetSrtp:
    """``MediaLeg.set_srtp(inbound, outbound)`` of leg ``leg`` (None: plain RTP that
    way); with a ``req`` answered by :class:`Done` or :class:`Failed`, without one only
    a failure is reported."""

    req: int | None
    bridge: int
    leg: Leg
    inbound: SrtpParams | None
    outbound: SrtpParams | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "op": "set_srtp",
            "req": self.req,
            "bridge": self.bridge,
            "leg": self.leg,
            "inbound": None if self.inbound is None else self.inbound.to_wire(),
            "outbound": None if self.outbound is None else self.outbound.to_wire(),
        }


@dataclass(frozen=True, slots=True)
class CloseBridge:
    """:meth:`~sipdialer.rtp.relay.Bridge.close`; answered by :class:`Closed`."""

    req: int
    bridge: int

    def to_wire(self) -> dict[str, Any]:
        return {"op": "close", "req": self.req, "bridge": self.bridge}


@dataclass(frozen=True, slots=True)
class Query:
    """Fresh stats of one bridge now; answered by :class:`Stats` with this ``req``."""

    req: int
    bridge: int

    def to_wire(self) -> dict[str, Any]:
        return {"op": "query", "req": self.req, "bridge": self.bridge}


Request: TypeAlias = (
    OpenBridge
    | SetRemote
    | Hold
    | Connect
    | DefineTone
    | PlayToA
    | StartRecording
    | StopRecording
    | SetSrtp
    | CloseBridge
    | Query
)


def _p_open(d: Any) -> Request:
    _object(d, "", ("op", "req", "bridge", "host"))
    return OpenBridge(_req(d["req"]), _bridge(d["bridge"]), _str(d["host"], "host", _HOST_MAX))


def _p_set_remote(d: Any) -> Request:
    _object(d, "", ("op", "bridge", "leg", "host", "port", "codec"))
    return SetRemote(
        _bridge(d["bridge"]),
        _leg(d["leg"]),
        _str(d["host"], "host", _HOST_MAX),
        _port(d["port"], "port"),
        CodecSpec.from_wire(d["codec"], "codec"),
    )


def _p_hold(d: Any) -> Request:
    _object(d, "", ("op", "bridge", "leg", "on"))
    return Hold(_bridge(d["bridge"]), _leg(d["leg"]), _bool(d["on"], "on"))


def _p_connect(d: Any) -> Request:
    _object(d, "", ("op", "bridge"))
    return Connect(_bridge(d["bridge"]))


def _p_define_tone(d: Any) -> Request:
    _object(d, "", ("op", "name", "samples"))
    name = _str(d["name"], "name", 64, _NAME_RE)
    samples = _b64(d["samples"], "samples", 2 * MAX_TONE_SAMPLES)
    if not samples or len(samples) % 2 or len(samples) > 2 * MAX_TONE_SAMPLES:
        raise ControlError("samples", f"must be 1-{MAX_TONE_SAMPLES} int16 samples")
    return DefineTone(name, samples)


def _p_play(d: Any) -> Request:
    _object(d, "", ("op", "bridge", "tone"))
    tone = _optional(d["tone"], "tone", lambda v, p: _str(v, p, 64, _NAME_RE))
    return PlayToA(_bridge(d["bridge"]), tone)


def _p_start_recording(d: Any) -> Request:
    _object(d, "", ("op", "req", "bridge", "path"))
    return StartRecording(_req(d["req"]), _bridge(d["bridge"]), _path(d["path"], "path"))


def _p_stop_recording(d: Any) -> Request:
    _object(d, "", ("op", "bridge"))
    return StopRecording(_bridge(d["bridge"]))


def _p_set_srtp(d: Any) -> Request:
    _object(d, "", ("op", "req", "bridge", "leg", "inbound", "outbound"))
    return SetSrtp(
        _optional(d["req"], "req", _req),
        _bridge(d["bridge"]),
        _leg(d["leg"]),
        _optional(d["inbound"], "inbound", SrtpParams.from_wire),
        _optional(d["outbound"], "outbound", SrtpParams.from_wire),
    )


def _p_close(d: Any) -> Request:
    _object(d, "", ("op", "req", "bridge"))
    return CloseBridge(_req(d["req"]), _bridge(d["bridge"]))


def _p_query(d: Any) -> Request:
    _object(d, "", ("op", "req", "bridge"))
    return Query(_req(d["req"]), _bridge(d["bridge"]))


_REQUESTS: dict[str, Callable[[Any], Request]] = {
    "open": _p_open,
    "set_remote": _p_set_remote,
    "hold": _p_hold,
    "connect": _p_connect,
    "define_tone": _p_define_tone,
    "play_to_a": _p_play,
    "start_recording": _p_start_recording,
    "stop_recording": _p_stop_recording,
    "set_srtp": _p_set_srtp,
    "close": _p_close,
    "query": _p_query,
}


# ---- events (worker → engine) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """The worker is up: its pid, protocol version and RTP port slice."""

    pid: int
    version: int
    low: int
    high: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "ev": "hello",
            "pid": self.pid,
            "version": self.version,
            "low": self.low,
            "high": self.high,
        }


@dataclass(frozen=True, slots=True)
class Opened:
    """The bridge of :class:`OpenBridge` ``req`` is open on these ports."""

    req: int
    bridge: int
    a_port: int
    b_port: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "ev": "opened",
            "req": self.req,
            "bridge": self.bridge,
            "a_port": self.a_port,
            "b_port": self.b_port,
        }


@dataclass(frozen=True, slots=True)
class Done:
    """Request ``req`` was carried out."""

    req: int
    bridge: int

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "done", "req": self.req, "bridge": self.bridge}


#: :attr:`Failed.kind` values.
FAILURE_KINDS = (
    "invalid",  # the message failed validation (``field`` names what)
    "unknown_bridge",  # no such bridge in this worker (closed, never opened)
    "ports_exhausted",  # no free port in the worker's slice
    "media_address",  # set_remote: an address the leg's socket cannot send to
    "recording",  # the recording file could not be created
    "srtp",  # a suite/key libsrtp refused, or the relay has no SRTP yet
    "unknown_tone",  # play_to_a: no tone of that name
    "internal",  # anything else (a bug): the message is logged by the worker
)


@dataclass(frozen=True, slots=True)
class Failed:
    """A request failed (``req`` set when it had one); ``field`` names the offending field
    of an ``invalid`` message."""

    req: int | None
    bridge: int | None
    kind: str
    field: str | None
    error: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "ev": "failed",
            "req": self.req,
            "bridge": self.bridge,
            "kind": self.kind,
            "field": self.field,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Closed:
    """The bridge is closed (its ports released): final counters and recording."""

    req: int | None
    stats: BridgeStats
    recording: RecordingResult | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "ev": "closed",
            "req": self.req,
            "stats": self.stats.to_wire(),
            "recording": None if self.recording is None else self.recording.to_wire(),
        }


@dataclass(frozen=True, slots=True)
class Stats:
    """Periodic (``req`` None) or asked-for (:class:`Query`) bridge stats."""

    req: int | None
    bridges: tuple[BridgeStats, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"ev": "stats", "req": self.req, "bridges": [b.to_wire() for b in self.bridges]}


Event: TypeAlias = Hello | Opened | Done | Failed | Closed | Stats


def _p_hello(d: Any) -> Event:
    _object(d, "", ("ev", "pid", "version", "low", "high"))
    low = _int(d["low"], "low", 1, 65535)
    high = _int(d["high"], "high", 1, 65535)
    if high < low:
        raise ControlError("high", "is below low")
    return Hello(
        _int(d["pid"], "pid", 1, 2**31 - 1), _int(d["version"], "version", 1, 1000), low, high
    )


def _p_opened(d: Any) -> Event:
    _object(d, "", ("ev", "req", "bridge", "a_port", "b_port"))
    return Opened(
        _req(d["req"]),
        _bridge(d["bridge"]),
        _int(d["a_port"], "a_port", 1, 65535),
        _int(d["b_port"], "b_port", 1, 65535),
    )


def _p_done(d: Any) -> Event:
    _object(d, "", ("ev", "req", "bridge"))
    return Done(_req(d["req"]), _bridge(d["bridge"]))


def _p_failed(d: Any) -> Event:
    _object(d, "", ("ev", "req", "bridge", "kind", "field", "error"))
    kind = d["kind"]
    if type(kind) is not str or kind not in FAILURE_KINDS:
        raise ControlError("kind", f"must be one of {', '.join(FAILURE_KINDS)}")
    return Failed(
        _optional(d["req"], "req", _req),
        _optional(d["bridge"], "bridge", _bridge),
        kind,
        _optional(d["field"], "field", lambda v, p: _str(v, p, 200)),
        _text(d["error"], "error"),
    )


def _p_closed(d: Any) -> Event:
    _object(d, "", ("ev", "req", "stats", "recording"))
    return Closed(
        _optional(d["req"], "req", _req),
        BridgeStats.from_wire(d["stats"], "stats"),
        _optional(d["recording"], "recording", RecordingResult.from_wire),
    )


def _p_stats(d: Any) -> Event:
    _object(d, "", ("ev", "req", "bridges"))
    items = d["bridges"]
    if not isinstance(items, list):
        raise ControlError("bridges", "must be an array")
    if len(items) > MAX_STATS_PER_FRAME:
        raise ControlError("bridges", f"{len(items)} entries, at most {MAX_STATS_PER_FRAME}")
    return Stats(
        _optional(d["req"], "req", _req),
        tuple(BridgeStats.from_wire(b, f"bridges[{i}]") for i, b in enumerate(items)),
    )


_EVENTS: dict[str, Callable[[Any], Event]] = {
    "hello": _p_hello,
    "opened": _p_opened,
    "done": _p_done,
    "failed": _p_failed,
    "closed": _p_closed,
    "stats": _p_stats,
}


# ---- parsing -----------------------------------------------------------------------------


def _load(payload: bytes, tag: str, table: dict[str, Callable[[Any], Any]]) -> Any:
    try:
        d = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError too
        raise ControlError("frame", "is not UTF-8 JSON") from None
    if not isinstance(d, dict):
        raise ControlError("frame", f"must hold a JSON object, not {_kind(d)}")
    if tag not in d:
        raise ControlError(tag, "missing")
    name = d[tag]
    parse = table.get(name) if type(name) is str else None
    if parse is None:
        raise ControlError(tag, f"must be one of {', '.join(table)}")
    return parse(d)


def parse_request(payload: bytes) -> Request:
    """A frame body from the engine as a checked request (:class:`ControlError` if not)."""
    req: Request = _load(payload, "op", _REQUESTS)
    return req


def parse_event(payload: bytes) -> Event:
    """A frame body from a worker as a checked event (:class:`ControlError` if not)."""
    ev: Event = _load(payload, "ev", _EVENTS)
    return ev


def request_ids(payload: bytes) -> tuple[int | None, int | None]:
    """The ``req`` and ``bridge`` of a request that failed validation, when they are
    themselves valid (so the failure can be matched to its request); else None."""
    try:
        d = json.loads(payload)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(d, dict):
        return None, None
    out: list[int | None] = []
    for key in ("req", "bridge"):
        v = d.get(key)
        out.append(v if type(v) is int and 1 <= v <= _ID_MAX else None)
    return out[0], out[1]
