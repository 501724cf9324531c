"""Sans-IO SDP (RFC 4566) and offer/answer (RFC 3264) for one audio stream.

Owns parsing the audio part of a session description (:func:`parse_sdp` →
:class:`AudioOffer`), writing ours (:func:`build_sdp`), picking a codec
(:func:`choose_codec`) and answering an offer (:func:`answer_for`). Pure: bytes in, bytes
out; every input we refuse raises :class:`SdpError` (a ``ValueError``) and nothing else.

Decisions:

* **Parsing is tolerant** of CRLF or bare LF, blank lines, unknown line types and
  attributes, several m-lines (the first ``m=audio`` is taken; the others are kept in
  ``AudioOffer.media`` so an answer can reject them in place, RFC 3264 §6). It is strict
  where guessing would be wrong: the first line must be ``v=0``, every line ``x=value``,
  the audio m-line needs a port (0–65535) and RTP payload types (0–127), and a connection
  address must exist at session or media level (media level wins).
* **Direction**: media-level attribute wins over session level; default ``sendrecv``.
  A connection address of ``0.0.0.0`` (or ``::``) is RFC 2543 hold: per RFC 3264 §8.4 no
  media is to be sent to that peer, so the "recv" half is removed — ``sendrecv`` →
  ``sendonly``, ``recvonly`` → ``inactive``. ``address`` keeps the ``0.0.0.0``;
  ``AudioOffer.on_hold`` is true for ``sendonly``/``inactive``.
* **rtpmap**: encoding names upper-cased; static RFC 3551 audio types (0 PCMU, 8 PCMA,
  18 G729, …) are filled in when no rtpmap line is given. ``dtmf_pt`` is the first offered
  ``telephone-event/8000`` payload type.
* **Codec choice follows OUR preference** (the ``preferred`` order), not the offerer's:
  the B2BUA may then put the other leg's codec first and avoid transcoding. The answer
  carries that single codec (plus telephone-event when offered, with the offerer's
  payload type numbers, RFC 3264 §6.1), so the peer cannot switch codecs mid-call.
* **answer_for returns None (→ 488)** when no supported codec is offered, when the
  audio stream is already rejected (port 0: we have nothing to offer a call without
  audio; a failed re-INVITE leaves the session as it was, RFC 3261 §14.2), or when the
  transport is not one we speak: ``RTP/AVP`` (``RTP/AVPF`` is answered as offered), and
  ``RTP/SAVP``/``RTP/SAVPF`` only when the caller gives the ``a=crypto`` line to answer
  with (which one is :mod:`sipdialer.sip.sdes`'s decision).
* **SRTP (RFC 4568)**: our ``a=crypto`` lines follow the rtpmap lines; they carry keys, so
  nothing here logs a body (see :mod:`sipdialer.sip.sdp_crypto`).
* **Our o= version only goes up** (RFC 3264 §8), per session description we keep
  (:class:`OurSdpVersion`, one per leg): by one when what we send differs from what we
  sent last, the same when it does not (a session refresh).
* **Our ptime is always 20** (what we want to receive, RFC 4566 §6); fmtp for DTMF is
  ``0-16`` (digits, */#, A–D and flash, RFC 4733).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sipdialer.sip.errors import SipError
from sipdialer.sip.sdp_crypto import CryptoAttribute, CryptoError, parse_crypto

__all__ = [
    "DIRECTIONS",
    "STATIC_PAYLOAD_TYPES",
    "AudioOffer",
    "MediaLine",
    "OurSdpVersion",
    "SdpError",
    "answer_for",
    "build_sdp",
    "choose_codec",
    "parse_sdp",
]

MAX_SDP_BYTES = 65_536

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_MIRROR = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
_WITHOUT_RECV = {
    "sendrecv": "sendonly",
    "recvonly": "inactive",
    "sendonly": "sendonly",
    "inactive": "inactive",
}
_PLAIN_RTP = ("RTP/AVP", "RTP/AVPF")
_SECURE_RTP = ("RTP/SAVP", "RTP/SAVPF")
#: ``a=crypto`` lines kept per audio stream (an offer lists one per suite; more is noise).
MAX_CRYPTO_LINES = 16

# RFC 3551 §6, table 4: static audio payload types.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int]] = {
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    4: ("G723", 8000),
    5: ("DVI4", 8000),
    6: ("DVI4", 16000),
    7: ("LPC", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),
    10: ("L16", 44100),
    11: ("L16", 44100),
    12: ("QCELP", 8000),
    13: ("CN", 8000),
    14: ("MPA", 90000),
    15: ("G728", 8000),
    16: ("DVI4", 11025),
    17: ("DVI4", 22050),
    18: ("G729", 8000),
}

_LINE_RE = re.compile(r"([a-zA-Z])=(.*)", re.DOTALL)
_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"  # RFC 4566 token
_TOKEN_RE = re.compile(_TOKEN)
_PROTO_RE = re.compile(f"{_TOKEN}(/{_TOKEN})*")  # RFC 4566 proto
_DIGITS_RE = re.compile(r"[0-9]{1,10}")


class SdpError(SipError, ValueError):
    """A session description we cannot use (malformed, no audio stream, bad arguments)."""


@dataclass(frozen=True)
class MediaLine:
    """One ``m=`` line of the offer, as needed to reject it in an answer (port 0)."""

    media: str
    port: int
    proto: str
    fmts: tuple[str, ...]


@dataclass
class AudioOffer:
    """The parsed audio part of a session description."""

    address: str  # connection address (media-level c= wins over session level)
    port: int  # 0 = stream rejected
    payload_types: list[int]  # in the offerer's order
    rtpmap: dict[int, tuple[str, int]]  # pt -> (ENCODING, clock rate); static types filled in
    direction: str  # sendrecv / sendonly / recvonly / inactive (0.0.0.0 hold applied)
    ptime: int | None
    dtmf_pt: int | None  # telephone-event/8000 payload type, if offered
    proto: str = "RTP/AVP"
    media: list[MediaLine] = field(default_factory=list)  # every m-line, in order
    audio_index: int = 0  # which of ``media`` is this audio stream
    crypto: tuple[CryptoAttribute, ...] = ()
    """The audio stream's ``a=crypto`` lines (RFC 4568) that parse, in the offerer's
    order (a malformed one is skipped; whether each is usable is its ``problem``)."""

    @property
    def on_hold(self) -> bool:
        """The offerer does not want to receive media (sendonly / inactive / 0.0.0.0)."""
        return self.direction in ("sendonly", "inactive")


# --- parsing ------------------------------------------------------------------------------


def _decode(body: bytes | bytearray | memoryview | str) -> str:
    if isinstance(body, str):
        text = body
    elif isinstance(body, bytes | bytearray | memoryview):
        raw = bytes(body)
        if len(raw) > MAX_SDP_BYTES:
            raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
        text = raw.decode("utf-8", errors="replace")
    else:
        raise SdpError(f"SDP must be bytes, not {type(body).__name__}")
    if len(text) > MAX_SDP_BYTES:
        raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    return text


def _lines(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for raw in re.split(r"\r?\n", text):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        match = _LINE_RE.fullmatch(line)
        if match is None:
            raise SdpError(f"not an SDP line: {line[:60]!r}")
        out.append((match.group(1), match.group(2)))
    if not out or out[0][0] != "v" or out[0][1].strip() != "0":
        raise SdpError("SDP must start with v=0")
    return out


def _connection_address(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad c= line: {value[:60]!r}")
    address = parts[2].split("/", 1)[0]  # strip multicast /ttl[/n]
    colonless = address.replace(":", "")  # IPv6: "::" (hold) has nothing else
    if not address or not (address == "::" or _TOKEN_RE.fullmatch(colonless)):
        raise SdpError(f"bad connection address: {address[:60]!r}")
    return address


def _parse_port(value: str) -> int:
    port_text = value.split("/", 1)[0]
    if not _DIGITS_RE.fullmatch(port_text):
        raise SdpError(f"bad m= port: {value[:20]!r}")
    port = int(port_text)
    if port > 65535:
        raise SdpError(f"m= port out of range: {port}")
    return port


def _is_null_address(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def parse_sdp(body: bytes) -> AudioOffer:
    """The first audio stream of a session description; SdpError if there is none."""
    lines = _lines(_decode(body))

    session_c: str | None = None
    session_dir: str | None = None
    media: list[MediaLine] = []
    audio_index: int | None = None
    audio_c: str | None = None
    audio_dir: str | None = None
    audio_ptime: int | None = None
    audio_rtpmap: dict[int, tuple[str, int]] = {}
    audio_crypto: list[CryptoAttribute] = []
    in_audio = False

    for kind, value in lines:
        if kind == "m":
            parts = value.split()
            if len(parts) < 4:
                raise SdpError(f"bad m= line: {value[:60]!r}")
            if not all(_TOKEN_RE.fullmatch(part) for part in (parts[0], *parts[3:])) or not (
                _PROTO_RE.fullmatch(parts[2])
            ):
                raise SdpError(f"bad m= line: {value[:60]!r}")
            line = MediaLine(parts[0], _parse_port(parts[1]), parts[2], tuple(parts[3:]))
            media.append(line)
            in_audio = audio_index is None and line.media.lower() == "audio"
            if in_audio:
                audio_index = len(media) - 1
            continue
        in_media = bool(media)
        if in_media and not in_audio:
            continue  # lines of a media section we do not use
        if kind == "c":
            address = _connection_address(value)
            if in_audio:
                audio_c = address
            else:
                session_c = address
        elif kind == "a":
            name, _, arg = value.partition(":")
            name = name.strip().lower()
            if name in DIRECTIONS and not arg:
                if in_audio:
                    audio_dir = name
                else:
                    session_dir = name
            elif in_audio and name == "rtpmap":
                entry = _parse_rtpmap(arg)
                if entry is not None:
                    audio_rtpmap.setdefault(entry[0], entry[1])
            elif in_audio and name == "ptime":
                audio_ptime = _parse_ptime(arg)
            elif in_audio and name == "crypto" and len(audio_crypto) < MAX_CRYPTO_LINES:
                try:
                    audio_crypto.append(parse_crypto(arg))
                except CryptoError:
                    pass  # a line we cannot read is one we would not choose anyway

    if audio_index is None:
        raise SdpError("no audio m= line")
    line = media[audio_index]
    payload_types: list[int] = []
    for fmt in line.fmts:
        if not _DIGITS_RE.fullmatch(fmt) or int(fmt) > 127:
            raise SdpError(f"bad RTP payload type in m=audio: {fmt[:20]!r}")
        payload_types.append(int(fmt))

    media_c = audio_c if audio_c is not None else session_c
    if media_c is None:
        raise SdpError("no c= line for the audio stream")
    address = media_c

    rtpmap: dict[int, tuple[str, int]] = {}
    for pt in payload_types:
        if pt in audio_rtpmap:
            rtpmap[pt] = audio_rtpmap[pt]
        elif pt in STATIC_PAYLOAD_TYPES:
            rtpmap[pt] = STATIC_PAYLOAD_TYPES[pt]

    dtmf_pt = next(
        (pt for pt in payload_types if rtpmap.get(pt) == ("TELEPHONE-EVENT", 8000)), None
    )

    direction = audio_dir or session_dir or "sendrecv"
    if _is_null_address(address):
        direction = _WITHOUT_RECV[direction]

    return AudioOffer(
        address=address,
        port=line.port,
        payload_types=payload_types,
        rtpmap=rtpmap,
        direction=direction,
        ptime=audio_ptime,
        dtmf_pt=dtmf_pt,
        proto=line.proto,
        media=media,
        audio_index=audio_index,
        crypto=tuple(audio_crypto),
    )


def _parse_rtpmap(arg: str) -> tuple[int, tuple[str, int]] | None:
    """``101 telephone-event/8000`` → (101, ("TELEPHONE-EVENT", 8000)); None if malformed."""
    parts = arg.split(None, 1)
    if len(parts) != 2 or not _DIGITS_RE.fullmatch(parts[0]):
        return None
    pt = int(parts[0])
    enc = parts[1].strip().split("/")
    if pt > 127 or len(enc) < 2 or not enc[0] or not _DIGITS_RE.fullmatch(enc[1]):
        return None
    return pt, (enc[0].upper(), int(enc[1]))


def _parse_ptime(arg: str) -> int | None:
    try:
        value = float(arg.strip())
    except ValueError:
        return None
    if not 0 < value <= 1000:
        return None
    return int(value)


# --- building -----------------------------------------------------------------------------


def _check_address(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise SdpError(f"not an IP address: {address!r}") from None
    return "IP6" if ip.version == 6 else "IP4"


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SdpError(f"{name} must be an integer in {low}..{high}, not {value!r}")


def _render(
    *,
    address: str,
    port: int,
    session_id: int,
    version: int,
    codecs: list[tuple[str, int]],
    dtmf_pt: int | None,
    direction: str,
    ptime: int,
    username: str,
    proto: str = "RTP/AVP",
    media: list[MediaLine] | None = None,
    audio_index: int = 0,
    crypto: Sequence[CryptoAttribute] = (),
) -> bytes:
    addrtype = _check_address(address)
    _check_int("port", port, 0, 65535)
    _check_int("session_id", session_id, 0, 2**63 - 1)
    _check_int("version", version, 0, 2**63 - 1)
    _check_int("ptime", ptime, 1, 1000)
    if direction not in DIRECTIONS:
        raise SdpError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    if not username or not _TOKEN_RE.fullmatch(username):
        raise SdpError(f"bad SDP username: {username!r}")
    if not codecs:
        raise SdpError("at least one codec is needed")
    pts: list[int] = []
    attrs: list[str] = []
    for name, pt in codecs:
        _check_int("payload type", pt, 0, 127)
        if not isinstance(name, str) or not _TOKEN_RE.fullmatch(name) or "/" in name:
            raise SdpError(f"bad codec name: {name!r}")
        if pt in pts:
            raise SdpError(f"payload type {pt} used twice")
        pts.append(pt)
        clock = STATIC_PAYLOAD_TYPES.get(pt, (name.upper(), 8000))[1]
        attrs.append(f"a=rtpmap:{pt} {name}/{clock}")
    if dtmf_pt is not None:
        _check_int("dtmf_pt", dtmf_pt, 0, 127)
        if dtmf_pt in pts:
            raise SdpError(f"payload type {dtmf_pt} used twice")
        pts.append(dtmf_pt)
        attrs.append(f"a=rtpmap:{dtmf_pt} telephone-event/8000")
        attrs.append(f"a=fmtp:{dtmf_pt} 0-16")
    if not _PROTO_RE.fullmatch(proto):
        raise SdpError(f"bad transport protocol: {proto!r}")
    for attribute in crypto:
        attrs.append(f"a=crypto:{attribute.to_sdp()}")
    attrs.append(f"a=ptime:{ptime}")
    attrs.append(f"a={direction}")

    out = [
        "v=0",
        f"o={username} {session_id} {version} IN {addrtype} {address}",
        "s=-",
        f"c=IN {addrtype} {address}",
        "t=0 0",
    ]
    audio = [f"m=audio {port} {proto} {' '.join(str(pt) for pt in pts)}", *attrs]
    if media:
        for index, line in enumerate(media):
            if index == audio_index:
                out += audio
            else:  # rejected in place (RFC 3264 §6)
                out.append(f"m={line.media} 0 {line.proto} {' '.join(line.fmts)}")
    else:
        out += audio
    return ("\r\n".join(out) + "\r\n").encode("ascii")


def build_sdp(
    *,
    address: str,
    port: int,
    session_id: int,
    version: int,
    codecs: list[tuple[str, int]],
    dtmf_pt: int | None = 101,
    direction: str = "sendrecv",
    ptime: int = 20,
    username: str = "sipdialer",
    proto: str = "RTP/AVP",
    crypto: Sequence[CryptoAttribute] = (),
) -> bytes:
    """Our session description: one audio stream with ``codecs`` as (name, payload type).

    ``session_id`` stays the same for a dialog; ``version`` goes up by one each time the
    description changes (RFC 3264 §8). ``proto`` and ``crypto`` (``a=crypto`` lines) make
    an SRTP offer. SdpError for arguments that cannot be written.
    """
    return _render(
        address=address,
        port=port,
        session_id=session_id,
        version=version,
        codecs=codecs,
        dtmf_pt=dtmf_pt,
        direction=direction,
        ptime=ptime,
        username=username,
        proto=proto,
        crypto=crypto,
    )


def choose_codec(
    offer: AudioOffer, preferred: list[str] | tuple[str, ...] = ("PCMU", "PCMA")
) -> tuple[str, int] | None:
    """The first codec of OUR ``preferred`` list the offer contains, as (name, offer's pt).

    Only 8 kHz matches; names compare case-insensitively; when the offer lists one
    encoding under several payload types the offerer's first wins. None if none match.
    """
    for wanted in preferred:
        name = wanted.upper()
        for pt in offer.payload_types:
            if offer.rtpmap.get(pt) == (name, 8000):
                return name, pt
    return None


def answer_for(
    offer: AudioOffer,
    *,
    address: str,
    port: int,
    session_id: int,
    version: int,
    supported: list[str] | tuple[str, ...] = ("PCMU", "PCMA"),
    crypto: CryptoAttribute | None = None,
) -> bytes | None:
    """Our RFC 3264 answer to ``offer``, or None when it must be refused with 488.

    One codec (see :func:`choose_codec`), telephone-event if offered, the direction
    mirrored (sendonly → recvonly, recvonly → sendonly, inactive → inactive), every other
    m-line rejected with port 0 in its place; ``crypto``, the ``a=crypto`` line answering
    an SRTP offer (required for ``RTP/SAVP``; with ``RTP/AVP`` it answers a best-effort
    offer).
    """
    proto = offer.proto.upper()
    if offer.port == 0 or not (
        proto in _PLAIN_RTP or (proto in _SECURE_RTP and crypto is not None)
    ):
        return None
    codec = choose_codec(offer, supported)
    if codec is None:
        return None
    media = offer.media or [
        MediaLine("audio", offer.port, offer.proto, tuple(map(str, offer.payload_types)))
    ]
    audio_index = offer.audio_index if offer.media else 0
    return _render(
        address=address,
        port=port,
        session_id=session_id,
        version=version,
        codecs=[codec],
        dtmf_pt=offer.dtmf_pt,
        direction=_MIRROR.get(offer.direction, "sendrecv"),
        ptime=20,
        username="sipdialer",
        proto=offer.proto,
        media=media,
        audio_index=audio_index,
        crypto=(crypto,) if crypto is not None else (),
    )


class OurSdpVersion:
    """The ``o=`` version of the SDP we send in one session (one leg), RFC 3264 §8: each
    description is rendered at the current version and, when it differs from the last one
    we sent, again at the next version. Nothing refused (None) changes the version."""

    __slots__ = ("_last", "version")

    def __init__(self, first: int = 1) -> None:
        self.version = first
        """The version of the last description sent (or of the first one to be sent)."""
        self._last: bytes | None = None

    def render(self, sdp_at: Callable[[int], bytes | None]) -> bytes | None:
        """Our next description: ``sdp_at(version)`` with the version it must carry, or
        None when ``sdp_at`` gives None (an offer we refuse: nothing is sent)."""
        body = sdp_at(self.version)
        if body is None:
            return None
        if self._last is not None and body != self._last:
            self.version += 1
            body = sdp_at(self.version)
            if body is None:  # the same inputs at another version: cannot happen
                raise SdpError("our session description could not be rendered again")
        self._last = body
        return body
