"""Tests for sipdialer.sip.endpoint: the sans-IO SIP front driven with bytes and a fake
clock — Via stamping, RFC 3581 routing, matching, malformed input (random bytes and the
RFC 4475 torture corpus), CANCEL, 2xx retransmission and stray 2xx handling."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from sipdialer.sip.endpoint import Outgoing, SipEndpoint, UasAnswer
from sipdialer.sip.errors import SipParseError
from sipdialer.sip.events import (
    AckTimeout,
    Event,
    RequestReceived,
    ResponseReceived,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
)
from sipdialer.sip.message import Request, Response, make_response, parse_message
from sipdialer.sip.transaction import (
    CONFIRMED,
    InviteServerTransaction,
    NonInviteServerTransaction,
)
from tests.fixtures.corpus import ALL, CORPUS

HOST, PORT = "192.0.2.1", 5060
PEER = ("203.0.113.7", 40000)
TRUNK = ("198.51.100.20", 5060)


def endpoint() -> SipEndpoint:
    return SipEndpoint(host=HOST, port=PORT)


def drain(ep: SipEndpoint) -> list[Event]:
    out: list[Event] = []
    while (event := ep.next_event()) is not None:
        out.append(event)
    return out


def run(ep: SipEndpoint, until: float) -> list[tuple[float, Outgoing]]:
    """Advance the fake clock through every deadline up to ``until``."""
    sent: list[tuple[float, Outgoing]] = []
    while (deadline := ep.get_timer()) is not None and deadline <= until:
        ep.handle_timer(deadline)
        sent += [(deadline, o) for o in ep.messages_to_send()]
    return sent


def parsed(out: Outgoing) -> Request | Response:
    """Parse what we sent (leniently: a 400 echoes the broken headers it answers)."""
    return parse_message(out.data, strict=False)


def status_of(out: Outgoing) -> int:
    msg = parsed(out)
    assert isinstance(msg, Response)
    return msg.status


def incoming(
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bKin1",
    sent_by: str = "10.0.0.5:5070",
    rport: bool = True,
    cseq: int = 1,
    to: str = "<sip:dialer@example.com>",
    extra: str = "",
    uri: str = "sip:dialer@192.0.2.1",
) -> bytes:
    via_params = f";branch={branch}" if branch else ""
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {sent_by}{via_params}{';rport' if rport else ''}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=from1\r\n"
        f"To: {to}\r\n"
        "Call-ID: in-call-1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@10.0.0.5:5070>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def outgoing_invite(method: str = "INVITE") -> Request:
    return Request(
        method,
        "sip:+15551234@trunk.example.com",
        [
            ("Route", "<sip:198.51.100.20;lr>"),
            ("From", "<sip:dialer@example.com>;tag=ours1"),
            ("To", "<sip:+15551234@trunk.example.com>"),
            ("Call-ID", "out-call-1"),
            ("CSeq", f"7 {method}"),
            ("Contact", "<sip:dialer@192.0.2.1:5060>"),
        ],
    )


def reply(req: Request, status: int, to_tag: str = "far1") -> bytes:
    return make_response(req, status, to_tag=to_tag).to_bytes()


def receive_new(ep: SipEndpoint, data: bytes, now: float = 0.0) -> RequestReceived:
    ep.receive(data, PEER, "UDP", now)
    (event,) = drain(ep)
    assert isinstance(event, RequestReceived)
    return event


# ---- UAC side -------------------------------------------------------------------------


def test_send_request_stamps_via_max_forwards_and_user_agent() -> None:
    ep = endpoint()
    original = outgoing_invite("OPTIONS")
    tx = ep.send_request(original, TRUNK, "udp", now=0.0)
    (out,) = ep.messages_to_send()
    assert (out.addr, out.transport) == (TRUNK, "UDP")
    sent = parsed(out)
    assert isinstance(sent, Request)
    via = sent.top_via()
    assert (via.transport, via.host, via.port) == ("UDP", HOST, PORT)
    assert via.branch is not None and via.branch.startswith("z9hG4bK")
    assert len(via.branch) >= len("z9hG4bK") + 16 and via.wants_rport
    assert sent.headers.get("Max-Forwards") == "70"
    assert sent.headers.get("User-Agent") == "sipdialer"
    assert "Via" not in original.headers  # the caller's request is not modified
    assert tx.request.top_via() == via and tx.dest == TRUNK
    assert ep.new_branch() != ep.new_branch()
    mine = outgoing_invite("OPTIONS")
    mine.headers.add("Max-Forwards", "5")
    ep.send_request(mine, TRUNK, "TCP", now=0.0)
    (out,) = ep.messages_to_send()
    assert out.transport == "TCP" and b"Via: SIP/2.0/TCP " in out.data
    assert parsed(out).headers.get_all("Max-Forwards") == ["5"]
    with pytest.raises(ValueError):
        ep.send_request(outgoing_invite("ACK"), TRUNK, "UDP", now=0.0)


def test_responses_are_matched_to_client_transactions() -> None:
    ep = endpoint()
    tx = ep.send_request(outgoing_invite(), TRUNK, "UDP", now=0.0)
    ep.messages_to_send()
    ep.receive(reply(tx.request, 180), TRUNK, "UDP", 0.1)
    (event,) = drain(ep)
    assert isinstance(event, ResponseReceived) and event.transaction is tx
    assert event.response.status == 180

    foreign = make_response(tx.request, 200, to_tag="x")
    foreign.headers.remove_first("Via")
    foreign.headers.insert_first("Via", "SIP/2.0/UDP 192.0.2.250:5060;branch=z9hG4bKnotus")
    ep.receive(foreign.to_bytes(), TRUNK, "UDP", 0.2)
    assert drain(ep) == [] and ep.stats["dropped_foreign_via"] == 1

    other = outgoing_invite("OPTIONS")
    other.headers.insert_first("Via", f"SIP/2.0/UDP {HOST}:{PORT};branch=z9hG4bKgone")
    ep.receive(reply(other, 404), TRUNK, "UDP", 0.3)
    assert drain(ep) == [] and ep.stats["dropped_unmatched_response"] == 1


def test_stray_2xx_retransmission_is_passed_up_without_transaction() -> None:
    ep = endpoint()
    tx = ep.send_request(outgoing_invite(), TRUNK, "UDP", now=0.0)
    ok = reply(tx.request, 200)
    ep.receive(ok, TRUNK, "UDP", 1.0)
    ep.receive(ok, TRUNK, "UDP", 2.0)  # Accepted: passed up with its transaction
    assert [e.transaction for e in drain(ep) if isinstance(e, ResponseReceived)] == [tx, tx]
    run(ep, 100.0)  # Timer M
    assert ep.client_transactions == ()
    assert [type(e) for e in drain(ep)] == [TransactionTerminated]
    ep.receive(ok, TRUNK, "UDP", 101.0)
    (event,) = drain(ep)
    assert isinstance(event, ResponseReceived) and event.transaction is None
    assert event.response.status == 200


def test_invite_timeout_over_udp_and_tcp() -> None:
    ep = endpoint()
    ep.send_request(outgoing_invite(), TRUNK, "UDP", now=0.0)
    ep.send_request(outgoing_invite("OPTIONS"), TRUNK, "TCP", now=0.0)
    assert len(ep.messages_to_send()) == 2
    sent = run(ep, 100.0)
    assert [(t, o.transport) for t, o in sent] == [
        (t, "UDP") for t in (0.5, 1.5, 3.5, 7.5, 15.5, 31.5)
    ]
    kinds = [type(e) for e in drain(ep)]
    assert kinds.count(TransactionTimeout) == 2
    assert ep.client_transactions == () and ep.get_timer() is None


def test_transport_error_fails_the_transactions_going_there() -> None:
    ep = endpoint()
    tx = ep.send_request(outgoing_invite(), TRUNK, "UDP", now=0.0)
    other = ep.send_request(outgoing_invite("OPTIONS"), ("192.0.2.99", 5060), "UDP", now=0.0)
    ep.transport_error(TRUNK, "UDP", now=0.1)
    events = drain(ep)
    assert [type(e) for e in events] == [TransportError, TransactionTerminated]
    assert events[0].transaction is tx
    assert ep.client_transactions == (other,)


def test_cancel_waits_for_a_provisional_and_is_built_per_9_1() -> None:
    ep = endpoint()
    invite = outgoing_invite()
    tx = ep.send_request(invite, TRUNK, "UDP", now=0.0)
    ep.messages_to_send()
    assert ep.send_cancel(tx, now=0.1, reason='SIP;cause=487;text="gone"') is None
    assert ep.messages_to_send() == []  # §9.1: not before a provisional
    ep.receive(reply(tx.request, 180), TRUNK, "UDP", 0.3)
    (out,) = ep.messages_to_send()
    cancel = parsed(out)
    assert isinstance(cancel, Request) and out.addr == TRUNK
    assert (cancel.method, cancel.uri) == ("CANCEL", invite.uri)
    assert cancel.headers.get_all("Via") == tx.request.headers.get_all("Via")
    for name in ("From", "To", "Call-ID"):
        assert cancel.headers.get(name) == tx.request.headers.get(name)
    assert "tag=" not in (cancel.headers.get("To") or "")
    assert cancel.headers.get("CSeq") == "7 CANCEL"
    assert cancel.headers.get_all("Route") == ["<sip:198.51.100.20;lr>"]
    assert cancel.headers.get("Reason") == 'SIP;cause=487;text="gone"'
    assert cancel.headers.get("Max-Forwards") == "70"
    cancel_tx = ep.send_cancel(tx, now=0.4)  # asking again returns the same CANCEL
    assert cancel_tx is not None and cancel_tx.request.method == "CANCEL"
    ep.receive(reply(cancel_tx.request, 200), TRUNK, "UDP", 0.5)
    ep.receive(reply(tx.request, 487), TRUNK, "UDP", 0.6)
    finals = [e.response.status for e in drain(ep) if isinstance(e, ResponseReceived)]
    assert finals == [180, 200, 487]
    (ack,) = ep.messages_to_send()
    assert ack.data.startswith(b"ACK ")
    assert ep.send_cancel(tx, now=0.7) is None  # final arrived: nothing to cancel


def test_cancel_after_provisional_goes_out_at_once_and_not_after_a_final() -> None:
    ep = endpoint()
    tx = ep.send_request(outgoing_invite(), TRUNK, "UDP", now=0.0)
    ep.receive(reply(tx.request, 183), TRUNK, "UDP", 0.1)
    ep.messages_to_send()
    cancel_tx = ep.send_cancel(tx, now=0.2)
    assert cancel_tx is not None
    assert [o.data for o in ep.messages_to_send()] == [cancel_tx.request.to_bytes()]
    late = ep.send_request(outgoing_invite(), TRUNK, "UDP", now=1.0)
    ep.send_cancel(late, now=1.1)  # pending...
    ep.receive(reply(late.request, 486), TRUNK, "UDP", 1.2)  # ...and moot
    assert all(not o.data.startswith(b"CANCEL") for o in ep.messages_to_send())


def test_send_stateless_ack_gets_one_via_and_keeps_it() -> None:
    ep = endpoint()
    ack = outgoing_invite("ACK")
    ep.send_stateless(ack, TRUNK, "UDP")
    ep.send_stateless(ack, TRUNK, "UDP")  # re-ACK of a retransmitted 2xx: same branch
    first, second = ep.messages_to_send()
    assert first.data == second.data and len(parsed(first).vias()) == 1
    ok = make_response(parse_message(incoming()), 200)  # type: ignore[arg-type]
    ep.send_stateless(ok, PEER, "UDP")
    assert ep.messages_to_send()[0].data == ok.to_bytes()


# ---- UAS side -------------------------------------------------------------------------


def test_rport_and_received_are_stamped_and_responses_go_to_the_source_port() -> None:
    ep = endpoint()
    event = receive_new(ep, incoming())
    via = event.request.top_via()
    assert via.rport == 40000 and via.received == "203.0.113.7"
    assert event.source == PEER and event.transport == "UDP"
    assert isinstance(event.transaction, InviteServerTransaction)
    ep.respond(event.transaction, ep.response_to(event.request, 180), now=0.1)
    (out,) = ep.messages_to_send()
    assert out.addr == PEER
    assert "rport=40000" in (parsed(out).headers.get("Via") or "")
    assert "received=203.0.113.7" in (parsed(out).headers.get("Via") or "")


@pytest.mark.parametrize(
    ("sent_by", "expected"),
    [("10.0.0.5:5070", ("203.0.113.7", 5070)), ("10.0.0.5", ("203.0.113.7", 5060))],
)
def test_without_rport_responses_go_to_received_at_the_via_port(
    sent_by: str, expected: tuple[str, int]
) -> None:
    ep = endpoint()
    event = receive_new(ep, incoming("OPTIONS", sent_by=sent_by, rport=False))
    assert event.request.top_via().received == "203.0.113.7"
    assert event.request.top_via().rport is None
    assert isinstance(event.transaction, NonInviteServerTransaction)
    ep.respond(event.transaction, ep.response_to(event.request, 200), now=0.0)
    assert ep.messages_to_send()[0].addr == expected


def test_via_matching_the_source_is_left_alone_and_tcp_answers_to_the_source() -> None:
    ep = endpoint()
    ep.receive(incoming("OPTIONS", sent_by="203.0.113.7:40000", rport=False), PEER, "TCP", 0)
    (event,) = drain(ep)
    assert isinstance(event, RequestReceived) and event.transaction is not None
    assert event.request.headers.get("Via") == "SIP/2.0/UDP 203.0.113.7:40000;branch=z9hG4bKin1"
    ep.respond(event.transaction, ep.response_to(event.request, 200), now=0.0)
    (out,) = ep.messages_to_send()
    assert (out.addr, out.transport) == (PEER, "TCP")


def test_invite_server_100_trying_and_retransmission_absorbed() -> None:
    ep = endpoint()
    event = receive_new(ep, incoming())
    assert ep.get_timer() == pytest.approx(0.2)
    ((t, out),) = run(ep, 0.3)
    assert t == pytest.approx(0.2) and status_of(out) == 100 and out.addr == PEER
    ep.receive(incoming(), PEER, "UDP", 0.5)  # retransmission: no new event, 100 again
    assert drain(ep) == []
    assert [status_of(o) for o in ep.messages_to_send()] == [100]
    assert ep.server_transactions == (event.transaction,)


def test_to_tag_is_stable_per_request() -> None:
    ep = endpoint()
    event = receive_new(ep, incoming())
    ringing = ep.response_to(event.request, 180)
    ok = ep.response_to(event.request, 200)
    assert ringing.to_addr().tag == ok.to_addr().tag == ep.to_tag_for(event.request)
    assert ep.response_to(event.request, 100).to_addr().tag is None
    tagged = ep.response_to(event.request, 200, to_tag="mine")
    assert tagged.to_addr().tag == "mine"


def test_2xx_retransmitted_until_the_ack_arrives() -> None:
    ep = endpoint()
    event = receive_new(ep, incoming())
    assert event.transaction is not None
    ok = ep.response_to(event.request, 200)
    ep.respond(event.transaction, ok, now=0.1)
    assert [o.data for o in ep.messages_to_send()] == [ok.to_bytes()]
    sent = run(ep, 2.0)
    assert [t for t, _ in sent] == pytest.approx([0.6, 1.6])
    assert all(o.data == ok.to_bytes() and o.addr == PEER for _, o in sent)
    tag = ok.to_addr().tag
    ack = incoming("ACK", branch="z9hG4bKack", to=f"<sip:dialer@example.com>;tag={tag}")
    ep.receive(ack, PEER, "UDP", 2.0)
    (event,) = drain(ep)
    assert isinstance(event, RequestReceived) and event.transaction is None
    assert event.request.method == "ACK"
    assert [o for _, o in run(ep, 100.0)] == []  # no more 2xx; Timer L ends the INVITE tx
    assert ep.server_transactions == ()


def test_2xx_without_ack_times_out() -> None:
    ep = endpoint()
    event = receive_new(ep, incoming())
    assert event.transaction is not None
    ok = ep.response_to(event.request, 200)
    ep.respond(event.transaction, ok, now=0.0)
    assert len(ep.messages_to_send()) == 1
    sent = run(ep, 100.0)
    assert [t for t, _ in sent] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    timeouts = [e for e in drain(ep) if isinstance(e, AckTimeout)]
    assert len(timeouts) == 1 and timeouts[0].response is ok
    assert ep.get_timer() is None


def test_incoming_cancel_is_its_own_transaction_and_finds_the_invite() -> None:
    ep = endpoint()
    invite_event = receive_new(ep, incoming())
    invite_tx = invite_event.transaction
    assert isinstance(invite_tx, InviteServerTransaction)
    cancel_event = receive_new(ep, incoming("CANCEL"), now=0.1)
    assert isinstance(cancel_event.transaction, NonInviteServerTransaction)
    assert ep.find_invite_server_transaction(cancel_event.request) is invite_tx
    ep.respond(cancel_event.transaction, ep.response_to(cancel_event.request, 200), 0.1)
    terminated = ep.response_to(invite_event.request, 487)
    ep.respond(invite_tx, terminated, now=0.1)
    assert [status_of(o) for o in ep.messages_to_send()] == [200, 487]
    tag = terminated.to_addr().tag
    ack = incoming("ACK", to=f"<sip:dialer@example.com>;tag={tag}")  # same branch
    ep.receive(ack, PEER, "UDP", 0.2)
    assert drain(ep) == []  # the ACK of a non-2xx stays in the transaction layer
    assert invite_tx.state is CONFIRMED
    assert ep.messages_to_send() == [] and run(ep, 0.3) == []


def test_rfc2543_branchless_requests_are_matched_by_dialog_identifiers() -> None:
    ep = endpoint()
    invite = incoming(branch="", rport=False)
    event = receive_new(ep, invite)
    assert event.transaction is not None and event.transaction.key[0] == "rfc2543"
    ep.receive(invite, PEER, "UDP", 0.1)
    assert drain(ep) == []  # retransmission matched
    ep.respond(event.transaction, ep.response_to(event.request, 486), now=0.2)
    tag = ep.to_tag_for(event.request)
    ep.receive(incoming("ACK", branch="", rport=False, to=f"<sip:x@y>;tag={tag}"), PEER, "UDP", 1)
    assert drain(ep) == [] and event.transaction.state is CONFIRMED


def test_request_problem_is_answered_statelessly_without_the_tu() -> None:
    ep = endpoint()
    data = incoming("OPTIONS", uri="http://example.com/x")
    ep.receive(data, PEER, "UDP", 0.0)
    assert ep.server_transactions == ()  # nothing kept for it (RFC 3261 §8.2.7)
    ep.receive(data, PEER, "UDP", 0.5)  # the retransmission is simply answered again
    assert drain(ep) == []
    out = ep.messages_to_send()
    assert [status_of(o) for o in out] == [416, 416] and out[0].data == out[1].data
    assert ep.stats["answered_416"] == 2
    assert ep.server_transactions == () and ep.get_timer() is None
    missing = incoming("OPTIONS", branch="z9hG4bKnocallid").replace(b"Call-ID: in-call-1\r\n", b"")
    ep.receive(missing, PEER, "UDP", 1.0)
    (out,) = ep.messages_to_send()
    assert status_of(out) == 400 and parsed(out).reason == "Missing Call-ID"


# ---- malformed input ----------------------------------------------------------------------


def test_malformed_request_with_readable_via_gets_400_with_sanitised_reason() -> None:
    ep = endpoint()
    bad = incoming(extra="Max-Forwards: " + "\u00e9" * 120 + "\r\n")
    with pytest.raises(SipParseError):
        parse_message(bad)
    ep.receive(bad, PEER, "UDP", 0.0)
    assert drain(ep) == []
    (out,) = ep.messages_to_send()
    resp = parsed(out)
    assert isinstance(resp, Response) and resp.status == 400 and out.addr == PEER
    assert 0 < len(resp.reason) <= 80
    assert all(" " <= c <= "~" for c in resp.reason)
    assert resp.call_id == "in-call-1"
    assert "rport=40000" in (resp.headers.get("Via") or "")
    assert ep.stats["answered_400"] == 1


@pytest.mark.parametrize(
    ("cseq", "echoed"),
    [
        ("99999999999 OPTIONS", "2147483647 OPTIONS"),
        ("1 OPT,IONS", "1 OPTIONS"),
        ("x", "0 OPTIONS"),
        ("9" * 5000 + " X", "2147483647 X"),
        ("\u00b2 BYE", "0 BYE"),
    ],
)
def test_a_400_echoes_a_cseq_the_peer_can_parse(cseq: str, echoed: str) -> None:
    ep = endpoint()
    ep.receive(incoming("OPTIONS").replace(b"1 OPTIONS", cseq.encode()), PEER, "UDP", 0)
    (out,) = ep.messages_to_send()
    resp = parse_message(out.data)  # strictly
    assert isinstance(resp, Response) and resp.status == 400
    assert resp.headers.get("CSeq") == echoed


def test_other_sip_version_gets_505() -> None:
    ep = endpoint()
    ep.receive(incoming().replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1), PEER, "UDP", 0.0)
    (out,) = ep.messages_to_send()
    assert status_of(out) == 505 and out.addr == PEER


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"INVITE sip:x SIP/2.0\r\nCSeq: 1 INVITE\r\n\r\n",  # no Via: nowhere to answer
        incoming("ACK").replace(b"CSeq: 1 ACK", b"CSeq: x ACK"),  # never answer an ACK
        b"SIP/2.0 200 OK\r\nVia: garbage\r\n\r\n",  # broken response
        b"\xff\xfe\x00garbage",
    ],
)
def test_unanswerable_garbage_is_dropped_and_counted(data: bytes) -> None:
    ep = endpoint()
    ep.receive(data, PEER, "UDP", 0.0)
    assert ep.messages_to_send() == [] and drain(ep) == []
    assert ep.stats["internal_errors"] == 0
    assert sum(v for k, v in ep.stats.items() if k.startswith("dropped")) == 1


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 20)]
        else:
            buf[pos:pos] = rng.choice([b"\r\n", b";", b",", b"<", b'"', b":", b" ", b"\r\n "])
    return bytes(buf)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(4475)
    ep = endpoint()
    seeds = [incoming(), incoming("ACK"), incoming("CANCEL"), reply(outgoing_invite(), 200)]
    seeds.append(incoming("BYE", branch="z9hG4bKa", extra="Record-Route: <sip:p;lr>\r\n"))
    now = 0.0
    for i in range(3000):
        if i % 3 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))
        else:
            data = _mutate(rng, rng.choice(seeds))
        for transport in ("UDP", "TCP"):
            ep.receive(data, PEER, transport, now)
        now += 0.01
        ep.handle_timer(now)
        for out in ep.messages_to_send():  # a 400 echoes the broken headers it answers
            assert isinstance(parse_message(out.data, strict=False), Response)
        for event in drain(ep):  # a TU that answers everything
            if isinstance(event, RequestReceived) and event.transaction is not None:
                answer = ep.response_to(event.request, 500)
                ep.respond(event.transaction, answer, now)
    run(ep, now + 1000)
    assert ep.stats["internal_errors"] == 0
    assert ep.server_transactions == ()


def _corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.dat"))


@pytest.mark.parametrize("path", [CORPUS / f"{name}.dat" for name in ALL], ids=ALL)
def test_rfc4475_message_never_raises(path: Path) -> None:
    data = path.read_bytes()
    ep = endpoint()
    ep.receive(data, PEER, "UDP", 0.0)
    out = ep.messages_to_send()
    events = drain(ep)
    try:
        parse_message(data)
    except SipParseError:
        # refused by the parser: a 400/505 to the sender, or silence
        assert events == []
        assert len(out) <= 1 and all(status_of(o) in (400, 505) for o in out)
        if path.stem == "badvers":
            assert [status_of(o) for o in out] == [505]
    else:  # a request reaches the TU or is answered; a response is not ours: dropped
        is_request = not data.startswith(b"SIP/")
        assert (len(events) + len(out) == 1) == is_request
    run(ep, 1000.0)
    assert ep.stats["internal_errors"] == 0


def test_rfc4475_corpus_present() -> None:
    assert len(_corpus()) == 49, f"RFC 4475 corpus not found at {CORPUS}"


# ---- bounded state: stateless answers and the server transaction cap (issue 11, point 6) --


def test_stateless_policy_answers_without_a_transaction_each_time() -> None:
    ep = endpoint()
    asked: list[tuple[str, tuple[str, int], str]] = []

    def policy(req: Request, source: tuple[str, int], transport: str) -> UasAnswer | None:
        asked.append((req.method, source, transport))
        if req.method == "OPTIONS":
            return UasAnswer(200, None, (("Allow", "INVITE, BYE"),))
        return None

    ep.stateless_policy = policy
    data = incoming("OPTIONS")
    ep.receive(data, PEER, "UDP", 0.0)
    ep.receive(data, PEER, "UDP", 0.5)  # a retransmission is answered again, the same
    assert drain(ep) == []
    first, second = ep.messages_to_send()
    assert first.data == second.data and first.addr == PEER
    answer = parsed(first)
    assert isinstance(answer, Response) and answer.status == 200
    assert answer.headers.get("Allow") == "INVITE, BYE"
    assert answer.to_addr().tag == ep.to_tag_for(parse_message(data))
    assert ep.server_transactions == () and ep.get_timer() is None
    assert ep.stats["stateless_200"] == 2
    assert asked == [("OPTIONS", PEER, "UDP")] * 2
    # what the policy leaves alone goes to the TU in a transaction, as before
    event = receive_new(ep, incoming("BYE", branch="z9hG4bKbye"))
    assert event.transaction is not None and ep.server_transactions == (event.transaction,)


def test_a_failing_policy_leaves_the_request_to_the_tu() -> None:
    ep = endpoint()

    def broken(req: Request, source: tuple[str, int], transport: str) -> UasAnswer | None:
        raise RuntimeError("bug")

    ep.stateless_policy = broken
    event = receive_new(ep, incoming("OPTIONS"))
    assert event.transaction is not None
    assert ep.stats["internal_errors"] == 1


def flood(ep: SipEndpoint, n: int, source: tuple[str, int], now: float, tag: str) -> list[int]:
    """``n`` new REGISTERs from ``source``; the statuses answered without the TU."""
    for i in range(n):
        ep.receive(incoming("REGISTER", branch=f"z9hG4bK{tag}{i}"), source, "UDP", now)
    return [status_of(o) for o in ep.messages_to_send()]


def test_full_transaction_table_gets_stateless_503_with_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ep = SipEndpoint(
        host=HOST,
        port=PORT,
        max_server_transactions=10,
        max_server_transactions_per_source=100,
        overload_retry_after=7,
    )
    caplog.set_level(logging.WARNING, logger="sipdialer.sip.endpoint")
    assert flood(ep, 10, PEER, 0.0, "a") == []
    events = drain(ep)
    assert len(events) == 10 and len(ep.server_transactions) == 10
    for event in events:
        assert isinstance(event, RequestReceived) and event.transaction is not None
        ep.respond(event.transaction, ep.response_to(event.request, 200), now=0.1)
    ep.messages_to_send()
    assert flood(ep, 50, TRUNK, 0.2, "b") == [503] * 50
    assert drain(ep) == [] and len(ep.server_transactions) == 10
    ep.receive(incoming("REGISTER", branch="z9hG4bKb0"), TRUNK, "UDP", 0.3)
    (out,) = ep.messages_to_send()
    refusal = parsed(out)
    assert isinstance(refusal, Response) and refusal.headers.get("Retry-After") == "7"
    assert ep.stats["answered_503"] == 51
    lines = [r.getMessage() for r in caplog.records if "sip_transactions_full" in r.getMessage()]
    assert len(lines) == 1 and "scope=total" in lines[0] and "source=198.51.100.20" in lines[0]
    # Timer J (64·T1 over UDP) ends the answered ones: the table has room again
    run(ep, 0.1 + 64 * 0.5 + 0.01)
    assert ep.server_transactions == ()
    assert flood(ep, 3, TRUNK, 40.0, "c") == []
    assert sum(isinstance(e, RequestReceived) for e in drain(ep)) == 3


def test_one_source_cannot_take_the_whole_table() -> None:
    ep = SipEndpoint(
        host=HOST, port=PORT, max_server_transactions=100, max_server_transactions_per_source=5
    )
    assert flood(ep, 5, PEER, 0.0, "a") == []
    assert flood(ep, 20, PEER, 0.0, "b") == [503] * 20
    assert flood(ep, 20, ("203.0.113.7", 40001), 0.0, "c") == [503] * 20  # same IP
    assert flood(ep, 5, TRUNK, 0.0, "d") == []  # another source still gets in
    assert len(drain(ep)) == 10 and len(ep.server_transactions) == 10


def test_retransmission_of_a_request_in_the_table_is_not_refused() -> None:
    ep = SipEndpoint(host=HOST, port=PORT, max_server_transactions=1)
    event = receive_new(ep, incoming("REGISTER", branch="z9hG4bKone"))
    assert event.transaction is not None
    ep.respond(event.transaction, ep.response_to(event.request, 401), now=0.1)
    ep.messages_to_send()
    ep.receive(incoming("REGISTER", branch="z9hG4bKone"), PEER, "UDP", 0.5)
    assert [status_of(o) for o in ep.messages_to_send()] == [401]  # re-sent by its tx
