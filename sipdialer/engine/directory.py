"""What the edges may know of the calls: the :class:`CallDirectory` face and the frozen
:class:`CallView` of one call it hands out.

The API lists, reads, places and ends calls through a :class:`CallDirectory` only; it
never holds the engine's live objects. A :class:`CallView` is a snapshot taken when asked
for: the request, the state and its timeline, the times that matter, each leg's final SIP
status, the recording, the CDR (once the call has ended) and the media relay's counters
per leg. The dialer (``sipdialer.engine.dialer``) implements the directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sipdialer.engine.request import CallRequest

__all__ = ["CALL_ID", "CallDirectory", "CallView", "LegRtp", "TimelineEntry"]

#: The id the service gives a call (``uuid4().hex``).
CALL_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)


@dataclass(frozen=True)
class TimelineEntry:
    """The call entered ``state`` at ``at``."""

    at: float
    """Unix time."""
    state: str
    """The state's name (``agent_ringing``, ``bridged``, ``ended``, …)."""


@dataclass(frozen=True)
class LegRtp:
    """The media relay's counters of one leg of a call."""

    leg: str
    """``agent`` or ``callee``."""
    packets_in: int
    """RTP packets received."""
    packets_out: int
    """RTP packets sent."""
    packets_dropped: int
    """Packets dropped: malformed, from a foreign source, of an unknown payload type, or
    with nowhere to go."""
    bytes_in: int
    """RTP bytes received."""
    packets_foreign: int = 0
    """Of the dropped packets, those from a source the relay's latch refused (not the
    SDP address nor a learnt one: a sprayer, a stale address)."""


@dataclass(frozen=True)
class CallView:
    """One call as it stood when the view was taken."""

    id: str
    """The call's id (:data:`CALL_ID`)."""
    call_ref: str | None
    """The client's reference."""
    agent: str
    callee: str
    outbound_id: str
    state: str
    """The call's state (``created``, ``agent_ringing``, ``callee_ringing``, ``bridged``,
    ``ended``)."""
    ended: bool
    """The call has ended (its CDR follows once the legs have settled)."""
    timeline: tuple[TimelineEntry, ...]
    """Every state change, oldest first."""
    created_at: float
    """Unix time the call was placed."""
    agent_answered_at: float | None
    """Unix time the agent answered."""
    bridged_at: float | None
    """Unix time both parties were connected."""
    ended_at: float | None
    """Unix time the call ended."""
    agent_sip_status: int | None
    """The final SIP status of the agent leg's INVITE, once known."""
    callee_sip_status: int | None
    """The final SIP status of the callee leg's INVITE, once known."""
    recording_ref: str | None
    """The recording's reference, once recording has started."""
    cdr: Mapping[str, object] | None
    """The CDR payload once the call has ended (provisional until the CDR is emitted)."""
    rtp: tuple[LegRtp, ...]
    """The relay's counters per leg; empty when the call got no media."""


class CallDirectory(Protocol):
    """The calls of this service: placed, live and recently finished."""

    def get(self, call_id: str) -> CallView | None:
        """The call ``call_id``, live or recently finished; None when unknown."""
        ...

    def active(self) -> Sequence[CallView]:
        """The calls not yet released, oldest first."""
        ...

    def recent(self) -> Sequence[CallView]:
        """The latest finished calls (a bounded number), oldest first."""
        ...

    def active_count(self) -> int:
        """How many calls are not yet released (cheaper than ``len(active())``)."""
        ...

    async def originate(self, request: CallRequest) -> CallView:
        """Place a call; the view is taken once it has started (it may already have
        ended, e.g. when no media ports were free)."""
        ...

    def hangup(self, call_id: str) -> bool:
        """Start ending the call: True when this started it, False when the call is
        unknown or has already ended."""
        ...
