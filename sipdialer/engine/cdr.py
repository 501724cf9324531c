"""Call detail records: the one document built at the end of a call (SPEC §3).

Owns :class:`CallRecord` (what the call engine fills in while a call runs),
:class:`Cdr` (record + :class:`~sipdialer.causes.Outcome`, frozen at call end) and the
three JSON shapes derived from it:

* ``cdr_envelope()`` — ``{"type": "cdr", "payload": {...}}`` for ``<prefix>:notifications:cdr``;
* ``cdr_payload()`` — the payload alone;
* ``c2d_document()`` — the deprecated ``<prefix>:notifications:c2d`` document.

Also the :class:`CdrSink` protocol the engine hands CDRs to, and :class:`MemorySink` for
tests and the demo. Pure apart from MemorySink's lock: no I/O.

Payload fields (all always present; ``null`` where noted):

====================== ======== ===============================================================
field                  type     meaning
====================== ======== ===============================================================
extension              str      the agent extension / first number
number                 str      the callee number
dial_number            str      caller ID presented to the callee (outbound_id)
call_ref               str|null the client's reference
recording_url          str|null recording **reference** (as in the c2d document), null if none
dialed_at              int      Unix seconds (floored) the first leg was dialled; when no leg
                                was ever dialled (e.g. agent not registered): created_at
call_time              int      seconds both parties were connected (bridged → ended),
                                rounded half up; 0 if never bridged
end_reason             str      see sipdialer.causes (agent_hungup, busy, timeout, …)
end_code               int      Q.850 cause
call_dir               str      always ``outbound``
call_id                str      our call id
disposition            str      ANSWERED / NO ANSWER / BUSY / FAILED / CONGESTION
cause_name             str      FreeSWITCH-style name of end_code (NORMAL_CLEARING, …)
agent_sip_status       int|null final SIP status of the agent leg's INVITE
callee_sip_status      int|null final SIP status of the callee leg's INVITE
ended_by               str      agent / callee / system / api
end_leg                str|null the leg the ending concerns (agent / callee; null: both)
created_at             str      ISO 8601 UTC with milliseconds and ``Z``
agent_dialed_at        str|null  〃 agent INVITE sent
agent_answered_at      str|null  〃 agent answered
callee_dialed_at       str|null  〃 callee INVITE sent
callee_ringing_at      str|null  〃 first 180/183 from the callee
callee_answered_at     str|null  〃 callee answered
bridged_at             str|null  〃 both parties connected
ended_at               str|null  〃 call ended
duration               int      seconds from dialed_at's instant to the end, rounded half up
billsec                int      = call_time
recording_download_url str|null ``{public_url}/click2dial/recordings/{ref}``
recording_partial      bool     true when a disk fault (full, I/O error) cost the recording
                                audio: the file holds the call up to the failure, or — with
                                recording_url null — nothing could be written at all; false
                                otherwise (also when recording is disabled)
agent_route            str      ``trunk`` or ``extension``
end_detail             str|null free text from the engine for support, null when empty
sip_call_ids           object   leg → SIP Call-ID
====================== ======== ===============================================================
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from sipdialer.engine.causes import Outcome

__all__ = [
    "CallRecord",
    "Cdr",
    "CdrSink",
    "MemorySink",
    "build_cdr",
    "iso_utc",
]


@dataclass
class CallRecord:
    """What the call engine fills in while a call runs (times are Unix epoch floats)."""

    id: str
    call_ref: str | None
    agent: str
    callee: str
    outbound_id: str
    created_at: float
    agent_dialed_at: float | None = None
    agent_answered_at: float | None = None
    agent_status: int | None = None
    callee_dialed_at: float | None = None
    callee_ringing_at: float | None = None
    callee_answered_at: float | None = None
    callee_status: int | None = None
    bridged_at: float | None = None
    ended_at: float | None = None
    recording_ref: str | None = None
    recording_partial: bool = False  # a write failure cost the recording audio
    agent_route: str = "trunk"  # "trunk" or "extension"
    sip_call_ids: dict[str, str] = field(default_factory=dict)  # leg -> SIP Call-ID
    callee_redirects: list[str] = field(default_factory=list)  # 3xx Contacts followed


def iso_utc(ts: float | None) -> str | None:
    """``2026-11-26T19:50:01.123Z`` for a Unix time; None for None."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _round_seconds(seconds: float) -> int:
    """Whole seconds, rounded half up, never negative."""
    if seconds <= 0:
        return 0
    return math.floor(seconds + 0.5)


@dataclass(frozen=True)
class Cdr:
    """A finished call: a snapshot of its record, its outcome and its recording's URL."""

    record: CallRecord
    outcome: Outcome
    recording_url: str | None  # full download URL, None when there is no recording

    @property
    def call_id(self) -> str:
        return self.record.id

    @property
    def dialed_at(self) -> float:
        """When the first leg was dialled (created_at if none ever was)."""
        r = self.record
        dialled = [t for t in (r.agent_dialed_at, r.callee_dialed_at) if t is not None]
        return min(dialled) if dialled else r.created_at

    @property
    def call_time(self) -> int:
        r = self.record
        if r.bridged_at is None or r.ended_at is None:
            return 0
        return _round_seconds(r.ended_at - r.bridged_at)

    @property
    def duration(self) -> int:
        if self.record.ended_at is None:
            return 0
        return _round_seconds(self.record.ended_at - self.dialed_at)

    def cdr_payload(self) -> dict[str, Any]:
        """The payload of the ``{"type": "cdr", ...}`` envelope (see the module docstring)."""
        r = self.record
        o = self.outcome
        call_time = self.call_time
        return {
            # the product family's CDR shape
            "extension": r.agent,
            "number": r.callee,
            "dial_number": r.outbound_id,
            "call_ref": r.call_ref,
            "recording_url": r.recording_ref,
            "dialed_at": math.floor(self.dialed_at),
            "call_time": call_time,
            "end_reason": o.end_reason,
            "end_code": o.end_code,
            "call_dir": "outbound",
            # beyond it
            "call_id": r.id,
            "disposition": o.disposition,
            "cause_name": o.cause_name,
            "agent_sip_status": r.agent_status,
            "callee_sip_status": r.callee_status,
            "ended_by": o.ended_by,
            "end_leg": o.leg,
            "created_at": iso_utc(r.created_at),
            "agent_dialed_at": iso_utc(r.agent_dialed_at),
            "agent_answered_at": iso_utc(r.agent_answered_at),
            "callee_dialed_at": iso_utc(r.callee_dialed_at),
            "callee_ringing_at": iso_utc(r.callee_ringing_at),
            "callee_answered_at": iso_utc(r.callee_answered_at),
            "bridged_at": iso_utc(r.bridged_at),
            "ended_at": iso_utc(r.ended_at),
            "duration": self.duration,
            "billsec": call_time,
            "recording_download_url": self.recording_url,
            "recording_partial": r.recording_partial,
            "agent_route": r.agent_route,
            "callee_redirected_to": list(r.callee_redirects),
            "end_detail": o.detail or None,
            "sip_call_ids": dict(r.sip_call_ids),
        }

    def cdr_envelope(self) -> dict[str, Any]:
        """``{"type": "cdr", "payload": ...}`` — one element of ``<prefix>:notifications:cdr``."""
        return {"type": "cdr", "payload": self.cdr_payload()}

    def c2d_document(self) -> dict[str, Any]:
        """The deprecated ``<prefix>:notifications:c2d`` document (SPEC §3, legacy shape)."""
        return {
            "notifications": [
                {
                    "extension": self.record.agent,
                    "disposition": self.outcome.disposition,
                    "call_ref": self.record.call_ref,
                    "end_code": self.outcome.end_code,
                    "recording_url": self.record.recording_ref,
                }
            ]
        }


def build_cdr(record: CallRecord, outcome: Outcome, *, public_url: str) -> Cdr:
    """Freeze ``record`` (a copy: later changes to it do not reach the CDR) with its outcome.

    ``public_url`` is ``[http] public_url``; the recording's download URL is
    ``{public_url}/click2dial/recordings/{ref}`` when the call has a recording.
    """
    snapshot = copy.deepcopy(record)
    url = None
    if snapshot.recording_ref:
        base = public_url.rstrip("/")
        url = f"{base}/click2dial/recordings/{quote(snapshot.recording_ref, safe='')}"
    return Cdr(record=snapshot, outcome=outcome, recording_url=url)


class CdrSink(Protocol):
    """Where the call engine hands a finished call's CDR."""

    def submit(self, cdr: Cdr, on_durable: Callable[[], None] | None = None) -> None:
        """Take ``cdr``; must neither block nor raise into the call engine. Calls
        ``on_durable`` once the CDR can no longer be lost (at once for a sink that keeps
        nothing; on the engine's event loop), never if it could not be kept: the engine
        forgets the call's journal entry only then."""
        ...


class MemorySink:
    """Keeps CDRs in ``.cdrs`` (tests, the demo). Thread-safe; ``wait`` blocks a thread,
    ``wait_async`` polls without blocking an event loop (use it from async code: the
    engine that will submit runs on that same loop)."""

    def __init__(self) -> None:
        self.cdrs: list[Cdr] = []
        self._cond = threading.Condition()

    def submit(self, cdr: Cdr, on_durable: Callable[[], None] | None = None) -> None:
        with self._cond:
            self.cdrs.append(cdr)
            self._cond.notify_all()
        if on_durable is not None:
            on_durable()

    def get(self, call_id: str) -> Cdr | None:
        """The CDR of ``call_id`` if it has been submitted (the last one, if several)."""
        with self._cond:
            for cdr in reversed(self.cdrs):
                if cdr.call_id == call_id:
                    return cdr
        return None

    def wait(self, call_id: str, timeout: float = 10.0) -> Cdr:
        """Block until the CDR of ``call_id`` arrives; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                cdr = self.get(call_id)
                if cdr is not None:
                    return cdr
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no CDR for call {call_id} within {timeout} s")
                self._cond.wait(remaining)

    async def wait_async(self, call_id: str, timeout: float = 10.0, poll: float = 0.01) -> Cdr:
        """Like :meth:`wait`, polling every ``poll`` s with ``asyncio.sleep``."""
        import asyncio

        deadline = time.monotonic() + timeout
        while True:
            cdr = self.get(call_id)
            if cdr is not None:
                return cdr
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no CDR for call {call_id} within {timeout} s")
            await asyncio.sleep(poll)

    def clear(self) -> None:
        with self._cond:
            self.cdrs.clear()
