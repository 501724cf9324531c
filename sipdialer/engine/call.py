"""The click-to-dial ``Call`` state machine: every transition in one table (h11's shape).

Theory of operation
-------------------
A call rings the agent (leg A) first, and only once the agent has answered rings the
callee (leg B); when the callee answers the two are bridged. :class:`Call` is pure: it is
told what happened (:class:`Ev`) with ``now``, and answers with the actions the engine must
carry out (:class:`Act`) — it never touches SIP or sockets. It also owns the call's timers
(ring timeouts per leg, the maximum duration, the RTP inactivity check per leg) as
deadlines: ``get_timer()`` says when to wake it and ``handle_timer(now, last_media)`` turns
an expired deadline into the matching event. Which deadline runs in which state is a second
table, :data:`DEADLINES` (state → the timeout events armed on entering it), with their
lengths from :class:`CallTimers` in :data:`DEADLINE_SECONDS`; the RTP ones are pushed back
by the media of their own leg (:data:`QUIET_DEADLINES`: event → leg), so one silent leg
ends the call even while the other talks (FreeSWITCH's and Asterisk's per-channel RTP
timeout). Ringback to the agent stops when the callee answers (``STOP_RINGBACK`` before
``BRIDGE``), not when its first packet arrives: a callee that answers and starts media late
(VAD, NAT) must not leave the agent hearing ringback in a bridged call.

A call ends exactly once. The first terminating event moves it to ``ENDED`` and records
the :class:`~sipdialer.causes.Ending` (what happened, on which leg, with which SIP status
and Reason headers); everything that arrives afterwards — the other side's BYE crossing
ours, a 200 OK crossing our CANCEL, a second API hang-up — is listed in the table as
ignored in ``ENDED``. Closing a leg that is still ringing (CANCEL, and ACK+BYE should its
200 OK cross the CANCEL) or established (BYE) is the leg's business (``leg.py``): the call
only says ``HANGUP_AGENT`` / ``HANGUP_CALLEE``.

An event that the table does not list for the current state is a bug in the engine and
raises :class:`CallStateError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from sipdialer.engine.causes import Ending, EndingKind, Leg
from sipdialer.engine.errors import EngineError


class CallState(StrEnum):
    CREATED = "created"
    AGENT_RINGING = "agent_ringing"
    CALLEE_RINGING = "callee_ringing"
    BRIDGED = "bridged"
    ENDED = "ended"


class Ev(StrEnum):
    START = "start"
    AGENT_RINGING = "agent_ringing"  # 180/183 from the agent's phone
    AGENT_ANSWERED = "agent_answered"
    AGENT_FAILED = "agent_failed"  # final ≥ 300 on the agent's INVITE
    AGENT_UNREACHABLE = "agent_unreachable"  # INVITE timed out / transport error
    AGENT_NOT_REGISTERED = "agent_not_registered"  # an extension with no binding
    AGENT_BYE = "agent_bye"
    CALLEE_RINGING = "callee_ringing"  # 180 without SDP: we play ringback to the agent
    CALLEE_EARLY_MEDIA = "callee_early_media"  # 183/180 with SDP: relay it to the agent
    CALLEE_ANSWERED = "callee_answered"
    CALLEE_FAILED = "callee_failed"
    CALLEE_UNREACHABLE = "callee_unreachable"
    CALLEE_BYE = "callee_bye"
    AGENT_RING_TIMEOUT = "agent_ring_timeout"
    CALLEE_RING_TIMEOUT = "callee_ring_timeout"
    MAX_DURATION = "max_duration"
    AGENT_RTP_TIMEOUT = "agent_rtp_timeout"  # no RTP from the agent for rtp_timeout
    CALLEE_RTP_TIMEOUT = "callee_rtp_timeout"  # no RTP from the callee for rtp_timeout
    API_HANGUP = "api_hangup"
    INTERNAL_ERROR = "internal_error"  # we cannot go on (e.g. no RTP ports left)
    MEDIA_LOST = "media_lost"  # the media worker process relaying the call died
    SHUTDOWN = "shutdown"  # the service is stopping


class Act(StrEnum):
    INVITE_AGENT = "invite_agent"
    INVITE_CALLEE = "invite_callee"
    START_RINGBACK = "start_ringback"  # play media/ringback to the agent
    STOP_RINGBACK = "stop_ringback"  # the callee answered: the agent hears it, not ringback
    RELAY_EARLY_MEDIA = "relay_early_media"  # relay callee → agent (and both ways)
    BRIDGE = "bridge"  # relay both ways and start recording
    HANGUP_AGENT = "hangup_agent"  # CANCEL or BYE, whichever the leg's state needs
    HANGUP_CALLEE = "hangup_callee"
    FINISH = "finish"  # the call has ended: build the CDR, release media


_A, _C, _B, _E = (
    CallState.AGENT_RINGING,
    CallState.CALLEE_RINGING,
    CallState.BRIDGED,
    CallState.ENDED,
)

# How a terminating transition describes the ending: (Ending.kind, leg). None: not terminal.
_End = tuple[EndingKind, Leg | None]


@dataclass(frozen=True)
class _T:
    to: CallState
    acts: tuple[Act, ...] = ()
    end: _End | None = None


IGNORED = _T(_E)

#: (state, event) → transition. Everything the engine may see is here; nothing else is legal.
TRANSITIONS: dict[tuple[CallState, Ev], _T] = {
    # ---- created
    (CallState.CREATED, Ev.START): _T(_A, (Act.INVITE_AGENT,)),
    # ---- the agent's phone rings
    (_A, Ev.AGENT_RINGING): _T(_A),
    (_A, Ev.AGENT_ANSWERED): _T(_C, (Act.START_RINGBACK, Act.INVITE_CALLEE)),
    (_A, Ev.AGENT_FAILED): _T(_E, (Act.FINISH,), ("rejected", "agent")),
    (_A, Ev.AGENT_UNREACHABLE): _T(_E, (Act.FINISH,), ("unreachable", "agent")),
    (_A, Ev.AGENT_NOT_REGISTERED): _T(_E, (Act.FINISH,), ("not_registered", "agent")),
    (_A, Ev.AGENT_RING_TIMEOUT): _T(_E, (Act.HANGUP_AGENT, Act.FINISH), ("ring_timeout", "agent")),
    (_A, Ev.API_HANGUP): _T(_E, (Act.HANGUP_AGENT, Act.FINISH), ("api_hangup", None)),
    (CallState.CREATED, Ev.API_HANGUP): _T(_E, (Act.FINISH,), ("api_hangup", None)),
    (CallState.CREATED, Ev.INTERNAL_ERROR): _T(_E, (Act.FINISH,), ("error", None)),
    (CallState.CREATED, Ev.AGENT_NOT_REGISTERED): _T(
        _E, (Act.FINISH,), ("not_registered", "agent")
    ),
    # ---- the agent is on the line, the callee's phone rings
    (_C, Ev.CALLEE_RINGING): _T(_C),
    (_C, Ev.CALLEE_EARLY_MEDIA): _T(_C, (Act.RELAY_EARLY_MEDIA,)),
    (_C, Ev.CALLEE_ANSWERED): _T(_B, (Act.STOP_RINGBACK, Act.BRIDGE)),
    (_C, Ev.CALLEE_FAILED): _T(_E, (Act.HANGUP_AGENT, Act.FINISH), ("rejected", "callee")),
    (_C, Ev.CALLEE_UNREACHABLE): _T(_E, (Act.HANGUP_AGENT, Act.FINISH), ("unreachable", "callee")),
    (_C, Ev.CALLEE_RING_TIMEOUT): _T(
        _E, (Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH), ("ring_timeout", "callee")
    ),
    (_C, Ev.AGENT_BYE): _T(_E, (Act.HANGUP_CALLEE, Act.FINISH), ("bye", "agent")),
    (_C, Ev.API_HANGUP): _T(
        _E, (Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH), ("api_hangup", None)
    ),
    # ---- bridged
    (_B, Ev.AGENT_BYE): _T(_E, (Act.HANGUP_CALLEE, Act.FINISH), ("bye", "agent")),
    (_B, Ev.CALLEE_BYE): _T(_E, (Act.HANGUP_AGENT, Act.FINISH), ("bye", "callee")),
    (_B, Ev.API_HANGUP): _T(
        _E, (Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH), ("api_hangup", None)
    ),
    (_B, Ev.MAX_DURATION): _T(
        _E, (Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH), ("max_duration", None)
    ),
    (_B, Ev.AGENT_RTP_TIMEOUT): _T(
        _E, (Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH), ("rtp_timeout", "agent")
    ),
    (_B, Ev.CALLEE_RTP_TIMEOUT): _T(
        _E, (Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH), ("rtp_timeout", "callee")
    ),
    (_B, Ev.CALLEE_EARLY_MEDIA): _T(_B),  # a late 183 retransmission: nothing to do
    (_B, Ev.CALLEE_RINGING): _T(_B),
}
# ---- the service stops: like an API hang-up, whatever the state, but said as it is
# ---- the media worker relaying the call died: the same, said as it is (cause 41)
for (_st, _ev), _t in list(TRANSITIONS.items()):
    if _ev is Ev.API_HANGUP:
        TRANSITIONS[(_st, Ev.SHUTDOWN)] = _T(_t.to, _t.acts, ("shutdown", None))
        TRANSITIONS[(_st, Ev.MEDIA_LOST)] = _T(_t.to, _t.acts, ("media_lost", None))
# ---- after the end: whatever crosses our teardown is absorbed (the legs answer it)
for _ev in Ev:
    if _ev is not Ev.START:
        TRANSITIONS.setdefault((_E, _ev), IGNORED)
# a late provisional or answer from the agent while the callee already rings is harmless
TRANSITIONS[(_C, Ev.AGENT_RINGING)] = _T(_C)


class CallStateError(EngineError, RuntimeError):
    """An event the table does not allow in the current state (an engine bug)."""


@dataclass(frozen=True)
class CallTimers:
    """How long each of a call's deadlines runs, in seconds (``[calls]`` in sip.conf)."""

    agent_ring_timeout: float = 30.0
    callee_ring_timeout: float = 45.0
    max_duration: float = 4 * 3600.0
    rtp_timeout: float = 60.0


#: Which deadlines run in which state, each named by the event it fires. Entering a state
#: arms exactly these (``now`` + its length in :data:`DEADLINE_SECONDS`), leaving it drops
#: them; a state not listed runs none. Earlier in a tuple fires first on a tie.
DEADLINES: dict[CallState, tuple[Ev, ...]] = {
    CallState.AGENT_RINGING: (Ev.AGENT_RING_TIMEOUT,),
    CallState.CALLEE_RINGING: (Ev.CALLEE_RING_TIMEOUT,),
    # both legs silent: the callee's timeout is reported (the leg the trunk bills)
    CallState.BRIDGED: (Ev.MAX_DURATION, Ev.CALLEE_RTP_TIMEOUT, Ev.AGENT_RTP_TIMEOUT),
}

#: The length of each deadline, from the call's :class:`CallTimers`.
DEADLINE_SECONDS: dict[Ev, Callable[[CallTimers], float]] = {
    Ev.AGENT_RING_TIMEOUT: lambda t: t.agent_ring_timeout,
    Ev.CALLEE_RING_TIMEOUT: lambda t: t.callee_ring_timeout,
    Ev.MAX_DURATION: lambda t: t.max_duration,
    Ev.AGENT_RTP_TIMEOUT: lambda t: t.rtp_timeout,
    Ev.CALLEE_RTP_TIMEOUT: lambda t: t.rtp_timeout,
}

#: Deadlines that media pushes back, each with the leg whose media does: once due, such a
#: deadline fires only if no RTP arrived from that leg within its length before ``now``;
#: otherwise it moves to that much after the leg's last packet (``handle_timer``'s
#: ``last_media[leg]``). Media of the other leg does not count.
QUIET_DEADLINES: Mapping[Ev, Leg] = MappingProxyType(
    {Ev.AGENT_RTP_TIMEOUT: "agent", Ev.CALLEE_RTP_TIMEOUT: "callee"}
)


@dataclass
class Call:
    """One click-to-dial call's state, timers and (once ended) its :class:`Ending`."""

    timers: CallTimers = field(default_factory=CallTimers)
    state: CallState = CallState.CREATED
    ending: Ending | None = None
    history: list[tuple[float, CallState]] = field(default_factory=list)
    _deadlines: dict[Ev, float] = field(default_factory=dict)

    def handle(
        self,
        event: Ev,
        now: float,
        *,
        status: int | None = None,
        reason: tuple[str, ...] = (),
        detail: str = "",
    ) -> list[Act]:
        """Apply ``event``; return the actions to carry out, in order."""
        t = TRANSITIONS.get((self.state, event))
        if t is None:
            raise CallStateError(f"{event.value} is not allowed in state {self.state.value}")
        if t is IGNORED:
            return []
        before = self.state
        self.state = t.to
        if t.to is not before:
            self.history.append((now, t.to))
        self._update_deadlines(before, t.to, now)
        if t.end is not None:
            kind, leg = t.end
            self.ending = Ending(
                kind=kind,
                leg=leg,
                status=status,
                reason=tuple(reason),
                bridged=before is CallState.BRIDGED,
                detail=detail,
            )
        return list(t.acts)

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED

    # ---- timers ------------------------------------------------------------------------
    def _update_deadlines(self, before: CallState, after: CallState, now: float) -> None:
        """On a change of state, arm the deadlines DEADLINES lists for the new one."""
        if before is not after:
            self._deadlines = {
                event: now + DEADLINE_SECONDS[event](self.timers)
                for event in DEADLINES.get(after, ())
            }

    def get_timer(self) -> float | None:
        return min(self._deadlines.values(), default=None)

    def handle_timer(self, now: float, last_media: Mapping[Leg, float] | None = None) -> list[Act]:
        """Fire the earliest expired deadline. ``last_media[leg]`` is when RTP last arrived
        from that leg (a leg missing: nothing known, its quiet deadline fires when due)."""
        for event, at in sorted(self._deadlines.items(), key=lambda kv: kv[1]):
            if at > now:
                break
            leg = QUIET_DEADLINES.get(event)
            last = None if leg is None or last_media is None else last_media.get(leg)
            if last is not None:
                quiet_until = last + DEADLINE_SECONDS[event](self.timers)
                if quiet_until > now:
                    self._deadlines[event] = quiet_until
                    continue
            del self._deadlines[event]
            return self.handle(event, now)
        return []
