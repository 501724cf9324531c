"""Tests for sipdialer.causes: the SPEC §4 table row by row, Reason precedence, each kind."""

from __future__ import annotations

from typing import get_args

import pytest

from sipdialer.engine.causes import (
    DISPOSITIONS,
    END_REASONS,
    ENDINGS,
    OTHER_STATUS,
    Q850_NAMES,
    SIP_STATUSES,
    Ending,
    EndingKind,
    Outcome,
    cause_name,
    classify,
    disposition_for_sip_status,
    end_reason_for_sip_status,
    parse_reason_q850,
    q850_for_sip_status,
)

# status, cause, disposition, end_reason — every status SPEC §4 names, plus "anything else".
SIP_TABLE = [
    (400, 41, "FAILED", "error"),
    (481, 41, "FAILED", "error"),
    (500, 41, "FAILED", "error"),
    (503, 41, "CONGESTION", "congestion"),
    (401, 21, "FAILED", "reject"),
    (402, 21, "FAILED", "reject"),
    (403, 21, "FAILED", "reject"),
    (407, 21, "FAILED", "reject"),
    (603, 21, "FAILED", "reject"),
    (404, 1, "FAILED", "not_found"),
    (485, 1, "FAILED", "not_found"),
    (604, 1, "FAILED", "not_found"),
    (405, 63, "FAILED", "error"),
    (406, 79, "FAILED", "error"),
    (415, 79, "FAILED", "error"),
    (501, 79, "FAILED", "error"),
    (410, 22, "FAILED", "not_found"),
    (484, 28, "FAILED", "not_found"),
    (482, 25, "FAILED", "error"),
    (483, 25, "FAILED", "error"),
    (408, 102, "NO ANSWER", "timeout"),
    (504, 102, "FAILED", "error"),
    (480, 18, "NO ANSWER", "timeout"),
    (486, 17, "BUSY", "busy"),
    (600, 17, "BUSY", "busy"),
    (488, 88, "FAILED", "error"),
    (606, 88, "FAILED", "error"),
    (502, 38, "FAILED", "error"),
    (413, 127, "FAILED", "error"),
    (414, 127, "FAILED", "error"),
    (416, 127, "FAILED", "error"),
    (420, 127, "FAILED", "error"),
    (421, 127, "FAILED", "error"),
    (423, 127, "FAILED", "error"),
    (505, 127, "FAILED", "error"),
    (513, 127, "FAILED", "error"),
    # anything else
    (302, 127, "FAILED", "error"),
    (409, 127, "FAILED", "error"),
    (487, 127, "FAILED", "error"),
    (491, 127, "FAILED", "error"),
    (580, 127, "FAILED", "error"),
    (607, 127, "FAILED", "error"),
    (699, 127, "FAILED", "error"),
]


@pytest.mark.parametrize(("status", "cause", "disposition", "end_reason"), SIP_TABLE)
def test_sip_status_table(status: int, cause: int, disposition: str, end_reason: str) -> None:
    assert q850_for_sip_status(status) == cause
    assert disposition_for_sip_status(status) == disposition
    assert end_reason_for_sip_status(status) == end_reason
    for leg in ("agent", "callee"):
        out = classify(Ending(kind="rejected", leg=leg, status=status))
        assert out == Outcome(cause, Q850_NAMES[cause], disposition, end_reason, leg)


def test_every_spec_status_is_in_the_table() -> None:
    named = {400, 481, 500, 503, 401, 402, 403, 407, 603, 404, 485, 604, 405, 406, 415, 501,
             410, 484, 482, 483, 408, 504, 480, 486, 600, 488, 606, 502, 413, 414, 416, 420,
             421, 423, 505, 513}  # fmt: skip
    assert named <= {row[0] for row in SIP_TABLE}
    # the data table holds exactly SPEC's statuses; everything else is OTHER_STATUS
    assert set(SIP_STATUSES) == named
    assert OTHER_STATUS == (127, "FAILED", "error")


def test_the_tables_hold_only_known_values() -> None:
    for cause, disposition, end_reason in [*SIP_STATUSES.values(), OTHER_STATUS]:
        assert cause in Q850_NAMES and disposition in DISPOSITIONS and end_reason in END_REASONS
    for row in ENDINGS.values():
        assert row.cause in Q850_NAMES and row.end_reason in END_REASONS
        assert {row.if_bridged, row.if_not_bridged} <= set(DISPOSITIONS)
    # every kind of ending has a row that serves any leg
    assert {kind for kind, leg in ENDINGS if leg is None} == set(get_args(EndingKind))


@pytest.mark.parametrize("status", [200, 202, 299])
def test_2xx_is_normal_clearing_answered(status: int) -> None:
    assert q850_for_sip_status(status) == 16
    assert disposition_for_sip_status(status) == "ANSWERED"


@pytest.mark.parametrize("status", [0, 99, 700, 1000, -1, True])
def test_out_of_range_status_is_interworking(status: int) -> None:
    assert q850_for_sip_status(status) == 127
    assert disposition_for_sip_status(status) == "FAILED"
    assert end_reason_for_sip_status(status) == "error"


def test_every_cause_the_table_can_produce_has_a_name() -> None:
    for status in range(100, 700):
        assert q850_for_sip_status(status) in Q850_NAMES
    assert Q850_NAMES[16] == "NORMAL_CLEARING"
    assert Q850_NAMES[34] == "NORMAL_CIRCUIT_CONGESTION"
    assert Q850_NAMES[102] == "RECOVERY_ON_TIMER_EXPIRE"
    assert all(1 <= code <= 127 for code in Q850_NAMES)  # no pseudo-causes such as 487
    assert cause_name(126) == "UNKNOWN"


# --- Reason header ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (['Q.850;cause=16;text="Normal call clearing"'], 16),
        (["Q.850;cause=17"], 17),
        (['q.850 ; CAUSE = 34 ; text="No circuit"'], 34),
        (['SIP;cause=200;text="Call completed elsewhere"'], None),
        (['SIP;cause=487;text="Request Terminated", Q.850;cause=19'], 19),
        (['SIP;cause=480, Q.850;cause=18;text="No user, responding"'], 18),
        (['Q.850;text="a, b; cause=99";cause=21'], 21),
        (["SIP;cause=503", "Q.850;cause=41", "Q.850;cause=38"], 41),
        (['Q.850;cause="31"'], 31),
        (["Q.850;cause=0"], None),
        (["Q.850;cause=128"], None),
        (["Q.850;cause=487"], None),
        (["Q.850;cause=abc"], None),
        (["Q.850;cause="], None),
        (["Q.850"], None),
        (["Q.850;cause=16x"], None),
        (["Q.8500;cause=16"], None),
        (["", ";;;", ",,,", '"', 'Q.850;text="unterminated'], None),
        ([], None),
        (None, None),
        ("Q.850;cause=16", 16),
        ([None, 5, b"Q.850;cause=16", "Q.850;cause=17"], 17),
        (42, None),
    ],
)
def test_parse_reason_q850(values: object, expected: int | None) -> None:
    assert parse_reason_q850(values) == expected  # type: ignore[arg-type]


def test_parse_reason_never_raises_on_garbage() -> None:
    import random

    rng = random.Random(3326)
    alphabet = 'Q.850;cause=SIP,"\\ text\r\n\x00é1234567890'
    for _ in range(2000):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        result = parse_reason_q850([junk])
        assert result is None or 1 <= result <= 127


def test_reason_q850_wins_over_the_table() -> None:
    out = classify(
        Ending(kind="rejected", leg="callee", status=603, reason=['Q.850;cause=17;text="Busy"'])
    )
    assert (out.end_code, out.cause_name) == (17, "USER_BUSY")
    assert (out.disposition, out.end_reason, out.ended_by) == ("FAILED", "reject", "callee")

    out = classify(Ending(kind="rejected", leg="callee", status=503, reason=["Q.850;cause=34"]))
    assert (out.end_code, out.cause_name, out.disposition) == (
        34,
        "NORMAL_CIRCUIT_CONGESTION",
        "CONGESTION",
    )

    out = classify(Ending(kind="bye", leg="callee", bridged=True, reason=["Q.850;cause=31"]))
    assert (out.end_code, out.cause_name, out.disposition) == (31, "NORMAL_UNSPECIFIED", "ANSWERED")

    out = classify(Ending(kind="rejected", leg="callee", status=480, reason=["Q.850;cause=126"]))
    assert (out.end_code, out.cause_name) == (126, "UNKNOWN")


def test_sip_reason_does_not_override() -> None:
    out = classify(Ending(kind="rejected", leg="callee", status=486, reason=["SIP;cause=603"]))
    assert (out.end_code, out.disposition) == (17, "BUSY")


# --- each kind of ending ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ending", "expected"),
    [
        (
            Ending(kind="bye", leg="agent", bridged=True),
            Outcome(16, "NORMAL_CLEARING", "ANSWERED", "agent_hungup", "agent"),
        ),
        (
            Ending(kind="bye", leg="callee", bridged=True),
            Outcome(16, "NORMAL_CLEARING", "ANSWERED", "callee_hungup", "callee"),
        ),
        (  # the agent gives up while the callee rings
            Ending(kind="bye", leg="agent", bridged=False),
            Outcome(16, "NORMAL_CLEARING", "NO ANSWER", "agent_hungup", "agent"),
        ),
        (  # a callee can only BYE after its 200: answered even if not yet bridged
            Ending(kind="bye", leg="callee", bridged=False),
            Outcome(16, "NORMAL_CLEARING", "ANSWERED", "callee_hungup", "callee"),
        ),
        (
            Ending(kind="rejected", leg="agent", status=486),
            Outcome(17, "USER_BUSY", "BUSY", "busy", "agent"),
        ),
        (
            Ending(kind="rejected", leg="callee", status=None),
            Outcome(127, "INTERWORKING", "FAILED", "error", "callee"),
        ),
        (
            Ending(kind="ring_timeout", leg="callee"),
            Outcome(19, "NO_ANSWER", "NO ANSWER", "timeout", "system"),
        ),
        (
            Ending(kind="ring_timeout", leg="agent"),
            Outcome(19, "NO_ANSWER", "NO ANSWER", "timeout", "system"),
        ),
        (
            Ending(kind="api_hangup", leg=None, bridged=True),
            Outcome(16, "NORMAL_CLEARING", "ANSWERED", "api_hangup", "api"),
        ),
        (
            Ending(kind="api_hangup", leg="callee", bridged=False),
            Outcome(16, "NORMAL_CLEARING", "NO ANSWER", "api_hangup", "api"),
        ),
        (  # per-leg RTP timeout: the end_reason names the silent leg (issue 12.5)
            Ending(kind="rtp_timeout", leg="callee", bridged=True),
            Outcome(41, "NORMAL_TEMPORARY_FAILURE", "ANSWERED", "rtp_timeout_callee", "system"),
        ),
        (
            Ending(kind="rtp_timeout", leg="agent", bridged=True),
            Outcome(41, "NORMAL_TEMPORARY_FAILURE", "ANSWERED", "rtp_timeout_agent", "system"),
        ),
        (
            Ending(kind="rtp_timeout", leg="agent", bridged=False),
            Outcome(41, "NORMAL_TEMPORARY_FAILURE", "FAILED", "rtp_timeout_agent", "system"),
        ),
        (  # no leg (an ending from before per-leg timeouts, e.g. a journal): as it was
            Ending(kind="rtp_timeout", leg=None, bridged=True),
            Outcome(41, "NORMAL_TEMPORARY_FAILURE", "ANSWERED", "rtp_timeout", "system"),
        ),
        (
            Ending(kind="max_duration", leg=None, bridged=True),
            Outcome(16, "NORMAL_CLEARING", "ANSWERED", "max_duration", "system"),
        ),
        (
            Ending(kind="max_duration", leg=None, bridged=False),
            Outcome(16, "NORMAL_CLEARING", "NO ANSWER", "max_duration", "system"),
        ),
        (
            Ending(kind="shutdown", leg=None, bridged=True),
            Outcome(41, "NORMAL_TEMPORARY_FAILURE", "ANSWERED", "shutdown", "system"),
        ),
        (
            Ending(kind="shutdown", leg=None, bridged=False),
            Outcome(41, "NORMAL_TEMPORARY_FAILURE", "FAILED", "shutdown", "system"),
        ),
        (
            Ending(kind="media_lost", leg=None, bridged=True),
            Outcome(41, "NORMAL_TEMPORARY_FAILURE", "ANSWERED", "media_lost", "system"),
        ),
        (
            Ending(kind="media_lost", leg=None, bridged=False),
            Outcome(41, "NORMAL_TEMPORARY_FAILURE", "FAILED", "media_lost", "system"),
        ),
        (
            Ending(kind="unreachable", leg="callee"),
            Outcome(38, "NETWORK_OUT_OF_ORDER", "CONGESTION", "congestion", "system"),
        ),
        (
            Ending(kind="unreachable", leg="agent"),
            Outcome(38, "NETWORK_OUT_OF_ORDER", "CONGESTION", "congestion", "system"),
        ),
        (
            Ending(kind="not_registered", leg="agent"),
            Outcome(20, "SUBSCRIBER_ABSENT", "FAILED", "not_registered", "system"),
        ),
        (
            Ending(kind="error", leg=None, detail="boom"),
            Outcome(127, "INTERWORKING", "FAILED", "error", "system", "boom"),
        ),
        # rows a leg or ``bridged`` could change, and a kind the table does not know
        (  # a BYE on no leg: the engine lost track of it
            Ending(kind="bye", leg=None, bridged=True),
            Outcome(16, "NORMAL_CLEARING", "ANSWERED", "error", "system"),
        ),
        (
            Ending(kind="bye", leg=None, bridged=False),
            Outcome(16, "NORMAL_CLEARING", "NO ANSWER", "error", "system"),
        ),
        (  # a refusal on no leg is the system's
            Ending(kind="rejected", leg=None, status=486),
            Outcome(17, "USER_BUSY", "BUSY", "busy", "system"),
        ),
        (  # a 2xx is no refusal: interworking, whatever bridged says
            Ending(kind="rejected", leg="callee", status=200, bridged=True),
            Outcome(127, "INTERWORKING", "FAILED", "error", "callee"),
        ),
        (
            Ending(kind="ring_timeout", leg="callee", bridged=True),
            Outcome(19, "NO_ANSWER", "NO ANSWER", "timeout", "system"),
        ),
        (
            Ending(kind="unreachable", leg=None, bridged=True),
            Outcome(38, "NETWORK_OUT_OF_ORDER", "CONGESTION", "congestion", "system"),
        ),
        (
            Ending(kind="not_registered", leg="agent", bridged=True),
            Outcome(20, "SUBSCRIBER_ABSENT", "FAILED", "not_registered", "system"),
        ),
        (
            Ending(kind="error", leg="callee", bridged=True),
            Outcome(127, "INTERWORKING", "FAILED", "error", "system"),
        ),
        (  # not an EndingKind on purpose (hence the ignore): reads as "error"
            Ending(kind="no-such-kind", leg="agent", bridged=True),  # type: ignore[arg-type]
            Outcome(127, "INTERWORKING", "FAILED", "error", "system"),
        ),
    ],
)
def test_each_kind(ending: Ending, expected: Outcome) -> None:
    out = classify(ending)
    assert out == expected
    assert out.disposition in DISPOSITIONS
    assert out.end_reason in END_REASONS


def test_ending_is_hashable_and_reason_normalised() -> None:
    ending = Ending(kind="bye", leg="agent", reason=["Q.850;cause=16"])
    assert ending.reason == ("Q.850;cause=16",)
    hash(ending)
    assert Ending(kind="bye", leg="agent", reason="Q.850;cause=17").reason == ("Q.850;cause=17",)
    assert classify(Ending(kind="bye", leg="agent", reason="Q.850;cause=17")).end_code == 17
