"""How a call ended → ISDN (Q.850) cause, CDR disposition and end_reason: the one place.

Owns the SIP final response → Q.850 table (SPEC §4), the parsing of ``Reason: Q.850``
header values (RFC 3326), and :func:`classify`, which turns the facts the call engine
observed (an :class:`Ending`) into what the CDR and the notifications report (an
:class:`Outcome`). Pure: no I/O, no clock, never raises on what a peer sent.

Both tables below are data in this module, read by one small function each:
``SIP_STATUSES`` (status → :class:`StatusRow`, the first table; ``OTHER_STATUS`` for any
status not in it) and ``ENDINGS`` ((kind, leg) → :class:`EndingRow`, the second; a row
keyed with leg None serves every leg of that kind without a row of its own).

Source of the table
===================

RFC 3398 §8.2.6.1 ("SIP final response → ISUP cause value"). FreeSWITCH uses the same
table (``sofia_glue_sip_cause_to_freeswitch``) except that it maps 485/604 (and in some
versions 404) to 3 NO_ROUTE_DESTINATION, 487 to its pseudo-cause 487 ORIGINATOR_CANCEL
and anything unlisted to 31 NORMAL_UNSPECIFIED; we follow the RFC and SPEC there (1, and
127 for anything else). Asterisk (``hangup_sip2cause``) differs in more places: 408 → 18
and 480 → 19 (the RFC has 102 and 18), 405/481/482 → 127, 483 → 19, 488/606 → 58
BEARERCAPABILITY_NOTAVAIL, 500 → 38, 501 → 29, 502 → 27, 503 → 34 CONGESTION, and an
unknown 5xx → 34. Cause names are FreeSWITCH's (``Q850_NAMES``).

=============================================  =====  ==========  =============
SIP final response of the failed INVITE        cause  disposition end_reason
=============================================  =====  ==========  =============
2xx (answered; see BYE below)                  16     ANSWERED    —
400, 481, 500                                  41     FAILED      error
503                                            41     CONGESTION  congestion
401, 402, 403, 407, 603                        21     FAILED      reject
404, 485, 604                                  1      FAILED      not_found
410                                            22     FAILED      not_found
484                                            28     FAILED      not_found
405                                            63     FAILED      error
406, 415, 501                                  79     FAILED      error
482, 483                                       25     FAILED      error
408                                            102    NO ANSWER   timeout
504                                            102    FAILED      error
480                                            18     NO ANSWER   timeout
486, 600                                       17     BUSY        busy
488, 606                                       88     FAILED      error
502                                            38     FAILED      error
413, 414, 416, 420, 421, 423, 505, 513, and    127    FAILED      error
anything else (3xx, 487, 1xx, out of range)
=============================================  =====  ==========  =============

Decisions (SPEC leaves them open):

* **603 Decline → FAILED**, not BUSY: the cause is 21 CALL_REJECTED, not 17 USER_BUSY,
  and the disposition follows the cause. ``end_reason`` ``reject`` with ``end_code`` 21
  already tells a client "a person declined", which FAILED + ``error`` never says.
* **503 → cause 41** as RFC 3398 and FreeSWITCH say (Asterisk says 34), but the
  disposition is CONGESTION as SPEC requires. Cause 34 NORMAL_CIRCUIT_CONGESTION
  ("41/34" in SPEC) appears only when the trunk sends it in a Reason header.
* **487 is not a cause here.** FreeSWITCH's ORIGINATOR_CANCEL = 487 is a pseudo-cause
  outside Q.850's 7-bit range; clients read ``end_code`` as Q.850, so we never emit it and
  ``Q850_NAMES`` holds only real Q.850 values. A caller giving up / an API cancel before
  answer is 16 NORMAL_CLEARING (what ISUP carries when the calling party releases, and
  what RFC 3398 §8.2 maps a BYE or CANCEL to); a stray 487 response is "anything else".
* 488/606 are always 88; ``Warning`` header codes are not consulted (RFC 3398 allows a
  finer mapping by Warning code; the table above is what SPEC asks for).
* A Q.850 ``Reason`` value received with the BYE, CANCEL or final response wins for
  ``end_code`` and ``cause_name`` (SPEC §4); disposition and end_reason still come from
  the SIP status / kind of ending. A ``Reason: SIP;cause=…`` value is ignored.

Endings that are not a failed INVITE:

======================  =====  ===========================  ===============  =========
Ending.kind             cause  disposition                  end_reason       ended_by
======================  =====  ===========================  ===============  =========
bye, after bridge       16     ANSWERED                     agent_hungup /   that leg
                                                            callee_hungup
bye from the agent      16     NO ANSWER                    agent_hungup     agent
while callee rings
rejected (leg, status)  table  table                        table            that leg
ring_timeout (we        19     NO ANSWER                    timeout          system
CANCEL)
api_hangup              16     ANSWERED if bridged,         api_hangup       api
                               else NO ANSWER
rtp_timeout (one leg    41     ANSWERED if bridged,         rtp_timeout_     system
sent no RTP for                else FAILED                  agent /
rtp_timeout)                                                rtp_timeout_
                                                            callee
rtp_timeout, no leg     41     ANSWERED if bridged,         rtp_timeout      system
(older journals)               else FAILED
max_duration            16     ANSWERED if bridged,         max_duration     system
                               else NO ANSWER
shutdown (the service   41     ANSWERED if bridged,         shutdown         system
stopped mid-call)              else FAILED
crashed (the service    41     ANSWERED if bridged,         crashed          system
died mid-call; the             else FAILED
next start reports it
from its call journal)
media_lost (the media   41     ANSWERED if bridged,         media_lost       system
worker process relaying        else FAILED
the call died)
unreachable (trunk      38     CONGESTION                   congestion       system
down, INVITE timed out,
not registered with the
trunk)
not_registered          20     FAILED                       not_registered   system
(extension agent has
no binding)
error (our own fault)   127    FAILED                       error            system
session_timeout (the    41     ANSWERED if bridged,         session_timeout  system
peer stopped refreshing        else FAILED
its session timer, RFC
4028: we sent the BYE)
======================  =====  ===========================  ===============  =========

A BYE from the callee always counts as ANSWERED (a callee can only send BYE after its
200 OK). ``not_registered`` uses 20 SUBSCRIBER_ABSENT as Asterisk does for an
unregistered endpoint (AST_CAUSE_UNREGISTERED); SPEC's "trunk unreachable / not
registered → 38" is *our* registration with the trunk, which is ``unreachable``.
A leg whose session timer ran out reports a ``bye`` carrying exactly
:data:`SESSION_EXPIRED_REASON` (the Reason of the BYE it sent); that ending reads as
``session_timeout`` (a peer's own BYE carrying that very Reason would read so too — it
only names its hang-up 41/session_timeout). RTP inactivity uses 41
NORMAL_TEMPORARY_FAILURE (FreeSWITCH's MEDIA_TIMEOUT is a pseudo-cause 604, outside
Q.850). It is timed per leg, as FreeSWITCH and Asterisk do, and the ``end_reason`` names
the silent leg (``rtp_timeout_callee``: a dead callee, whom the trunk bills;
``rtp_timeout_agent``), as ``agent_hungup``/``callee_hungup`` do; ``end_leg`` says it too.
``ended_by`` stays ``system``: our timer ended the call, not that party.
A maximum-duration cut is an orderly release: 16.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypeGuard

__all__ = [
    "DISPOSITIONS",
    "ENDINGS",
    "END_REASONS",
    "OTHER_STATUS",
    "Q850_NAMES",
    "SESSION_EXPIRED_REASON",
    "SIP_STATUSES",
    "EndedBy",
    "Ending",
    "EndingKind",
    "EndingRow",
    "Leg",
    "Outcome",
    "StatusRow",
    "cause_name",
    "classify",
    "disposition_for_sip_status",
    "end_reason_for_sip_status",
    "parse_reason_q850",
    "q850_for_sip_status",
]

Leg = Literal["agent", "callee"]
EndedBy = Literal["agent", "callee", "system", "api"]
EndingKind = Literal[
    "bye",
    "rejected",
    "ring_timeout",
    "api_hangup",
    "rtp_timeout",
    "max_duration",
    "unreachable",
    "not_registered",
    "shutdown",
    "crashed",
    "media_lost",
    "error",
    "session_timeout",
]

ANSWERED = "ANSWERED"
NO_ANSWER = "NO ANSWER"
BUSY = "BUSY"
FAILED = "FAILED"
CONGESTION = "CONGESTION"
DISPOSITIONS: tuple[str, ...] = (ANSWERED, NO_ANSWER, BUSY, FAILED, CONGESTION)

END_REASONS: tuple[str, ...] = (
    "agent_hungup",
    "callee_hungup",
    "busy",
    "timeout",
    "reject",
    "not_found",
    "congestion",
    "error",
    "api_hangup",
    "rtp_timeout",
    "rtp_timeout_agent",
    "rtp_timeout_callee",
    "max_duration",
    "not_registered",
    "shutdown",
    "crashed",
    "media_lost",
    "session_timeout",
)

# ITU-T Q.850 cause values with FreeSWITCH's names (switch_types.h, SWITCH_CAUSE_*).
Q850_NAMES: dict[int, str] = {
    1: "UNALLOCATED_NUMBER",
    2: "NO_ROUTE_TRANSIT_NET",
    3: "NO_ROUTE_DESTINATION",
    6: "CHANNEL_UNACCEPTABLE",
    7: "CALL_AWARDED_DELIVERED",
    16: "NORMAL_CLEARING",
    17: "USER_BUSY",
    18: "NO_USER_RESPONSE",
    19: "NO_ANSWER",
    20: "SUBSCRIBER_ABSENT",
    21: "CALL_REJECTED",
    22: "NUMBER_CHANGED",
    23: "REDIRECTION_TO_NEW_DESTINATION",
    25: "EXCHANGE_ROUTING_ERROR",
    27: "DESTINATION_OUT_OF_ORDER",
    28: "INVALID_NUMBER_FORMAT",
    29: "FACILITY_REJECTED",
    30: "RESPONSE_TO_STATUS_ENQUIRY",
    31: "NORMAL_UNSPECIFIED",
    34: "NORMAL_CIRCUIT_CONGESTION",
    38: "NETWORK_OUT_OF_ORDER",
    41: "NORMAL_TEMPORARY_FAILURE",
    42: "SWITCH_CONGESTION",
    43: "ACCESS_INFO_DISCARDED",
    44: "REQUESTED_CHAN_UNAVAIL",
    45: "PRE_EMPTED",
    50: "FACILITY_NOT_SUBSCRIBED",
    52: "OUTGOING_CALL_BARRED",
    54: "INCOMING_CALL_BARRED",
    57: "BEARERCAPABILITY_NOTAUTH",
    58: "BEARERCAPABILITY_NOTAVAIL",
    63: "SERVICE_UNAVAILABLE",
    65: "BEARERCAPABILITY_NOTIMPL",
    66: "CHAN_NOT_IMPLEMENTED",
    69: "FACILITY_NOT_IMPLEMENTED",
    79: "SERVICE_NOT_IMPLEMENTED",
    81: "INVALID_CALL_REFERENCE",
    88: "INCOMPATIBLE_DESTINATION",
    95: "INVALID_MSG_UNSPECIFIED",
    96: "MANDATORY_IE_MISSING",
    97: "MESSAGE_TYPE_NONEXIST",
    98: "WRONG_MESSAGE",
    99: "IE_NONEXIST",
    100: "INVALID_IE_CONTENTS",
    101: "WRONG_CALL_STATE",
    102: "RECOVERY_ON_TIMER_EXPIRE",
    103: "MANDATORY_IE_LENGTH_ERROR",
    111: "PROTOCOL_ERROR",
    127: "INTERWORKING",
}

CAUSE_NORMAL_CLEARING = 16
#: The Reason of the BYE a leg sends when the peer's session refresh did not come
#: (RFC 4028 §10), and of the ``bye`` ending it reports: read as ``session_timeout``.
SESSION_EXPIRED_REASON = 'Q.850;cause=41;text="session timer expired"'
CAUSE_INTERWORKING = 127


class StatusRow(NamedTuple):
    """What a SIP final status that refused an INVITE reports (one row of SIP_STATUSES)."""

    cause: int
    """Q.850 cause."""
    disposition: str
    """CDR disposition."""
    end_reason: str
    """CDR ``end_reason``."""


#: Source: RFC 3398 §8.2.6.1 ("SIP final response → ISUP cause value"), the rows of SPEC §4;
#: see the module docstring for where FreeSWITCH and Asterisk differ and for the decisions
#: (603 → FAILED, 503 → CONGESTION with cause 41). A status not listed is OTHER_STATUS.
SIP_STATUSES: dict[int, StatusRow] = {
    400: StatusRow(41, FAILED, "error"),
    481: StatusRow(41, FAILED, "error"),
    500: StatusRow(41, FAILED, "error"),
    503: StatusRow(41, CONGESTION, "congestion"),
    401: StatusRow(21, FAILED, "reject"),
    402: StatusRow(21, FAILED, "reject"),
    403: StatusRow(21, FAILED, "reject"),
    407: StatusRow(21, FAILED, "reject"),
    603: StatusRow(21, FAILED, "reject"),
    404: StatusRow(1, FAILED, "not_found"),
    485: StatusRow(1, FAILED, "not_found"),
    604: StatusRow(1, FAILED, "not_found"),
    410: StatusRow(22, FAILED, "not_found"),
    484: StatusRow(28, FAILED, "not_found"),
    405: StatusRow(63, FAILED, "error"),
    406: StatusRow(79, FAILED, "error"),
    415: StatusRow(79, FAILED, "error"),
    501: StatusRow(79, FAILED, "error"),
    482: StatusRow(25, FAILED, "error"),
    483: StatusRow(25, FAILED, "error"),
    408: StatusRow(102, NO_ANSWER, "timeout"),
    504: StatusRow(102, FAILED, "error"),
    480: StatusRow(18, NO_ANSWER, "timeout"),
    486: StatusRow(17, BUSY, "busy"),
    600: StatusRow(17, BUSY, "busy"),
    488: StatusRow(88, FAILED, "error"),
    606: StatusRow(88, FAILED, "error"),
    502: StatusRow(38, FAILED, "error"),
    413: StatusRow(127, FAILED, "error"),
    414: StatusRow(127, FAILED, "error"),
    416: StatusRow(127, FAILED, "error"),
    420: StatusRow(127, FAILED, "error"),
    421: StatusRow(127, FAILED, "error"),
    423: StatusRow(127, FAILED, "error"),
    505: StatusRow(127, FAILED, "error"),
    513: StatusRow(127, FAILED, "error"),
}

#: Any other status (3xx, 487, 491, 580, …, or no valid status at all): 127 interworking.
OTHER_STATUS = StatusRow(CAUSE_INTERWORKING, FAILED, "error")


def cause_name(code: int) -> str:
    """FreeSWITCH-style name of a Q.850 cause; ``UNKNOWN`` for a value we do not name."""
    return Q850_NAMES.get(code, "UNKNOWN")


def _is_status(status: object) -> TypeGuard[int]:
    return isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 699


def _is_2xx(status: object) -> bool:
    return _is_status(status) and 200 <= status < 300


def _refusal(status: int | None, otherwise: StatusRow = OTHER_STATUS) -> StatusRow:
    """The SIP_STATUSES row of ``status``; ``otherwise`` when it has none (2xx included)."""
    if not _is_status(status):
        return otherwise
    return SIP_STATUSES.get(status, otherwise)


def q850_for_sip_status(status: int) -> int:
    """The Q.850 cause for a SIP final status (RFC 3398 §8.2.6.1); 127 for anything else.

    Any 2xx is 16 (the call was answered; how it ended is decided by the BYE).
    """
    return CAUSE_NORMAL_CLEARING if _is_2xx(status) else _refusal(status).cause


def disposition_for_sip_status(status: int) -> str:
    """CDR disposition for a SIP final status of an INVITE (SPEC §4)."""
    return ANSWERED if _is_2xx(status) else _refusal(status).disposition


def end_reason_for_sip_status(status: int) -> str:
    """``end_reason`` for an INVITE refused with ``status``: busy, timeout, reject, …"""
    return _refusal(status).end_reason


# --- Reason header (RFC 3326) ------------------------------------------------------------

_CAUSE_RE = re.compile(r"\s*cause\s*=\s*\"?\s*([0-9]{1,3})\s*\"?\s*", re.IGNORECASE)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            buf.append(ch)
            escaped = True
        elif ch == '"':
            buf.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def parse_reason_q850(values: Iterable[str] | str | None) -> int | None:
    """The first Q.850 cause in Reason header values, or None.

    ``values`` are the header field values as received; each may hold several
    comma-separated reason-values (``SIP;cause=200, Q.850;cause=16;text="…"``). Values of
    another protocol (``SIP``, ``RELEASE_CAUSE``…) are skipped; a cause outside 1–127 or
    anything unparsable counts as absent. Never raises.
    """
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    try:
        for value in values:
            if not isinstance(value, str):
                continue
            for reason in _split_outside_quotes(value, ","):
                params = _split_outside_quotes(reason, ";")
                if params[0].strip().upper() != "Q.850":
                    continue
                for param in params[1:]:
                    match = _CAUSE_RE.fullmatch(param)
                    if match:
                        cause = int(match.group(1))
                        if 1 <= cause <= 127:
                            return cause
                        break
    except TypeError:  # not iterable at all
        return None
    return None


# --- classification ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ending:
    """The facts of how a call ended, as the call engine observed them.

    ``leg``: who sent the BYE / whose INVITE failed / whose ring timed out / which leg
    was unreachable. ``status``: the SIP final status of that leg's INVITE (for
    ``rejected``). ``reason``: Reason header values received with the BYE, CANCEL or
    final response (a Q.850 cause in them wins). ``bridged``: both parties had been
    connected. ``detail``: free text for support (kept in the Outcome and the CDR).
    """

    kind: EndingKind
    leg: Leg | None
    status: int | None = None
    reason: Sequence[str] = field(default=())
    bridged: bool = False
    detail: str = ""

    def __post_init__(self) -> None:
        reason = self.reason
        if reason is None:
            reason = ()
        elif isinstance(reason, str):
            reason = (reason,)
        object.__setattr__(self, "reason", tuple(reason))


@dataclass(frozen=True)
class Outcome:
    """What the CDR reports about an ending (SPEC §3/§4)."""

    end_code: int
    cause_name: str
    disposition: str
    end_reason: str
    ended_by: EndedBy
    detail: str = ""
    leg: Leg | None = field(default=None, compare=False)
    """The leg the ending concerns (whose BYE, refusal, ring timeout), None for both."""


class EndingRow(NamedTuple):
    """What an ending of one kind, on one leg, reports (one row of ENDINGS)."""

    cause: int
    """Q.850 cause."""
    if_bridged: str
    """Disposition when the two parties had been connected (``Ending.bridged``)."""
    if_not_bridged: str
    """Disposition otherwise."""
    end_reason: str
    """CDR ``end_reason``."""
    ended_by: EndedBy | None
    """Who ended the call; None: the leg the ending concerns (``system`` if none)."""
    by_status: bool = False
    """The refused INVITE's SIP status decides cause, disposition and end_reason through
    SIP_STATUSES; this row's values stand for a status not in that table (or none)."""


#: (Ending.kind, Ending.leg) → row, the second table of the module docstring. A leg of None
#: in the key is the row for any leg the kind has no row of its own for (and for no leg).
#: A kind with no row at all reads as ``error``.
ENDINGS: dict[tuple[EndingKind, Leg | None], EndingRow] = {
    # a callee can only send BYE after its 200 OK: answered even if not yet bridged
    ("bye", "callee"): EndingRow(16, ANSWERED, ANSWERED, "callee_hungup", "callee"),
    ("bye", "agent"): EndingRow(16, ANSWERED, NO_ANSWER, "agent_hungup", "agent"),
    ("bye", None): EndingRow(16, ANSWERED, NO_ANSWER, "error", "system"),
    ("rejected", None): EndingRow(127, FAILED, FAILED, "error", None, by_status=True),
    ("ring_timeout", None): EndingRow(19, NO_ANSWER, NO_ANSWER, "timeout", "system"),
    ("api_hangup", None): EndingRow(16, ANSWERED, NO_ANSWER, "api_hangup", "api"),
    # one leg sent no RTP for rtp_timeout (the call times each leg on its own)
    ("rtp_timeout", "agent"): EndingRow(41, ANSWERED, FAILED, "rtp_timeout_agent", "system"),
    ("rtp_timeout", "callee"): EndingRow(41, ANSWERED, FAILED, "rtp_timeout_callee", "system"),
    ("rtp_timeout", None): EndingRow(41, ANSWERED, FAILED, "rtp_timeout", "system"),
    ("max_duration", None): EndingRow(16, ANSWERED, NO_ANSWER, "max_duration", "system"),
    # the service stopped (SIGTERM) while the call was up
    ("shutdown", None): EndingRow(41, ANSWERED, FAILED, "shutdown", "system"),
    # the service died (kill -9, power cut) while the call was up: the next start ends it
    ("crashed", None): EndingRow(41, ANSWERED, FAILED, "crashed", "system"),
    # the media worker process relaying the call died (its other calls go on)
    ("media_lost", None): EndingRow(41, ANSWERED, FAILED, "media_lost", "system"),
    ("unreachable", None): EndingRow(38, CONGESTION, CONGESTION, "congestion", "system"),
    ("not_registered", None): EndingRow(20, FAILED, FAILED, "not_registered", "system"),
    ("error", None): EndingRow(127, FAILED, FAILED, "error", "system"),
    # the peer stopped refreshing its session timer (RFC 4028 §10): our BYE, cause 41
    ("session_timeout", None): EndingRow(41, ANSWERED, FAILED, "session_timeout", "system"),
}


def _table(ending: Ending) -> tuple[int, str, str, EndedBy]:
    """(cause, disposition, end_reason, ended_by) before any Reason header override."""
    kind = ending.kind
    if kind == "bye" and SESSION_EXPIRED_REASON in ending.reason:
        kind = "session_timeout"
    row = ENDINGS.get((kind, ending.leg)) or ENDINGS.get((kind, None))
    if row is None:  # a kind this table does not know
        row = ENDINGS[("error", None)]
    disposition = row.if_bridged if ending.bridged else row.if_not_bridged
    cause, end_reason = row.cause, row.end_reason
    if row.by_status:
        default = StatusRow(cause, disposition, end_reason)
        cause, disposition, end_reason = _refusal(ending.status, default)
    return cause, disposition, end_reason, row.ended_by or ending.leg or "system"


def classify(ending: Ending) -> Outcome:
    """The Outcome of an Ending: the tables in the module docstring, then Reason wins."""
    code, disposition, end_reason, ended_by = _table(ending)
    from_reason = parse_reason_q850(ending.reason)
    if from_reason is not None:
        code = from_reason
    return Outcome(
        end_code=code,
        cause_name=cause_name(code),
        disposition=disposition,
        end_reason=end_reason,
        ended_by=ended_by,
        detail=ending.detail,
        leg=ending.leg,
    )
