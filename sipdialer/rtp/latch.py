"""Which source address a media leg takes RTP from: the latch.

Owns the rule that decides, packet by packet until it has decided, which one address a
:class:`~sipdialer.rtp.relay.MediaLeg` accepts RTP from (and sends back to); everything
else is a *foreign* packet, dropped and counted. Pure: addresses, header fields and
``now`` in, a yes/no out; the relay consults it only for packets that do not come from
the latched source, so a latched leg pays one tuple comparison per packet and nothing
here.

The rule, after rtpengine's "strict source" and "learning" modes:

* **No SDP, no latch.** Until the call engine gives the leg an address from SDP
  (:meth:`Latch.follow`) every packet is foreign: nothing has been negotiated yet.
* **The SDP address wins.** A packet from exactly the address and port of the newest
  SDP latches at once — also over a source learned before it (the SDP names that
  address, so moving there is no move "without new SDP").
* **Learning, for NAT.** A phone behind NAT sends from another address than its SDP
  gives. Such a source latches only once it has sent a *run*: :data:`LEARN_RUN`
  in-sequence packets (sequence number +1 each) of one SSRC, each of a negotiated payload
  type (the codec's or telephone-event's), lasting at least :data:`LEARN_SPAN` seconds
  (a burst is no run). One run is followed per source *IP* (a packet from another port
  of that IP starts it over), for up to :data:`MAX_CANDIDATES` IPs at once (a new one
  evicts the shortest run, the oldest of those first), so a sprayer interleaving its
  packets with a NAT'd phone's, from however many ports, cannot keep the phone's run
  from growing.
* **Strict once latched.** Once latched, no other source — another IP or another port
  of the same IP — is accepted (bar the SDP address itself, above) until new SDP names
  a *different* address (:meth:`Latch.follow`). The same address again (a re-INVITE
  for hold or a codec change) keeps the latch.
* **The newest SDP wins, and never goes back.** New SDP reopens the latch for the new
  address only: the address the SDP has left and the source latched before are *barred*
  from learning (the last :data:`MAX_BARRED` of them), so a packet still trailing from
  the old address cannot take the leg back. SDP naming a barred address again lifts the
  bar on that one address (it is the newest SDP then).

What this cannot stop: a sender that spoofs the SDP address itself, one that completes a
run before a NAT'd phone does, or one rotating through more source IPs than
:data:`MAX_CANDIDATES` between two of the phone's packets (that delays a NAT'd phone's
learning; it still captures nothing without a run). Unencrypted RTP carries no proof of
origin; SRTP would.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LEARN_RUN", "LEARN_SPAN", "MAX_BARRED", "MAX_CANDIDATES", "Latch"]

Addr = tuple[Any, ...]

#: In-sequence packets a source other than the SDP address must send to be learnt.
LEARN_RUN = 10
#: Seconds that run must last at least (10 packets of 20 ms span 0.18 s).
LEARN_SPAN = 0.15
#: Source IPs whose runs are followed at once while learning.
MAX_CANDIDATES = 8
#: Addresses left by SDP that stay barred from learning (the most recent ones).
MAX_BARRED = 16


class _Run:
    """The in-sequence run one candidate source has sent so far."""

    __slots__ = ("addr", "count", "seq", "ssrc", "start")

    def __init__(self, addr: Addr, ssrc: int, seq: int, start: float) -> None:
        self.addr = addr
        self.ssrc = ssrc
        self.seq = seq
        self.count = 1
        self.start = start


class Latch:
    """The latch of one media leg (see the module docstring for the rule)."""

    __slots__ = ("_barred", "_runs", "exact", "sdp", "source")

    def __init__(self) -> None:
        self.sdp: Addr | None = None
        """Where the newest SDP says the peer is (None before any SDP)."""
        self.source: Addr | None = None
        """The latched source, the one address RTP is accepted from; None while learning."""
        self.exact = False
        """The source is the SDP address itself (no learning was needed)."""
        self._barred: dict[Addr, None] = {}  # an ordered set, oldest first
        self._runs: dict[Any, _Run] = {}  # by source IP, oldest first

    def follow(self, sdp: Addr) -> bool:
        """The newest SDP names ``sdp``. True when that reopens the latch (a new address):
        the old SDP address and the old source are barred from learning from now on."""
        if sdp == self.sdp:
            return False
        for old in (self.sdp, self.source):
            if old is not None and old != sdp:
                self._bar(old)
        self._barred.pop(sdp, None)
        self.sdp = sdp
        self.source = None
        self.exact = False
        self._runs.clear()
        return True

    def offer(self, addr: Addr, pt_ok: bool, seq: int, ssrc: int, now: float) -> bool:
        """A well-formed packet from ``addr``, which is not :attr:`source`: True when the
        latch takes ``addr`` as its source now (accept the packet), False when the packet
        is foreign (drop it). ``pt_ok``: its payload type is a negotiated one."""
        sdp = self.sdp
        if sdp is None:
            return False
        if addr == sdp:
            self.source = addr
            self.exact = True
            self._runs.clear()
            return True
        if self.source is not None or not pt_ok or addr in self._barred:
            return False
        runs = self._runs
        ip = addr[0]
        run = runs.get(ip)
        if run is not None:
            if run.addr == addr and run.ssrc == ssrc and seq == (run.seq + 1) & 0xFFFF:
                run.seq = seq
                run.count += 1
                if run.count >= LEARN_RUN and now - run.start >= LEARN_SPAN:
                    self.source = addr
                    runs.clear()
                    return True
                return False
        elif len(runs) >= MAX_CANDIDATES:
            del runs[min(runs, key=lambda key: runs[key].count)]  # the shortest, oldest first
        runs[ip] = _Run(addr, ssrc, seq, now)  # a new candidate, or a broken run starts over
        return False

    @property
    def barred(self) -> tuple[Addr, ...]:
        """The addresses barred from learning, oldest first."""
        return tuple(self._barred)

    def _bar(self, addr: Addr) -> None:
        self._barred.pop(addr, None)
        self._barred[addr] = None
        if len(self._barred) > MAX_BARRED:
            del self._barred[next(iter(self._barred))]
