"""The Call state machine with a fake clock: every edge of the table, timers, and races."""

from __future__ import annotations

import pytest

from sipdialer.engine.call import (
    DEADLINE_SECONDS,
    DEADLINES,
    QUIET_DEADLINES,
    TRANSITIONS,
    Act,
    Call,
    CallState,
    CallStateError,
    CallTimers,
    Ev,
)

TIMERS = CallTimers(agent_ring_timeout=30, callee_ring_timeout=45, max_duration=600, rtp_timeout=20)


def call_in(state: CallState, now: float = 0.0) -> Call:
    c = Call(TIMERS)
    path = {
        CallState.CREATED: [],
        CallState.AGENT_RINGING: [Ev.START],
        CallState.CALLEE_RINGING: [Ev.START, Ev.AGENT_ANSWERED],
        CallState.BRIDGED: [Ev.START, Ev.AGENT_ANSWERED, Ev.CALLEE_ANSWERED],
    }[state]
    for ev in path:
        c.handle(ev, now)
    assert c.state is state
    return c


def test_happy_path_actions_in_order() -> None:
    c = Call(TIMERS)
    assert c.handle(Ev.START, 0) == [Act.INVITE_AGENT]
    assert c.handle(Ev.AGENT_RINGING, 1) == []
    assert c.handle(Ev.AGENT_ANSWERED, 3) == [Act.START_RINGBACK, Act.INVITE_CALLEE]
    assert c.handle(Ev.CALLEE_RINGING, 4) == []
    assert c.handle(Ev.CALLEE_EARLY_MEDIA, 4.5) == [Act.RELAY_EARLY_MEDIA]
    assert c.handle(Ev.CALLEE_ANSWERED, 8) == [Act.STOP_RINGBACK, Act.BRIDGE]
    assert c.state is CallState.BRIDGED
    assert c.handle(Ev.CALLEE_BYE, 20, reason=("Q.850;cause=16",)) == [
        Act.HANGUP_AGENT,
        Act.FINISH,
    ]
    assert c.ending is not None
    assert (c.ending.kind, c.ending.leg, c.ending.bridged) == ("bye", "callee", True)
    assert c.ending.reason == ("Q.850;cause=16",)
    assert [s for _, s in c.history] == [
        CallState.AGENT_RINGING,
        CallState.CALLEE_RINGING,
        CallState.BRIDGED,
        CallState.ENDED,
    ]


@pytest.mark.parametrize(
    ("state", "event", "acts", "kind", "leg"),
    [
        (CallState.AGENT_RINGING, Ev.AGENT_FAILED, [Act.FINISH], "rejected", "agent"),
        (CallState.AGENT_RINGING, Ev.AGENT_UNREACHABLE, [Act.FINISH], "unreachable", "agent"),
        (CallState.AGENT_RINGING, Ev.AGENT_NOT_REGISTERED, [Act.FINISH], "not_registered", "agent"),
        (
            CallState.AGENT_RINGING,
            Ev.AGENT_RING_TIMEOUT,
            [Act.HANGUP_AGENT, Act.FINISH],
            "ring_timeout",
            "agent",
        ),
        (
            CallState.AGENT_RINGING,
            Ev.API_HANGUP,
            [Act.HANGUP_AGENT, Act.FINISH],
            "api_hangup",
            None,
        ),
        (CallState.CREATED, Ev.API_HANGUP, [Act.FINISH], "api_hangup", None),
        (CallState.CREATED, Ev.INTERNAL_ERROR, [Act.FINISH], "error", None),
        (
            CallState.CALLEE_RINGING,
            Ev.CALLEE_FAILED,
            [Act.HANGUP_AGENT, Act.FINISH],
            "rejected",
            "callee",
        ),
        (
            CallState.CALLEE_RINGING,
            Ev.CALLEE_UNREACHABLE,
            [Act.HANGUP_AGENT, Act.FINISH],
            "unreachable",
            "callee",
        ),
        (
            CallState.CALLEE_RINGING,
            Ev.CALLEE_RING_TIMEOUT,
            [Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH],
            "ring_timeout",
            "callee",
        ),
        (CallState.CALLEE_RINGING, Ev.AGENT_BYE, [Act.HANGUP_CALLEE, Act.FINISH], "bye", "agent"),
        (
            CallState.CALLEE_RINGING,
            Ev.API_HANGUP,
            [Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH],
            "api_hangup",
            None,
        ),
        (CallState.BRIDGED, Ev.AGENT_BYE, [Act.HANGUP_CALLEE, Act.FINISH], "bye", "agent"),
        (CallState.BRIDGED, Ev.CALLEE_BYE, [Act.HANGUP_AGENT, Act.FINISH], "bye", "callee"),
        (
            CallState.BRIDGED,
            Ev.API_HANGUP,
            [Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH],
            "api_hangup",
            None,
        ),
        (
            CallState.BRIDGED,
            Ev.MAX_DURATION,
            [Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH],
            "max_duration",
            None,
        ),
        (
            CallState.BRIDGED,
            Ev.AGENT_RTP_TIMEOUT,
            [Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH],
            "rtp_timeout",
            "agent",
        ),
        (
            CallState.BRIDGED,
            Ev.CALLEE_RTP_TIMEOUT,
            [Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH],
            "rtp_timeout",
            "callee",
        ),
    ],
)
def test_every_ending_edge(
    state: CallState, event: Ev, acts: list[Act], kind: str, leg: str | None
) -> None:
    c = call_in(state)
    assert c.handle(event, 5, status=486 if "FAILED" in event.name else None) == acts
    assert c.state is CallState.ENDED
    assert c.ending is not None
    assert (c.ending.kind, c.ending.leg) == (kind, leg)
    assert c.ending.bridged is (state is CallState.BRIDGED)
    if "FAILED" in event.name:
        assert c.ending.status == 486


def test_ends_exactly_once_whatever_crosses_the_teardown() -> None:
    c = call_in(CallState.BRIDGED)
    assert Act.FINISH in c.handle(Ev.AGENT_BYE, 10)
    ending = c.ending
    # both sides BYE at once; API hang-up too; late answers and timers: all absorbed
    late = [Ev.CALLEE_BYE, Ev.API_HANGUP, Ev.CALLEE_ANSWERED, Ev.AGENT_ANSWERED]
    late += [Ev.MAX_DURATION, Ev.AGENT_RTP_TIMEOUT, Ev.CALLEE_RTP_TIMEOUT, Ev.CALLEE_FAILED]
    late += [Ev.CALLEE_RING_TIMEOUT]
    for ev in late:
        assert c.handle(ev, 11) == []
    assert c.ending is ending and c.state is CallState.ENDED
    assert c.get_timer() is None


def test_api_hangup_during_callee_answer_cancels_and_ignores_the_late_200() -> None:
    c = call_in(CallState.CALLEE_RINGING)
    assert c.handle(Ev.API_HANGUP, 5) == [Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH]
    assert c.handle(Ev.CALLEE_ANSWERED, 5.01) == []  # the leg ACKs and BYEs it itself


def test_every_state_event_pair_is_decided() -> None:
    """Illegal pairs raise a named error; none is silently dropped by accident."""
    for state in CallState:
        for ev in Ev:
            c = call_in(state) if state is not CallState.ENDED else None
            if c is None:
                c = call_in(CallState.BRIDGED)
                c.handle(Ev.CALLEE_BYE, 1)
            if (state, ev) in TRANSITIONS:
                c.handle(ev, 2)
            else:
                with pytest.raises(CallStateError):
                    c.handle(ev, 2)


def test_agent_ring_timeout_fires_at_the_deadline() -> None:
    c = Call(TIMERS)
    c.handle(Ev.START, 100.0)
    assert c.get_timer() == 130.0
    assert c.handle_timer(129.9) == []
    assert c.handle_timer(130.0) == [Act.HANGUP_AGENT, Act.FINISH]
    assert c.ending is not None and c.ending.kind == "ring_timeout" and c.ending.leg == "agent"


def test_callee_ring_timeout_replaces_agent_timer() -> None:
    c = Call(TIMERS)
    c.handle(Ev.START, 0.0)
    c.handle(Ev.AGENT_ANSWERED, 10.0)
    assert c.get_timer() == 55.0
    assert c.handle_timer(55.0) == [Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH]
    assert c.ending is not None and c.ending.leg == "callee"


def test_rtp_timeout_follows_media_activity_and_max_duration() -> None:
    c = call_in(CallState.BRIDGED, now=0.0)
    assert c.get_timer() == 20.0  # rtp_timeout after bridging
    both = {"agent": 15.0, "callee": 15.0}
    assert c.handle_timer(20.0, last_media=both) == []  # media seen: pushed to 35
    assert c.get_timer() == 35.0
    assert c.handle_timer(35.0, last_media=both) == [
        Act.HANGUP_CALLEE,
        Act.HANGUP_AGENT,
        Act.FINISH,
    ]
    assert c.ending is not None and c.ending.kind == "rtp_timeout" and c.ending.bridged
    assert c.ending.leg == "callee"  # both silent: the callee's timeout is the one reported

    c = call_in(CallState.BRIDGED, now=0.0)
    now = 0.0
    while not c.ended:
        timer = c.get_timer()
        assert timer is not None
        now = timer
        c.handle_timer(now, last_media={"agent": now, "callee": now})  # media keeps flowing
    assert now == 600.0
    assert c.ending is not None and c.ending.kind == "max_duration"


def test_no_timer_before_start_or_after_end() -> None:
    c = Call(TIMERS)
    assert c.get_timer() is None
    c.handle(Ev.START, 0)
    c.handle(Ev.AGENT_FAILED, 1, status=486)
    assert c.get_timer() is None


def test_the_deadline_table_is_whole() -> None:
    """Each deadline has a length, and firing it is a legal, ending edge in its state."""
    for state, events in DEADLINES.items():
        for event in events:
            assert event in DEADLINE_SECONDS
            edge = TRANSITIONS[(state, event)]
            assert edge.to is CallState.ENDED and Act.FINISH in edge.acts
    assert set(DEADLINE_SECONDS) >= set(QUIET_DEADLINES)
    assert CallState.CREATED not in DEADLINES and CallState.ENDED not in DEADLINES


PATHS = {
    CallState.CREATED: [],
    CallState.AGENT_RINGING: [Ev.START],
    CallState.CALLEE_RINGING: [Ev.START, Ev.AGENT_ANSWERED],
    CallState.BRIDGED: [Ev.START, Ev.AGENT_ANSWERED, Ev.CALLEE_ANSWERED],
    CallState.ENDED: [Ev.START, Ev.AGENT_ANSWERED, Ev.CALLEE_ANSWERED, Ev.CALLEE_BYE],
}
FIELDS = {
    Ev.AGENT_RING_TIMEOUT: "agent_ring_timeout",
    Ev.CALLEE_RING_TIMEOUT: "callee_ring_timeout",
    Ev.MAX_DURATION: "max_duration",
    Ev.AGENT_RTP_TIMEOUT: "rtp_timeout",
    Ev.CALLEE_RTP_TIMEOUT: "rtp_timeout",
}


#: What SPEC §6 asks, written out independently of call.py's DEADLINES table.
RUNNING = {
    CallState.CREATED: set(),
    CallState.AGENT_RINGING: {Ev.AGENT_RING_TIMEOUT},
    CallState.CALLEE_RINGING: {Ev.CALLEE_RING_TIMEOUT},
    CallState.BRIDGED: {Ev.MAX_DURATION, Ev.AGENT_RTP_TIMEOUT, Ev.CALLEE_RTP_TIMEOUT},
    CallState.ENDED: set(),
}


@pytest.mark.parametrize("state", list(CallState))
@pytest.mark.parametrize("shortest", list(FIELDS))
def test_entering_a_state_arms_exactly_its_deadlines(state: CallState, shortest: Ev) -> None:
    """With one timer much shorter than the others: it fires at entry + its length, with
    its own ending, if it runs in that state; otherwise nothing happens by then."""
    assert set(DEADLINES.get(state, ())) == RUNNING[state]
    lengths = {name: 1000.0 for name in FIELDS.values()} | {FIELDS[shortest]: 5.0}
    c = Call(CallTimers(**lengths))
    for ev in PATHS[state]:
        c.handle(ev, 50.0)
    assert c.state is state
    # both legs' media flowing, except the leg whose RTP timeout is the one under test
    media = {"agent": 55.0, "callee": 55.0}
    if shortest in QUIET_DEADLINES:
        del media[QUIET_DEADLINES[shortest]]
    if shortest in RUNNING[state]:
        assert c.get_timer() == 55.0
        assert c.handle_timer(54.9) == []
        assert Act.FINISH in c.handle_timer(55.0, media)
        assert c.ending is not None
        assert (c.ending.kind, c.ending.leg) == TRANSITIONS[(state, shortest)].end
    elif RUNNING[state]:
        assert c.get_timer() == 1050.0
        assert c.handle_timer(55.0) == [] and c.state is state
    else:
        assert c.get_timer() is None
        assert c.handle_timer(55.0) == [] and c.state is state


def test_max_duration_fires_before_rtp_timeout_on_a_tie() -> None:
    tied = Call(CallTimers(max_duration=20, rtp_timeout=20))
    for ev in PATHS[CallState.BRIDGED]:
        tied.handle(ev, 0.0)
    assert tied.get_timer() == 20.0
    assert Act.FINISH in tied.handle_timer(20.0)
    assert tied.ending is not None and tied.ending.kind == "max_duration"


# ---- per-leg RTP timeout and ringback (issue 12, points 4 and 5) ----------------------------
def test_a_silent_callee_times_out_while_the_agent_talks() -> None:
    """The old check took the newest packet of either leg: a talking agent kept a dead
    callee's call (and its bill) up until max_duration."""
    c = call_in(CallState.BRIDGED, now=0.0)
    for now in (20.0, 25.0, 30.0):  # the agent talks all along; the callee never sent RTP
        acts = c.handle_timer(now, {"agent": now - 0.02, "callee": -3.0})
        if acts:
            break
    assert now == 20.0 and acts == [Act.HANGUP_CALLEE, Act.HANGUP_AGENT, Act.FINISH]
    assert c.ending is not None
    assert (c.ending.kind, c.ending.leg, c.ending.bridged) == ("rtp_timeout", "callee", True)


def test_a_silent_agent_times_out_while_the_callee_talks() -> None:
    c = call_in(CallState.BRIDGED, now=0.0)
    assert c.handle_timer(20.0, {"agent": 12.0, "callee": 19.98}) == []
    assert c.get_timer() == 32.0  # the agent's deadline: 20 s after its last packet
    assert c.handle_timer(32.0, {"agent": 12.0, "callee": 31.98}) == [
        Act.HANGUP_CALLEE,
        Act.HANGUP_AGENT,
        Act.FINISH,
    ]
    assert c.ending is not None and (c.ending.kind, c.ending.leg) == ("rtp_timeout", "agent")


def test_each_leg_s_media_pushes_back_only_its_own_deadline() -> None:
    c = call_in(CallState.BRIDGED, now=0.0)
    assert c.handle_timer(20.0, {"agent": 10.0, "callee": 15.0}) == []
    assert c.get_timer() == 30.0  # agent: 10 + 20; the callee's is 35
    assert c.handle_timer(30.0, {"agent": 29.0, "callee": 15.0}) == []
    assert c.get_timer() == 35.0
    assert c.handle_timer(35.0, {"agent": 34.0, "callee": 15.0}) != []
    assert c.ending is not None and c.ending.leg == "callee"


def test_ringback_stops_at_the_callee_s_answer_before_bridging() -> None:
    """The answer, not the callee's first packet, ends ringback (VAD/NAT: media may be
    late or never come)."""
    for early in (False, True):
        c = call_in(CallState.CALLEE_RINGING)
        if early:
            c.handle(Ev.CALLEE_EARLY_MEDIA, 1.0)
        acts = c.handle(Ev.CALLEE_ANSWERED, 2.0)
        assert acts == [Act.STOP_RINGBACK, Act.BRIDGE]
    assert all(
        Act.STOP_RINGBACK not in t.acts
        for k, t in TRANSITIONS.items()
        if k[1] is not Ev.CALLEE_ANSWERED
    )
