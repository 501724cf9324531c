"""The RTP relay: a :class:`Bridge` of two :class:`MediaLeg` sockets, A = agent, B = callee.

Owns the media path of one call and knows nothing of SIP or HTTP: the call engine tells
it where to send (:meth:`MediaLeg.set_remote`, from SDP), when to relay
(:meth:`Bridge.connect`), what to play to the agent meanwhile (:meth:`Bridge.play_to_a`)
and where to record (:meth:`Bridge.start_recording`).

Behaviour:

* **Symmetric RTP / latching.** Each leg sends to the address SDP gave and accepts RTP
  from one source only, its :class:`~sipdialer.rtp.latch.Latch`'s: the SDP address
  itself, or (NAT) a source that has sent a run of in-sequence packets of a negotiated
  payload type and one SSRC; once latched it sends there and drops every other source
  (``packets_foreign``) until :meth:`MediaLeg.set_remote` gives a *different* address,
  which the latch then follows, never going back to the address the SDP has left. No
  SDP yet: every packet is foreign. See :mod:`sipdialer.rtp.latch` for the rule.
* **Unshareable sockets.** Each leg's socket is bound by the
  :class:`~sipdialer.rtp.ports.PortAllocator` (a random free even port) without
  ``SO_REUSEADDR``/``SO_REUSEPORT``, and :meth:`Bridge.open` clears both once more after
  handing the socket to the loop (uvloop's datagram transports used to set
  ``SO_REUSEADDR``; the relay reads its sockets itself now, but the guarantee is kept
  explicit), so no other socket can bind a live relay port (bpo-37228).
* **Forwarding.** Same codec on both legs: the payload is forwarded untouched (PT
  rewritten if the numbers differ). PCMU↔PCMA: transcoded with G.711's code-conversion
  table in one ``bytes.translate``. Telephone-events (RFC 4733, the leg's ``dtmf_pt``)
  go out with the other leg's ``dtmf_pt``, or are dropped if it has none. Other payload
  types (comfort noise, codecs not negotiated) are dropped. CSRCs, header extensions and
  padding are not forwarded: the relay is the source of each outgoing stream.
* **One stream per receiver.** Each outgoing direction has its own SSRC and its own
  sequence/timestamp space. When what feeds it changes — a new input SSRC, ringback →
  relayed media, resuming after hold — the offsets are recomputed so the sequence goes
  on by one and the timestamp by the wall-clock time elapsed (at least one 20 ms frame),
  and the marker bit is set on the first packet of the new source.
* **Ringback.** :meth:`Bridge.play_to_a` loops int16 samples to A as 20 ms packets in A's
  codec, paced by ``loop.call_at`` on an absolute schedule; the first packet relayed to A
  stops it.
* **Hold.** :meth:`MediaLeg.hold` stops sending to that leg (received packets are still
  recorded).
* **Recording.** Audio payloads received on A and B are queued, with their arrival
  time and codec, in the :class:`~sipdialer.rtp.recorder.Recorder`'s bounded channel
  queues (:class:`~sipdialer.rtp.recorder.PendingPayloads`, a C buffer the fast path
  copies each payload into); the bridge calls
  :meth:`~sipdialer.rtp.recorder.Recorder.flush_async` every
  :data:`~sipdialer.rtp.recorder.FLUSH_INTERVAL` seconds from a loop timer (the first
  one at a random phase, so calls started together do not flush together): the audio is
  placed on the loop, the file is written by the recorder's writer thread, so a slow disk
  never stalls the relay. :meth:`Bridge.stop_recording` and :meth:`Bridge.close` hand the
  recorder's close to that thread; :meth:`Bridge.close` waits for it (at most
  :data:`~sipdialer.rtp.recorder.WRITE_STALL` s). A recorder error (disk full, a write
  stalled) stops the recording, never the call.
* **SRTP (SDES, RFC 3711/4568).** :meth:`MediaLeg.set_srtp` gives a leg the key its party
  encrypts with (inbound) and ours for it (outbound), each direction optional, so any mix
  bridges: SRTP↔RTP, SRTP↔SRTP with different keys, PCMU↔PCMA under SRTP. An inbound key
  makes the leg check and decrypt every packet first (libsrtp via
  :mod:`sipdialer.rtp.srtp`), so the latch, the recorder (clear audio) and the relaying
  see only authentic, decrypted RTP; a forged or replayed packet is dropped and counted
  (``srtp_forged``, ``srtp_replayed``) and never latches. An outbound key rebinds the
  leg's send function to one that encrypts, so relayed audio, DTMF and ringback all go
  out encrypted and nothing reaches that leg in clear. RTCP is not relayed at all (the
  relay is the source of each outgoing stream): with rtcp-mux a peer's SRTCP arrives on
  the RTP port (second byte 200..204, RFC 5761 §4) and is authenticated (a forgery is
  counted) and dropped; plain RTCP is dropped as an unknown payload type. Without
  rtcp-mux, SRTCP goes to port+1, where nothing listens (the allocator hands out even
  ports and binds only them): the kernel discards it.

**The hot path is in C** (:mod:`sipdialer.rtp._fastrelay`, the ``RelayCore`` base of
:class:`MediaLeg`, which holds the leg's hot state as C members under the same names this
module reads and writes). Every leg's socket is in one epoll set per event loop (its
``Reactor``, one reader of the loop for all legs): a wake-up takes every ready leg at once
and drains each with ``_readable()``: one ``recvmmsg`` for every datagram waiting, then per
datagram either the
*usual case* — plain RTP (no padding, extension, CSRC) of the negotiated audio PT from the
latched source, which the recorder has room for, to a peer that is sending, has no
ringback playing, no outbound SRTP and already carries this SSRC — counted, copied into the
recorder's queue, rewritten in place (and transcoded through the G.711 table) and sent with
one ``sendto`` to the peer's stored sockaddr; or, for every other datagram,
:meth:`MediaLeg.datagram_received`, the Python rules this docstring describes. The C path
is only a shortcut through those same rules (``fast_packets`` counts what it took). A
datagram larger than ``_fastrelay.SLOT`` (4 KiB; 200 ms of G.711 is 1,612 bytes) is
truncated by the kernel and dropped (``packets_dropped``). Measured (callgrind,
``bench/relay_cost.py``, through uvloop): ~1,800 user-space instructions per relayed packet,
~7,000 recorded (was ~19,000 / ~28,000 through uvloop's datagram transport and a Python
callback per datagram). ``datagram_received`` has no logging, no awaits, no dict lookups;
SRTP adds one libsrtp call per direction and the copies pylibsrtp makes. The latch costs
one sockaddr comparison with the latched source; only packets from elsewhere take the
slow path (:meth:`MediaLeg._admit`). Remote addresses must be IP literals of
the socket's family (:meth:`MediaLeg.media_address`; an IPv4 address reaches an IPv6
socket bound to ``::`` as ``::ffff:a.b.c.d``), so ``sendto`` never resolves a name; any
other address raises :class:`MediaAddressError`. Works with asyncio's loop and uvloop.

Hand-written rather than a library (aiortc, rtpproxy): those terminate media or run as
separate daemons; a B2BUA relay is ~one header rewrite and a ``sendto`` per packet, and
its per-packet cost in Python through an asyncio transport was the relay's limit (issue
14), hence the C fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sipdialer.rtp._fastrelay import Reactor, RelayCore
from sipdialer.rtp.errors import RtpError
from sipdialer.rtp.g711 import ALAW_TO_ULAW, ULAW_TO_ALAW, encode
from sipdialer.rtp.latch import Latch
from sipdialer.rtp.packet import HEADER, REWRITE, payload_bounds
from sipdialer.rtp.ports import PortAllocator
from sipdialer.rtp.recorder import (
    FLUSH_INTERVAL,
    WRITE_STALL,
    Channel,
    PendingPayloads,
    Recorder,
    describe_os_error,
)
from sipdialer.rtp.srtp import SrtpKey, SrtpReceiver, SrtpSender

__all__ = ["Bridge", "Codec", "MediaAddressError", "MediaLeg", "media_address"]

log = logging.getLogger("sipdialer.rtp")

Addr = tuple[Any, ...]

CODECS = ("PCMU", "PCMA")
_STATIC_NAME = {0: "PCMU", 8: "PCMA"}
FRAME_SAMPLES = 160  # 20 ms at 8 kHz
PTIME = 0.02
_RATE = 8000

# ``_src`` values that are no real SSRC (real ones are 0..2**32-1).
_SRC_NONE = -2  # nothing sent yet
_SRC_RINGBACK = -1
_SRC_RESYNC = -3  # force an offset recomputation on the next packet (after hold/skip)

_unpack = HEADER.unpack_from
_pack = HEADER.pack
_pack_into = REWRITE.pack_into


SendTo = Callable[[bytes | bytearray, Addr], object]


def _encrypting(sendto: SendTo, sender: SrtpSender) -> SendTo:
    """``sendto`` that encrypts first (``SrtpProtectError``, an ``OSError``, if refused)."""
    protect = sender.rtp

    def send(packet: bytes | bytearray, addr: Addr) -> object:
        return sendto(protect(packet), addr)

    return send


#: Each event loop's :class:`~sipdialer.rtp._fastrelay.Reactor` (while it watches a leg).
_reactors: dict[asyncio.AbstractEventLoop, Reactor] = {}


def _watch(leg: MediaLeg, loop: asyncio.AbstractEventLoop) -> None:
    """Have ``loop`` read ``leg``'s socket: through the loop's one reactor (an epoll set
    of every leg, one reader for all of them), made on first use."""
    reactor = _reactors.get(loop)
    if reactor is None:
        reactor = Reactor()
        loop.add_reader(reactor.fileno(), reactor.run)
        _reactors[loop] = reactor
    reactor.add(leg)


def _unwatch(leg: MediaLeg, loop: asyncio.AbstractEventLoop) -> None:
    """Stop reading ``leg``'s socket (before it closes); the last leg takes the reactor."""
    reactor = _reactors.get(loop)
    if reactor is not None and reactor.remove(leg) and reactor.legs == 0:
        del _reactors[loop]
        with contextlib.suppress(RuntimeError):  # a loop already closed has no readers
            loop.remove_reader(reactor.fileno())
        reactor.close()


def _exclusive(sock: socket.socket) -> None:
    """Make ``sock``'s port unshareable: clear SO_REUSEADDR (and SO_REUSEPORT).

    Linux checks the flag of the socket already bound when another one binds, so clearing
    it after the bind (and after uvloop has set it) is enough."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)


def _dual_stack(sock: socket.socket) -> bool:
    """An IPv6 socket bound to ``::`` that also takes IPv4 (as ``::ffff:a.b.c.d``)."""
    if sock.family != socket.AF_INET6 or sock.getsockname()[0] != "::":
        return False
    return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


class MediaAddressError(RtpError, ValueError):
    """An address from SDP that RTP cannot be sent to from this leg's socket: a host name,
    a multicast address, another address family, a port out of range."""


def media_address(addr: tuple[str, int], family: int, dual_stack: bool) -> Addr | None:
    """``addr`` (from SDP) as a socket of ``family`` sends to it and reports the sources of
    what it receives (``dual_stack``: an IPv6 socket on ``::`` that also takes IPv4); None
    for the null address (hold). :class:`MediaAddressError` for a host name, a multicast
    address, a port out of range, or an address of another family than the socket's (but
    IPv4 on a dual-stack socket, and an IPv4-mapped IPv6 address on an IPv4 socket). The
    one rule set for :meth:`MediaLeg.media_address` and the media workers' proxies."""
    host, port = addr
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        raise MediaAddressError(f"RTP remote must be an IP address, not {host!r}") from None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # judged, and reached, as the IPv4 address it is
    if ip.version == 6 and ip.scope_id:
        raise MediaAddressError(f"RTP remote {ip} is scoped to an interface")
    if ip.is_unspecified:
        return None
    if ip.is_multicast:
        raise MediaAddressError(f"RTP remote {ip} is a multicast address")
    if not 0 < port <= 65535:
        raise MediaAddressError(f"RTP remote port {port} is out of range")
    if family == socket.AF_INET6:
        if ip.version == 4 and dual_stack:
            ip = ipaddress.IPv6Address(f"::ffff:{ip}")
        if ip.version == 6:
            # the form the kernel reports sources in: inet_ntop's text, flowinfo, scope
            return (socket.inet_ntop(socket.AF_INET6, ip.packed), port, 0, 0)
    elif ip.version == 4:
        return (str(ip), port)
    name = "AF_INET6" if family == socket.AF_INET6 else "AF_INET"
    raise MediaAddressError(f"RTP remote {ip} is not reachable from {name}")


@dataclass(frozen=True)
class Codec:
    """What a leg negotiated in SDP: a G.711 codec, its PT on that leg, and DTMF's PT."""

    name: str  # "PCMU" or "PCMA"
    pt: int  # payload type number on that leg (0 / 8, or dynamic)
    dtmf_pt: int | None = None  # telephone-event PT on that leg (RFC 4733), None if none

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ValueError(f"unsupported codec {self.name!r} (relay handles PCMU, PCMA)")
        if not 0 <= self.pt <= 127:
            raise ValueError(f"bad payload type {self.pt}")
        if self.dtmf_pt is not None and (not 0 <= self.dtmf_pt <= 127 or self.dtmf_pt == self.pt):
            raise ValueError(f"bad telephone-event payload type {self.dtmf_pt}")


def _translation(src: str, dst: str) -> bytes | None:
    if src == dst:
        return None
    return ULAW_TO_ALAW if src == "PCMU" else ALAW_TO_ULAW


class MediaLeg(RelayCore):
    """One RTP socket of a bridge: receives from and sends to one party.

    Stats (read freely): ``packets_in``, ``bytes_in``, ``packets_out``,
    ``packets_dropped`` (malformed, foreign source, unknown PT, nowhere to send),
    ``packets_foreign`` (of those, the packets from a source the latch refused),
    ``last_rx`` (loop time of the last packet of its audio, telephone-event or G.711 PT —
    what the RTP timeout counts; the bridge's open time before any),
    ``remote`` (where we send: SDP address, then the latched source),
    ``srtp_forged`` / ``srtp_replayed`` (SRTP/SRTCP packets that failed authentication /
    the replay check, over the leg's life; see :meth:`set_srtp`). ``packets_in`` and
    ``bytes_in`` count decrypted packets, ``packets_dropped`` also the SRTP failures and
    all RTCP.
    """

    # the hot state (counters, latch source, stream offsets, …) is RelayCore's C members
    __slots__ = (
        "_dtmf_pt",
        "_dual_stack",
        "_held",
        "_init_seq",
        "_init_ts",
        "_latch",
        "_loop",
        "_rb_codec",
        "_rb_frames",
        "_rb_index",
        "_rb_next",
        "_rb_samples",
        "_sendto",
        "_srtp_forged",
        "_srtp_in",
        "_srtp_out",
        "_srtp_replayed",
        "_srtp_rx",
        "closed",
        "codec",
        "local_port",
        "name",
        "packets_foreign",
        "sock",
    )

    def __init__(self, name: str, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.sock = sock
        self._fd = sock.fileno()
        self.local_port: int = sock.getsockname()[1]
        self._loop = loop
        self._time = loop.time
        self._sendto: SendTo = sock.sendto
        self.closed: asyncio.Future[None] = loop.create_future()
        self.peer: MediaLeg = self  # set by the bridge
        # Where to send, and the one source we take RTP from (None: not latched).
        self.remote: Addr | None = None
        self._latch = Latch()
        self._source: Addr | None = None
        self._dual_stack = _dual_stack(sock)
        self.codec: Codec | None = None
        self._audio_pt = -1
        self._audio_name = ""
        self._dtmf_pt = -1
        self._xlate: bytes | None = None  # our codec → peer's codec
        self._forward = False  # relay what we receive to the peer (bridge connected)
        self._held = False
        self._sending = False  # remote, codec known and not held
        # Outgoing stream (what this leg's party receives).
        self._ssrc = secrets.randbits(32)
        self._init_seq = secrets.randbits(16)  # "last sent" before anything was sent
        self._init_ts = secrets.randbits(32)
        self._out_seq = -1  # sequence number and timestamp of the last packet sent (-1: none)
        self._out_ts = 0
        self._last_tx = None
        self._src = _SRC_NONE
        self._seq_off = 0
        self._ts_off = 0
        self._mark = 0
        # Ringback.
        self._rb_samples: npt.NDArray[np.int16] | None = None
        self._rb_frames: list[bytes] = []
        self._rb_codec = ""
        self._rb_index = 0
        self._rb_next = 0.0
        self._rb_handle: asyncio.Handle | None = None
        # SRTP: keys as given, their contexts, and the receiver's ``rtp`` (None: plain).
        self._srtp_in: SrtpKey | None = None
        self._srtp_out: SrtpKey | None = None
        self._srtp_rx: SrtpReceiver | None = None
        self._srtp_tx: SrtpSender | None = None
        self._unprotect: Callable[[bytes], bytes | None] | None = None
        self._srtp_forged = 0  # counts of the receivers replaced by a key change
        self._srtp_replayed = 0
        # Recording: the recorder channel's bounded queue (None: not recording).
        self._rec: PendingPayloads | None = None
        # Stats.
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.packets_dropped = 0
        self.packets_foreign = 0
        self.last_rx = loop.time()

    def __repr__(self) -> str:
        return f"<MediaLeg {self.name} :{self.local_port} → {self.remote} {self.codec}>"

    # -- control (call engine) ---------------------------------------------------------

    def set_remote(self, addr: tuple[str, int], codec: Codec) -> None:
        """Send to ``addr`` in ``codec`` (from SDP). May be called again at any time.

        A different address than the previous SDP one reopens the latch for that address
        (see :mod:`sipdialer.rtp.latch`): we send there, and take RTP from it or from a
        source that learns its way in, never again from the address the SDP has left. The
        same address keeps the latch (a re-INVITE that changes only direction or codec),
        and so does the null address (``0.0.0.0``/``::``, RFC 2543 hold: the caller holds
        the leg). ``addr`` must be an IP literal the socket can reach
        (:class:`MediaAddressError` otherwise, and nothing changes): names are resolved by
        the caller, never per packet.
        """
        target = self.media_address(addr)
        if target is not None:
            if self._latch.follow(target):
                self.remote = target
                self._source = None
        elif self._latch.sdp is None:
            # on hold from the start: nowhere to send, but a sender may still learn its
            # way in (nothing comes from the null address itself)
            null = ("::", addr[1], 0, 0) if self.sock.family == socket.AF_INET6 else addr
            self._latch.follow(null)
        self.codec = codec
        self._audio_pt = codec.pt
        self._audio_name = codec.name
        self._dtmf_pt = -1 if codec.dtmf_pt is None else codec.dtmf_pt
        self._update()
        self.peer._update()

    def media_address(self, addr: tuple[str, int]) -> Addr | None:
        """``addr`` (from SDP) as this leg's socket sends to it: see :func:`media_address`."""
        return media_address(addr, self.sock.family, self._dual_stack)

    @property
    def source(self) -> Addr | None:
        """The latched source, the one address RTP is taken from (None until latched)."""
        return self._source

    @property
    def latch(self) -> Latch:
        """This leg's latch (read it, do not drive it: :meth:`set_remote` does)."""
        return self._latch

    def set_srtp(self, inbound: SrtpKey | None, outbound: SrtpKey | None) -> None:
        """Encrypt this leg's media (SDES): ``None, None`` is plain RTP, the default.

        ``inbound`` is the key this leg's party encrypts with (from ITS SDP ``a=crypto``):
        every packet arriving on this leg's socket is authenticated, replay-checked and
        decrypted before anything else (latch, recorder, relay); one that fails is
        dropped and counted (``srtp_forged``/``srtp_replayed``) and never latches. SRTCP
        arriving here (rtcp-mux) is authenticated and dropped. ``outbound`` is OUR key
        for this leg (the ``a=crypto`` we sent it): everything this leg sends (relayed
        audio, DTMF, ringback) is encrypted with it. Each direction may be set alone.

        May be called again at any time (re-INVITE), per direction: the same key (equal
        suite and bytes) keeps its libsrtp context (rollover counter, replay window and
        per-SSRC state go on); a different key starts a new context (a new SSRC from the
        peer needs none: the inbound context takes any SSRC); ``None`` returns that
        direction to plain RTP. After an inbound re-key the old key is still accepted
        for packets in flight (:data:`~sipdialer.rtp.srtp.KEY_OVERLAP` seconds at most,
        and no longer once a packet under the new key has arrived). A suite we do not
        speak or a key of the wrong length raises
        :class:`~sipdialer.rtp.srtp.SrtpSetupError` and changes nothing.
        """
        rx, tx = self._srtp_rx, self._srtp_tx
        if inbound != self._srtp_in:
            rx = (
                None
                if inbound is None
                else SrtpReceiver(inbound.suite, inbound.key_salt, previous=self._srtp_rx)
            )
        if outbound != self._srtp_out:
            tx = None if outbound is None else SrtpSender(outbound.suite, outbound.key_salt)
        if rx is not self._srtp_rx:
            old = self._srtp_rx
            if old is not None:
                self._srtp_forged += old.forged
                self._srtp_replayed += old.replayed
            self._srtp_rx = rx
            self._srtp_in = inbound
            self._unprotect = None if rx is None else rx.rtp
        if tx is not self._srtp_tx:
            self._srtp_tx = tx
            self._srtp_out = outbound
            self._sendto = self.sock.sendto if tx is None else _encrypting(self.sock.sendto, tx)

    @property
    def srtp_active(self) -> bool:
        """True while either direction of this leg is encrypted."""
        return self._srtp_rx is not None or self._srtp_tx is not None

    @property
    def srtp_forged(self) -> int:
        """SRTP/SRTCP packets that failed authentication on this leg (all keys so far)."""
        rx = self._srtp_rx
        return self._srtp_forged + (0 if rx is None else rx.forged)

    @property
    def srtp_replayed(self) -> int:
        """SRTP packets dropped by the replay check on this leg (all keys so far)."""
        rx = self._srtp_rx
        return self._srtp_replayed + (0 if rx is None else rx.replayed)

    def hold(self, on: bool) -> None:
        """Stop (``True``) or resume (``False``) sending to this leg."""
        if self._held and not on:
            self._src = _SRC_RESYNC  # continue seq by one, ts by elapsed time, marker
        self._held = on
        self._update()

    @property
    def held(self) -> bool:
        return self._held

    @property
    def ssrc(self) -> int:
        """The SSRC of the stream this leg sends."""
        return self._ssrc

    def _update(self) -> None:
        self._sending = self.remote is not None and self.codec is not None and not self._held
        peer = self.peer
        if self.codec is not None and peer.codec is not None:
            self._xlate = _translation(self.codec.name, peer.codec.name)
        else:
            self._xlate = None

    # -- receiving ---------------------------------------------------------------------

    # ``_readable()`` (RelayCore, C) drains the socket when the loop's reactor finds it
    # ready: it relays the usual datagrams itself and hands every other one to
    # datagram_received.

    def datagram_received(self, data: bytes, addr: Any) -> None:  # the rules, in Python
        if self._unprotect is not None:  # SRTP: only authentic packets go any further
            if len(data) > 1 and 200 <= data[1] <= 204:  # SRTCP, rtcp-mux (RFC 5761 §4)
                self._srtcp(data)
                return
            clear = self._unprotect(data)
            if clear is None:  # forged or replayed (counted by the receiver)
                self.packets_dropped += 1
                return
            data = clear
        n = len(data)
        if n < 12:
            self.packets_dropped += 1
            return
        b0, b1, seq, ts, ssrc = _unpack(data)
        if b0 == 0x80:  # version 2, no padding, extension or CSRC: the usual case
            start = 12
            end = n
        else:
            start, end = payload_bounds(data)
            if start < 0:  # version != 2, lengths overrunning the packet
                self.packets_dropped += 1
                return
        if addr != self._source and not self._admit(addr, b1, seq, ssrc):
            return
        now = self._time()
        self.packets_in += 1
        self.bytes_in += n
        if b1 & 0x7F != self._audio_pt:
            self._slow(data, b1, seq, ts, ssrc, start, end, now)
            return
        self.last_rx = now
        if self._rec is not None:
            self._rec.feed(data[start:end], self._audio_name, now)
        peer = self.peer
        if not (self._forward and peer._sending):
            return
        if peer._rb_handle is not None:
            peer._stop_ringback()
        if ssrc != peer._src:
            peer._switch(ssrc, seq, ts, now)
        tbl = self._xlate
        oseq = (seq + peer._seq_off) & 0xFFFF
        ots = (ts + peer._ts_off) & 0xFFFFFFFF
        if tbl is None and start == 12 and end == n:
            out: bytes | bytearray = bytearray(data)
            _pack_into(out, 1, (b1 & 0x80) | peer._mark | peer._audio_pt, oseq, ots, peer._ssrc)
        else:
            payload = data[start:end]
            if tbl is not None:
                payload = payload.translate(tbl)
            out = _pack(0x80, (b1 & 0x80) | peer._mark | peer._audio_pt, oseq, ots, peer._ssrc)
            out += payload
        peer._send(out, oseq, ots, now)

    def _srtcp(self, data: bytes) -> None:
        """SRTCP on the RTP port: authenticated (a forgery is counted), then dropped."""
        rx = self._srtp_rx
        if rx is not None:
            rx.rtcp(data)
        self.packets_dropped += 1

    def _admit(self, addr: Addr, b1: int, seq: int, ssrc: int) -> bool:
        """A packet from another source than the latched one: ask the latch. True: it
        has latched onto ``addr`` (send there from now on); False: foreign, dropped."""
        pt = b1 & 0x7F
        pt_ok = pt == self._audio_pt or pt == self._dtmf_pt
        if not self._latch.offer(addr, pt_ok, seq, ssrc, self._time()):
            self.packets_foreign += 1
            self.packets_dropped += 1
            return False
        self._source = addr
        self.remote = addr
        self._sending = self.codec is not None and not self._held
        return True

    def _slow(
        self, data: bytes, b1: int, seq: int, ts: int, ssrc: int, start: int, end: int, now: float
    ) -> None:
        """Everything but negotiated audio: telephone-events, static PT 0/8, others."""
        peer = self.peer
        pt = b1 & 0x7F
        if pt == self._dtmf_pt:
            self.last_rx = now
            out_pt = peer._dtmf_pt
            tbl = None
            if out_pt < 0:  # the other side did not offer telephone-event
                self.packets_dropped += 1
                return
        else:
            name = _STATIC_NAME.get(pt)
            if name is None or self.codec is None:  # CN, unknown PTs: not activity either
                self.packets_dropped += 1
                return
            self.last_rx = now
            if self._rec is not None:
                self._rec.feed(data[start:end], name, now)
            out_pt = peer._audio_pt
            tbl = _translation(name, peer._audio_name) if peer.codec is not None else None
        if not (self._forward and peer._sending):
            return
        if peer._rb_handle is not None:
            peer._stop_ringback()
        if ssrc != peer._src:
            peer._switch(ssrc, seq, ts, now)
        oseq = (seq + peer._seq_off) & 0xFFFF
        ots = (ts + peer._ts_off) & 0xFFFFFFFF
        payload = data[start:end]
        if tbl is not None:
            payload = payload.translate(tbl)
        out = _pack(0x80, (b1 & 0x80) | peer._mark | out_pt, oseq, ots, peer._ssrc) + payload
        peer._send(out, oseq, ots, now)

    # -- outgoing stream ---------------------------------------------------------------

    def _last_seq_ts(self) -> tuple[int, int]:
        """Sequence number and timestamp of the last packet sent (or the random start)."""
        if self._out_seq < 0:
            return self._init_seq, self._init_ts
        return self._out_seq, self._out_ts

    def _switch(self, src: int, seq: int, ts: int, now: float) -> None:
        """A new source feeds this leg: continue seq by one and ts by elapsed time."""
        if self._last_tx is None:
            gap = FRAME_SAMPLES
        else:
            gap = max(FRAME_SAMPLES, int((now - self._last_tx) * _RATE + 0.5))
        last_seq, last_ts = self._last_seq_ts()
        self._seq_off = (last_seq + 1 - seq) & 0xFFFF
        self._ts_off = (last_ts + gap - ts) & 0xFFFFFFFF
        self._src = src
        self._mark = 0x80

    def _send(self, out: bytes | bytearray, seq: int, ts: int, now: float) -> None:
        self._mark = 0
        self._out_seq = seq
        self._out_ts = ts
        self._last_tx = now
        try:
            # ignore: _send runs only while _sending, which implies remote is set
            self._sendto(out, self.remote)  # type: ignore[arg-type]
        except OSError:
            self.packets_dropped += 1
            return
        self.packets_out += 1

    # -- ringback ----------------------------------------------------------------------

    def play(self, samples: npt.NDArray[np.int16] | None) -> None:
        """Loop ``samples`` (int16, 8 kHz mono) to this leg in 20 ms packets; None stops."""
        if samples is None:
            self._stop_ringback()
            return
        samples = np.asarray(samples, dtype=np.int16)
        if samples.ndim != 1 or not len(samples):
            raise ValueError("ringback samples must be a non-empty 1-D int16 array")
        pad = -len(samples) % FRAME_SAMPLES
        self._rb_samples = np.concatenate([samples, np.zeros(pad, dtype=np.int16)])
        self._rb_codec = ""
        self._rb_index = 0
        if self._rb_handle is None and not self.closed.done():
            self._rb_next = self._time()
            self._rb_handle = self._loop.call_soon(self._rb_tick)

    @property
    def playing(self) -> bool:
        return self._rb_handle is not None

    def _stop_ringback(self) -> None:
        if self._rb_handle is not None:
            self._rb_handle.cancel()
            self._rb_handle = None

    def _rb_tick(self) -> None:
        now = self._time()
        samples = self._rb_samples
        if self._sending and samples is not None and self.codec is not None:
            if self._rb_codec != self.codec.name:
                coded = encode(samples, self.codec.name)
                self._rb_frames = [
                    coded[i : i + FRAME_SAMPLES] for i in range(0, len(coded), FRAME_SAMPLES)
                ]
                self._rb_codec = self.codec.name
                self._rb_index %= len(self._rb_frames)
            payload = self._rb_frames[self._rb_index]
            self._rb_index = (self._rb_index + 1) % len(self._rb_frames)
            if self._src != _SRC_RINGBACK:
                # New source: with input seq = ts = 0 the offsets are the next values.
                self._switch(_SRC_RINGBACK, 0, 0, now)
                seq = self._seq_off
                ts = self._ts_off
            else:
                seq, ts = self._last_seq_ts()
                seq += 1
                ts += FRAME_SAMPLES
            seq &= 0xFFFF
            ts &= 0xFFFFFFFF
            out = _pack(0x80, self._mark | self._audio_pt, seq, ts, self._ssrc) + payload
            self._send(out, seq, ts, now)
        elif self._src == _SRC_RINGBACK:
            self._src = _SRC_RESYNC  # not sent: re-base when we send again
        self._rb_next += PTIME
        if self._rb_next < now - 5 * PTIME:  # far behind (loop stalled): don't burst
            self._rb_next = now + PTIME
        self._rb_handle = self._loop.call_at(self._rb_next, self._rb_tick)

    def _record_to(self, channel: Channel | None) -> None:
        self._rec = None if channel is None else channel.payloads

    def _close(self) -> None:
        self._stop_ringback()
        self._forward = False
        self._sending = False
        self._record_to(None)
        if self._fd >= 0:
            _unwatch(self, self._loop)
            self._fd = -1  # what _readable() checks between datagrams
        self.sock.close()
        if not self.closed.done():
            self.closed.set_result(None)


class Bridge:
    """Two media legs of one call (A = agent, B = callee) and what runs between them."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        allocator: PortAllocator,
        a: MediaLeg,
        b: MediaLeg,
    ) -> None:
        self._loop = loop
        self._allocator = allocator
        self.a = a
        self.b = b
        a.peer = b
        b.peer = a
        self.connected = False
        self.recorder: Recorder | None = None
        self.recording_error: BaseException | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        #: Recordings this bridge stopped whose file the writer thread is finishing.
        self._recordings_closing: list[tuple[Recorder, asyncio.Future[None]]] = []
        self._closed = False

    @classmethod
    async def open(cls, host: str, allocator: PortAllocator) -> Bridge:
        """Bind two UDP sockets on ``host`` from ``allocator`` (``PortsExhausted`` if none)."""
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []
        legs: list[MediaLeg] = []
        try:
            for name in ("A", "B"):
                sock = allocator.allocate(host)
                socks.append(sock)
                sock.setblocking(False)
                leg = MediaLeg(name, sock, loop)
                legs.append(leg)
                _watch(leg, loop)
                _exclusive(sock)
        except BaseException:
            for leg in legs:
                leg._close()  # its reader off the loop
            for sock in socks:
                port = sock.getsockname()[1]
                sock.close()
                allocator.release(port)
            raise
        return cls(loop, allocator, legs[0], legs[1])

    def __repr__(self) -> str:
        return f"<Bridge A={self.a!r} B={self.b!r} connected={self.connected}>"

    def connect(self) -> None:
        """Relay A→B and B→A from now on (on early media or answer)."""
        if self._closed:
            return
        self.connected = True
        self.a._forward = True
        self.b._forward = True

    def play_to_a(self, samples: npt.NDArray[np.int16] | None) -> None:
        """Loop int16 8 kHz mono ``samples`` to A (ringback); None stops.

        The first packet relayed from B to A stops it by itself; the engine stops it at
        the callee's answer (a callee may answer long before its first packet).
        """
        if not self._closed:
            self.a.play(samples)

    def start_recording(self, recorder: Recorder) -> None:
        """Record A's audio (left) and B's (right) into ``recorder`` until :meth:`close`."""
        if self._closed:
            raise RuntimeError("bridge is closed")
        if self.recorder is not None and not self.recorder.closed:
            raise RuntimeError("bridge is already recording")
        self.recorder = recorder
        self.a._record_to(recorder.a)
        self.b._record_to(recorder.b)
        # The first flush at a random point of [0.5, 1.5) intervals: calls started
        # together (a campaign) do not flush together.
        first = FLUSH_INTERVAL * (0.5 + random.random())
        self._flush_handle = self._loop.call_later(first, self._flush_tick)

    def _flush_tick(self) -> None:
        self._flush_handle = None
        recorder = self.recorder
        if recorder is None or self._closed:
            return
        try:
            recorder.flush_async(self._loop.time())  # the file IO runs on the writer thread
        except Exception as e:  # disk full, I/O error, stall: stop recording, keep the call up
            log.error(
                "event=recording_failed path=%s error=%s",
                recorder.path,
                describe_os_error(e),
                exc_info=not isinstance(e, OSError),
            )
            self._stop_recording(e)
            return
        self._flush_handle = self._loop.call_later(FLUSH_INTERVAL, self._flush_tick)

    def stop_recording(self) -> None:
        """Finish the recording now (the call goes on); :meth:`close` does it too.

        The file is finished on the recorder's writer thread: :meth:`close` waits for it.
        """
        self._stop_recording(None)

    def _stop_recording(self, error: BaseException | None) -> None:
        self.a._record_to(None)
        self.b._record_to(None)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if error is not None and self.recording_error is None:
            self.recording_error = error
        recorder = self.recorder
        if recorder is not None and all(r is not recorder for r, _ in self._recordings_closing):
            done = asyncio.wrap_future(recorder.close_async(self._loop.time()), loop=self._loop)
            self._recordings_closing.append((recorder, done))
            done.add_done_callback(lambda f: self._recording_closed(recorder, f))

    def _recording_closed(self, recorder: Recorder, done: asyncio.Future[None]) -> None:
        if done.cancelled():
            return
        e = done.exception()
        if e is not None:
            log.error(
                "event=recording_close_failed path=%s error=%s",
                recorder.path,
                describe_os_error(e),
                exc_info=None if isinstance(e, OSError) else e,
            )
            if self.recording_error is None:
                self.recording_error = e

    async def _finish_recordings(self) -> None:
        """Wait (at most :data:`~sipdialer.rtp.recorder.WRITE_STALL` s) for the writer
        thread to finish this bridge's recordings; a file not finished by then is marked
        partial (the writer still closes it when its disk answers)."""
        pending = [f for _, f in self._recordings_closing if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=WRITE_STALL)
        for recorder, done in self._recordings_closing:
            if not done.done():
                log.warning("event=recording_close_stalled path=%s", recorder.path)
                recorder.partial = True
                if self.recording_error is None:
                    self.recording_error = TimeoutError("recording write stalled")

    def last_activity(self) -> float:
        """Loop time of the latest valid packet on either leg (the open time before any)."""
        return max(self.a.last_rx, self.b.last_rx)

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Stop everything, finish the recording, close both sockets, release the ports.

        Never raises for a recording failure (see :attr:`recording_error`). Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self.connected = False
        self._stop_recording(None)  # the writer thread finishes the file meanwhile
        for leg in (self.a, self.b):
            leg._close()
        try:
            await asyncio.wait_for(asyncio.gather(self.a.closed, self.b.closed), 2.0)
        except TimeoutError:
            log.warning("event=rtp_close_timeout ports=%d,%d", self.a.local_port, self.b.local_port)
        await self._finish_recordings()
        for leg in (self.a, self.b):
            self._allocator.release(leg.local_port)
