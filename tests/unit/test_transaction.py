"""Tests for sipdialer.sip.transaction and timers: the four RFC 3261 §17 machines (with
RFC 6026 Accepted) driven by a fake clock — no sockets, no sleeps."""

from __future__ import annotations

import itertools

import pytest

from sipdialer.sip.events import (
    ResponseReceived,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
)
from sipdialer.sip.message import Request, Response, make_response, parse_message
from sipdialer.sip.timers import TimerConfig
from sipdialer.sip.transaction import (
    ACCEPTED,
    COMPLETED,
    CONFIRMED,
    MACHINES,
    PROCEEDING,
    TERMINATED,
    TRYING,
    Input,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Transaction,
    TransactionStateError,
    client_key,
    server_key,
)

DEST = ("192.0.2.10", 5060)
SOURCE = ("192.0.2.20", 5060)
RETRANSMITS_T1_05 = [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]


def request(method: str = "INVITE", branch: str = "z9hG4bKtx1", cseq: int = 1) -> Request:
    return Request(
        method,
        "sip:bob@example.com",
        [
            ("Via", f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch};rport"),
            ("Via", "SIP/2.0/UDP 192.0.2.99;branch=z9hG4bKdownstream"),
            ("Max-Forwards", "70"),
            ("Route", "<sip:proxy1.example.com;lr>"),
            ("Route", "<sip:proxy2.example.com;lr>"),
            ("From", '"Alice" <sip:alice@example.com>;tag=a1'),
            ("To", "Bob <sip:bob@example.com>"),
            ("Call-ID", "call-1@192.0.2.1"),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", "<sip:alice@192.0.2.1:5060>"),
        ],
    )


def response(req: Request, status: int, to_tag: str = "b1") -> Response:
    return make_response(req, status, to_tag=to_tag)


def run_timers(tx: Transaction, until: float) -> list[float]:
    """Fire ``tx``'s timers up to ``until``; the times at which it sent something."""
    times: list[float] = []
    while (deadline := tx.get_timer()) is not None and deadline <= until:
        tx.handle_timer(deadline)
        times += [deadline] * len(tx.drain_outgoing())
    return times


def kinds(tx: Transaction) -> list[type]:
    return [type(e) for e in tx.drain_events()]


# ---- timers ---------------------------------------------------------------------------


def test_timer_config_derived_values() -> None:
    t = TimerConfig()
    assert (t.timer_b, t.timer_f, t.timer_h, t.timer_l, t.timer_m) == (32.0,) * 5
    assert (t.timer_d(False), t.timer_i(False), t.timer_j(False), t.timer_k(False)) == (
        32.0,
        5.0,
        32.0,
        5.0,
    )
    assert (t.timer_d(True), t.timer_i(True), t.timer_j(True), t.timer_k(True)) == (0,) * 4
    fast = TimerConfig(t1=0.1, t2=0.4, t4=1.0)
    assert fast.timer_b == pytest.approx(6.4)
    assert fast.timer_d(False) == 32.0  # never below 32 s on UDP
    with pytest.raises(ValueError):
        TimerConfig(t1=0)
    with pytest.raises(ValueError):
        TimerConfig(t1=1.0, t2=0.5)


def test_tables_are_consistent() -> None:
    timers = {i for i in Input if i.name.startswith("TIMER_")}
    for machine in MACHINES:
        for state, row in machine.TABLE.items():
            for event, (_, action) in row.items():
                assert action is None or callable(getattr(machine, f"_{action}", None)), (
                    machine,
                    state,
                    event,
                    action,
                )
        for state, live in machine.TIMERS.items():
            assert state in machine.TABLE
            assert set(live) <= timers
            for timer in live:  # every timer a state runs is handled in that state
                assert timer in machine.TABLE[state], (machine, state, timer)


# ---- INVITE client ----------------------------------------------------------------------


def test_invite_client_udp_retransmits_at_t1_doubling_then_timer_b() -> None:
    req = request()
    tx = InviteClientTransaction(req, DEST, "UDP", now=0.0)
    first = tx.drain_outgoing()
    assert [(o.data, o.addr, o.transport) for o in first] == [(req.to_bytes(), DEST, "UDP")]
    sent: list[float] = []
    while (deadline := tx.get_timer()) is not None:
        tx.handle_timer(deadline)
        for out in tx.drain_outgoing():
            assert out.data == req.to_bytes()
            sent.append(deadline)
        if tx.terminated:
            assert deadline == 32.0
    assert [0.0, *sent] == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert kinds(tx) == [TransactionTimeout, TransactionTerminated]
    assert tx.state is TERMINATED


def test_invite_client_provisional_stops_retransmissions() -> None:
    tx = InviteClientTransaction(request(), DEST, "UDP", now=0.0)
    tx.drain_outgoing()
    assert run_timers(tx, 1.0) == [0.5]
    ringing = response(tx.request, 180)
    tx.receive_response(ringing, now=1.0)
    assert tx.state is PROCEEDING
    assert tx.drain_events() == [ResponseReceived(ringing, tx)]
    assert tx.get_timer() is None  # A and B are Calling-only
    assert run_timers(tx, 100.0) == []
    tx.receive_response(response(tx.request, 183), now=2.0)
    assert kinds(tx) == [ResponseReceived]


def test_invite_client_non_2xx_final_is_acked_and_timer_d_absorbs_retransmissions() -> None:
    req = request()
    tx = InviteClientTransaction(req, DEST, "UDP", now=0.0)
    tx.drain_outgoing()
    tx.receive_response(response(req, 180), now=0.2)
    busy = parse_message(response(req, 486, to_tag="callee9").to_bytes())
    assert isinstance(busy, Response)
    tx.receive_response(busy, now=2.0)
    assert tx.state is COMPLETED
    assert [type(e) for e in tx.drain_events()] == [ResponseReceived, ResponseReceived]
    (out,) = tx.drain_outgoing()
    assert out.addr == DEST and out.transport == "UDP"
    ack = parse_message(out.data)
    assert isinstance(ack, Request)
    assert (ack.method, ack.uri) == ("ACK", "sip:bob@example.com")
    assert ack.headers.get_all("Via") == ["SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKtx1;rport"]
    assert ack.headers.get("From") == '"Alice" <sip:alice@example.com>;tag=a1'
    assert ack.headers.get("To") == "Bob <sip:bob@example.com>;tag=callee9"
    assert ack.call_id == "call-1@192.0.2.1"
    assert ack.headers.get("CSeq") == "1 ACK"
    assert ack.headers.get_all("Route") == [
        "<sip:proxy1.example.com;lr>",
        "<sip:proxy2.example.com;lr>",
    ]
    assert ack.headers.get("Max-Forwards") == "70"
    assert "Contact" not in ack.headers and ack.body == b""
    assert tx.ack is not None and tx.ack.to_bytes() == out.data

    tx.receive_response(busy, now=5.0)  # retransmitted final: ACK again, TU not bothered
    assert [o.data for o in tx.drain_outgoing()] == [out.data]
    assert tx.drain_events() == []
    assert tx.get_timer() == pytest.approx(2.0 + 32.0)  # Timer D
    run_timers(tx, 34.0)
    assert tx.state is TERMINATED
    assert kinds(tx) == [TransactionTerminated]


def test_invite_client_2xx_goes_to_accepted_and_passes_retransmissions_up() -> None:
    tx = InviteClientTransaction(request(), DEST, "UDP", now=0.0)
    tx.drain_outgoing()
    ok = response(tx.request, 200)
    tx.receive_response(ok, now=1.0)
    assert tx.state is ACCEPTED
    assert tx.drain_events() == [ResponseReceived(ok, tx)]
    assert tx.drain_outgoing() == []  # the ACK of a 2xx is the TU's (dialog's) business
    assert tx.ack is None
    tx.receive_response(ok, now=2.0)
    tx.receive_response(response(tx.request, 486), now=2.5)  # absorbed in Accepted
    assert tx.drain_events() == [ResponseReceived(ok, tx)]
    assert tx.get_timer() == 1.0 + 32.0  # Timer M
    run_timers(tx, 33.0)
    assert tx.state is TERMINATED and tx.drain_outgoing() == []


def test_invite_client_over_tcp_never_retransmits_but_timer_b_fires() -> None:
    tx = InviteClientTransaction(request(), DEST, "TCP", now=0.0)
    assert len(tx.drain_outgoing()) == 1
    assert run_timers(tx, 100.0) == []
    assert kinds(tx) == [TransactionTimeout, TransactionTerminated]


def test_invite_client_over_tcp_acks_once_and_ends_at_once() -> None:
    tx = InviteClientTransaction(request(), DEST, "TCP", now=0.0)
    tx.drain_outgoing()
    tx.receive_response(response(tx.request, 603), now=1.0)
    (ack,) = tx.drain_outgoing()
    assert ack.transport == "TCP" and ack.data.startswith(b"ACK ")
    assert tx.state is TERMINATED  # Timer D = 0
    assert kinds(tx) == [ResponseReceived, TransactionTerminated]


def test_invite_client_transport_error() -> None:
    tx = InviteClientTransaction(request(), DEST, "UDP", now=0.0)
    tx.transport_failed(now=0.1)
    assert kinds(tx) == [TransportError, TransactionTerminated]
    assert tx.get_timer() is None


# ---- non-INVITE client -------------------------------------------------------------------


def test_non_invite_client_doubles_to_t2_then_timer_f() -> None:
    tx = NonInviteClientTransaction(request("OPTIONS"), DEST, "UDP", now=0.0)
    tx.drain_outgoing()
    sends = run_timers(tx, 100.0)
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert kinds(tx) == [TransactionTimeout, TransactionTerminated]


def test_non_invite_client_keeps_retransmitting_at_t2_in_proceeding() -> None:
    tx = NonInviteClientTransaction(request("BYE"), DEST, "UDP", now=0.0)
    tx.drain_outgoing()
    tx.receive_response(response(tx.request, 100), now=0.2)
    assert tx.state is PROCEEDING
    assert kinds(tx) == [ResponseReceived]
    sends = run_timers(tx, 100.0)
    assert sends == [0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert kinds(tx) == [TransactionTimeout, TransactionTerminated]


def test_non_invite_client_timer_k_absorbs_retransmitted_finals() -> None:
    tx = NonInviteClientTransaction(request("BYE"), DEST, "UDP", now=0.0)
    tx.drain_outgoing()
    ok = response(tx.request, 200)
    tx.receive_response(ok, now=1.0)
    assert tx.state is COMPLETED
    assert tx.drain_events() == [ResponseReceived(ok, tx)]
    assert tx.get_timer() == 1.0 + 5.0  # Timer K = T4
    tx.receive_response(ok, now=2.0)
    assert tx.drain_events() == [] and tx.drain_outgoing() == []
    assert run_timers(tx, 6.0) == []
    assert tx.state is TERMINATED


def test_non_invite_client_over_tcp() -> None:
    tx = NonInviteClientTransaction(request("OPTIONS"), DEST, "TCP", now=0.0)
    tx.drain_outgoing()
    assert run_timers(tx, 100.0) == []
    assert kinds(tx) == [TransactionTimeout, TransactionTerminated]
    tx = NonInviteClientTransaction(request("OPTIONS"), DEST, "TCP", now=0.0)
    tx.receive_response(response(tx.request, 200), now=0.1)
    assert tx.state is TERMINATED  # Timer K = 0


def test_custom_t1_t2_are_honoured() -> None:
    timers = TimerConfig(t1=0.1, t2=0.4)
    invite = InviteClientTransaction(request(), DEST, "UDP", now=0.0, timers=timers)
    invite.drain_outgoing()
    assert run_timers(invite, 100.0) == pytest.approx([0.1, 0.3, 0.7, 1.5, 3.1, 6.3])
    assert invite.state is TERMINATED
    assert kinds(invite) == [TransactionTimeout, TransactionTerminated]

    options = NonInviteClientTransaction(request("OPTIONS"), DEST, "UDP", 0.0, timers)
    options.drain_outgoing()
    sends = run_timers(options, 6.35)
    assert sends[:5] == pytest.approx([0.1, 0.3, 0.7, 1.1, 1.5])
    assert all(b - a == pytest.approx(0.4) for a, b in itertools.pairwise(sends[3:]))
    assert options.get_timer() == pytest.approx(6.4)  # Timer F
    run_timers(options, 6.4)
    assert options.state is TERMINATED


# ---- INVITE server ------------------------------------------------------------------------


def test_invite_server_sends_100_when_the_tu_is_silent_for_200ms() -> None:
    tx = InviteServerTransaction(request(), SOURCE, "UDP", now=0.0)
    assert tx.drain_outgoing() == [] and tx.get_timer() == pytest.approx(0.2)
    assert run_timers(tx, 0.2) == [pytest.approx(0.2)]
    assert tx.last_response is not None and tx.last_response.status == 100
    assert "tag=" not in (tx.last_response.headers.get("To") or "")
    assert tx.last_response.headers.get_all("Via") == tx.request.headers.get_all("Via")


def test_invite_server_no_100_when_the_tu_answers_in_time_and_resends_last_provisional() -> None:
    req = request()
    tx = InviteServerTransaction(req, SOURCE, "UDP", now=0.0)
    ringing = response(req, 180)
    tx.send_response(ringing, now=0.1)
    (out,) = tx.drain_outgoing()
    assert out.data == ringing.to_bytes() and out.addr == SOURCE
    assert tx.get_timer() is None
    tx.receive_request(req, now=0.5)  # retransmitted INVITE
    assert [o.data for o in tx.drain_outgoing()] == [ringing.to_bytes()]
    assert tx.drain_events() == []


def test_invite_server_retransmitted_invite_before_any_answer_gets_100_at_once() -> None:
    req = request()
    tx = InviteServerTransaction(req, SOURCE, "UDP", now=0.0)
    tx.receive_request(req, now=0.1)
    (out,) = tx.drain_outgoing()
    assert out.data.startswith(b"SIP/2.0 100 Trying")
    assert tx.get_timer() is None


def test_invite_server_failure_retransmitted_on_timer_g_until_ack_then_timer_i() -> None:
    req = request()
    tx = InviteServerTransaction(req, SOURCE, "UDP", now=0.0)
    busy = response(req, 486)
    tx.send_response(busy, now=1.0)
    assert tx.state is COMPLETED
    assert len(tx.drain_outgoing()) == 1
    assert run_timers(tx, 13.0) == [1.5, 2.5, 4.5, 8.5, 12.5]
    tx.receive_request(req, now=13.0)  # retransmitted INVITE: final re-sent
    assert [o.data for o in tx.drain_outgoing()] == [busy.to_bytes()]
    ack = Request("ACK", req.uri, req.headers.copy())
    ack.headers.set("CSeq", "1 ACK")
    assert server_key(ack) == tx.key
    tx.receive_request(ack, now=13.5)
    assert tx.state is CONFIRMED
    assert tx.get_timer() == 13.5 + 5.0  # Timer I = T4
    tx.receive_request(ack, now=14.0)  # retransmitted ACK absorbed
    assert tx.drain_outgoing() == [] and tx.drain_events() == []
    assert run_timers(tx, 100.0) == []
    assert tx.state is TERMINATED
    assert kinds(tx) == [TransactionTerminated]


def test_invite_server_timer_h_without_ack_times_out() -> None:
    tx = InviteServerTransaction(request(), SOURCE, "UDP", now=0.0)
    tx.send_response(response(tx.request, 480), now=0.0)
    tx.drain_outgoing()
    sends = run_timers(tx, 100.0)
    assert sends == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert kinds(tx) == [TransactionTimeout, TransactionTerminated]


def test_invite_server_2xx_accepted_absorbs_retransmissions_until_timer_l() -> None:
    req = request()
    tx = InviteServerTransaction(req, SOURCE, "UDP", now=0.0)
    ok = response(req, 200)
    tx.send_response(ok, now=0.1)
    assert tx.state is ACCEPTED and len(tx.drain_outgoing()) == 1
    tx.receive_request(req, now=0.6)
    assert tx.drain_outgoing() == []  # RFC 6026: absorbed, the TU retransmits the 2xx
    tx.send_response(ok, now=0.6)  # ... through the transaction, which passes it on
    assert len(tx.drain_outgoing()) == 1
    with pytest.raises(TransactionStateError):
        tx.send_response(response(req, 486), now=0.7)
    assert tx.get_timer() == pytest.approx(0.1 + 32.0)
    run_timers(tx, 40.0)
    assert tx.state is TERMINATED


def test_invite_server_over_tcp_has_no_timer_g_and_no_timer_i() -> None:
    req = request()
    tx = InviteServerTransaction(req, SOURCE, "TCP", now=0.0)
    tx.send_response(response(req, 404), now=0.0)
    tx.drain_outgoing()
    assert tx.get_timer() == 32.0  # only Timer H
    ack = Request("ACK", req.uri, req.headers.copy())
    ack.headers.set("CSeq", "1 ACK")
    tx.receive_request(ack, now=1.0)
    assert tx.state is TERMINATED


# ---- non-INVITE server ---------------------------------------------------------------------


def test_non_invite_server_resends_last_response_and_timer_j() -> None:
    req = request("OPTIONS")
    tx = NonInviteServerTransaction(req, SOURCE, "UDP", now=0.0)
    assert tx.state is TRYING and tx.get_timer() is None
    tx.receive_request(req, now=0.5)  # nothing to resend yet: absorbed
    assert tx.drain_outgoing() == []
    ok = response(req, 200)
    tx.send_response(ok, now=0.6)
    assert tx.state is COMPLETED
    tx.receive_request(req, now=1.1)
    assert [o.data for o in tx.drain_outgoing()] == [ok.to_bytes()] * 2
    with pytest.raises(TransactionStateError):
        tx.send_response(response(req, 500), now=1.2)
    assert tx.get_timer() == pytest.approx(0.6 + 32.0)
    run_timers(tx, 40.0)
    assert tx.state is TERMINATED
    assert kinds(tx) == [TransactionTerminated]


def test_non_invite_server_proceeding_resends_provisional() -> None:
    req = request("SUBSCRIBE")
    tx = NonInviteServerTransaction(req, SOURCE, "UDP", now=0.0)
    trying = response(req, 100)
    tx.send_response(trying, now=0.1)
    assert tx.state is PROCEEDING
    tx.receive_request(req, now=0.5)
    assert [o.data for o in tx.drain_outgoing()] == [trying.to_bytes()] * 2


def test_non_invite_server_over_tcp_ends_with_the_final() -> None:
    tx = NonInviteServerTransaction(request("BYE"), SOURCE, "TCP", now=0.0)
    tx.send_response(response(tx.request, 200), now=0.1)
    assert tx.state is TERMINATED


# ---- matching -------------------------------------------------------------------------------


def test_keys() -> None:
    req = request()
    assert client_key(req) == ("z9hG4bKtx1", "INVITE")
    assert client_key(response(req, 180)) == client_key(req)
    assert server_key(req) == ("z9hG4bKtx1", "192.0.2.1:5060", "INVITE")
    cancel = request("CANCEL")
    assert server_key(cancel)[-1] == "CANCEL"
    old = request(branch="1234")  # RFC 2543: no magic cookie
    key = server_key(old)
    assert key[0] == "rfc2543" and "call-1@192.0.2.1" in key and "a1" in key
    ack = Request("ACK", "sip:other@example.com", old.headers.copy())
    ack.headers.set("CSeq", "1 ACK")
    ack.headers.set("To", "Bob <sip:bob@example.com>;tag=ours")
    assert server_key(ack) == key


def test_trying_delay_zero_sends_100_at_once() -> None:
    tx = InviteServerTransaction(request(), SOURCE, "UDP", now=3.0, timers=TimerConfig(trying=0))
    (out,) = tx.drain_outgoing()
    assert out.data.startswith(b"SIP/2.0 100 Trying") and tx.get_timer() is None
