"""Tests for sipdialer.sip.dialog: RFC 3261 §12 dialogs on both sides, in-dialog requests
and routing, CSeq checks, target refresh, the UAS 2xx retransmission timer, and the
dialog's transition table walked row by row against expectations written out here."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sipdialer.sip.address import parse_uri
from sipdialer.sip.dialog import (
    Dialog,
    DialogInput,
    DialogState,
    DialogStateError,
    Uas2xxRetransmitter,
)
from sipdialer.sip.errors import SipError
from sipdialer.sip.message import Request, Response, make_response
from sipdialer.sip.timers import TimerConfig


def invite() -> Request:
    return Request(
        "INVITE",
        "sip:bob@example.com",
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKdlg1"),
            ("Max-Forwards", "70"),
            ("From", '"Alice" <sip:alice@example.com>;tag=alice-tag'),
            ("To", "<sip:bob@example.com>"),
            ("Call-ID", "dlg-call@192.0.2.1"),
            ("CSeq", "314 INVITE"),
            ("Contact", "<sip:alice@192.0.2.1:5060>"),
            ("Record-Route", "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>"),
            ("Record-Route", "<sip:p3.example.com;lr>"),
        ],
    )


def answer(req: Request, status: int = 200, tag: str = "bob-tag", contact: str = "") -> Response:
    resp = make_response(req, status, to_tag=tag)
    resp.headers.add("Contact", contact or "<sip:bob@198.51.100.5:5062;transport=udp>")
    return resp


def uac_dialog() -> Dialog:
    req = invite()
    return Dialog.from_uac_response(req, answer(req))


def peer_request(dialog: Dialog, method: str, cseq: int, contact: str | None = None) -> Request:
    """A request the peer sends us within ``dialog``."""
    headers = [
        ("Via", "SIP/2.0/UDP 198.51.100.5:5062;branch=z9hG4bKpeer"),
        ("From", f"<{dialog.remote_uri}>;tag={dialog.remote_tag}"),
        ("To", f"<{dialog.local_uri}>;tag={dialog.local_tag}"),
        ("Call-ID", dialog.call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact:
        headers.append(("Contact", contact))
    return Request(method, "sip:alice@192.0.2.1:5060", headers)


def test_uac_dialog_from_2xx() -> None:
    d = uac_dialog()
    assert d.state is DialogState.CONFIRMED
    assert d.id == ("dlg-call@192.0.2.1", "alice-tag", "bob-tag")
    assert (d.local_uri, d.remote_uri) == ("sip:alice@example.com", "sip:bob@example.com")
    assert (d.local_seq, d.remote_seq) == (314, None)
    assert d.remote_target == "sip:bob@198.51.100.5:5062;transport=udp"
    assert d.route_set == [
        "<sip:p3.example.com;lr>",
        "<sip:p2.example.com;lr>",
        "<sip:p1.example.com;lr>",
    ]
    assert d.next_hop() == parse_uri("sip:p3.example.com;lr")


def test_in_dialog_request_carries_route_and_increments_cseq() -> None:
    d = uac_dialog()
    bye = d.create_request("BYE")
    assert (bye.method, bye.uri) == ("BYE", d.remote_target)
    assert bye.headers.get_all("Route") == d.route_set
    assert bye.headers.get("CSeq") == "315 BYE"
    assert bye.headers.get("From") == '"Alice" <sip:alice@example.com>;tag=alice-tag'
    assert bye.headers.get("To") == "<sip:bob@example.com>;tag=bob-tag"
    assert bye.call_id == "dlg-call@192.0.2.1"
    assert "Contact" not in bye.headers and "Via" not in bye.headers
    reinvite = d.create_request(
        "INVITE", body=b"v=0\r\n", extra=[("Content-Type", "application/sdp")]
    )
    assert reinvite.headers.get("CSeq") == "316 INVITE"
    assert reinvite.headers.get("Contact") == "<sip:alice@192.0.2.1:5060>"
    assert reinvite.headers.get("Content-Type") == "application/sdp"
    assert reinvite.body == b"v=0\r\n"
    assert d.local_seq == 316


def test_ack_for_2xx_has_the_invite_cseq_number() -> None:
    d = uac_dialog()
    ack = d.create_ack(314)
    assert ack.method == "ACK" and ack.uri == d.remote_target
    assert ack.headers.get("CSeq") == "314 ACK"
    assert ack.headers.get_all("Route") == d.route_set
    assert d.local_seq == 314  # an ACK does not consume a CSeq number
    assert d.create_request("CANCEL").headers.get("CSeq") == "314 CANCEL"


def test_without_route_set_next_hop_is_the_remote_target() -> None:
    req = invite()
    req.headers.remove("Record-Route")
    d = Dialog.from_uac_response(req, answer(req))
    assert d.route_set == []
    assert d.next_hop() == parse_uri("sip:bob@198.51.100.5:5062;transport=udp")
    assert "Route" not in d.create_request("BYE").headers


def test_strict_route_set_puts_the_route_in_the_request_uri() -> None:
    req = invite()
    req.headers.set("Record-Route", "<sip:strict.example.com>")
    d = Dialog.from_uac_response(req, answer(req))
    bye = d.create_request("BYE")
    assert bye.uri == "sip:strict.example.com"
    assert bye.headers.get_all("Route") == [f"<{d.remote_target}>"]
    assert d.next_hop().host == "strict.example.com"


def test_remote_target_refreshed_by_reinvite_and_cseq_checked() -> None:
    d = uac_dialog()
    assert d.receive_request(peer_request(d, "INVITE", 10, "<sip:bob@203.0.113.9:6000>")) is None
    assert d.remote_target == "sip:bob@203.0.113.9:6000"
    assert d.remote_seq == 10
    assert d.receive_request(peer_request(d, "ACK", 10)) is None
    assert d.receive_request(peer_request(d, "INFO", 9)) == 500  # lower than the last
    assert d.remote_seq == 10
    assert d.receive_request(peer_request(d, "UPDATE", 11, "<sip:bob@203.0.113.10>")) is None
    assert d.remote_target == "sip:bob@203.0.113.10"
    assert d.receive_request(peer_request(d, "INFO", 12, "<sip:ignored@x>")) is None
    assert d.remote_target == "sip:bob@203.0.113.10"  # INFO is no target refresh
    other = peer_request(d, "BYE", 13)
    other.headers.set("To", f"<{d.local_uri}>;tag=not-ours")
    assert d.receive_request(other) == 481
    assert d.receive_request(peer_request(d, "BYE", 13)) is None
    assert d.state is DialogState.TERMINATED


def test_uas_dialog_from_request() -> None:
    req = invite()
    d = Dialog.from_uas_request(req, local_tag="our-tag", local_contact="sip:sd@192.0.2.50:5060")
    assert d.state is DialogState.EARLY
    assert d.id == ("dlg-call@192.0.2.1", "our-tag", "alice-tag")
    assert (d.local_uri, d.remote_uri) == ("sip:bob@example.com", "sip:alice@example.com")
    assert (d.local_seq, d.remote_seq) == (None, 314)
    assert d.remote_target == "sip:alice@192.0.2.1:5060"
    assert d.route_set == [
        "<sip:p1.example.com;lr>",
        "<sip:p2.example.com;lr>",
        "<sip:p3.example.com;lr>",
    ]
    d.confirm()
    assert d.state is DialogState.CONFIRMED
    bye = d.create_request("BYE")
    assert bye.headers.get("CSeq") == "1 BYE"
    assert bye.headers.get("From") == "<sip:bob@example.com>;tag=our-tag"
    assert bye.headers.get("To") == '"Alice" <sip:alice@example.com>;tag=alice-tag'
    assert bye.uri == "sip:alice@192.0.2.1:5060"
    assert d.create_request("INVITE").headers.get("Contact") == "<sip:sd@192.0.2.50:5060>"
    assert d.receive_request(peer_request(d, "INFO", 313)) == 500
    assert d.receive_request(peer_request(d, "INFO", 315)) is None


def test_early_dialog_confirmed_by_2xx_recomputes_route_set() -> None:
    req = invite()
    ringing = answer(req, 180, contact="<sip:bob@10.0.0.1>")
    d = Dialog.from_uac_response(req, ringing)
    assert d.state is DialogState.EARLY and d.remote_target == "sip:bob@10.0.0.1"
    other_fork = answer(req, 200, tag="someone-else")
    d.update_from_response(other_fork)
    assert d.state is DialogState.EARLY
    ok = answer(req, 200, contact="<sip:bob@10.0.0.2>")
    ok.headers.set("Record-Route", "<sip:only.example.com;lr>")
    d.update_from_response(ok)
    assert d.state is DialogState.CONFIRMED
    assert d.remote_target == "sip:bob@10.0.0.2"
    assert d.route_set == ["<sip:only.example.com;lr>"]


def test_early_dialog_ended_by_failure_and_confirmed_ended_by_481() -> None:
    req = invite()
    d = Dialog.from_uac_response(req, answer(req, 183))
    d.update_from_response(answer(req, 486))
    assert d.state is DialogState.TERMINATED
    d = uac_dialog()
    info = d.create_request("INFO")
    d.update_from_response(answer(info, 481))
    assert d.state is DialogState.TERMINATED


def test_2xx_to_reinvite_refreshes_target() -> None:
    d = uac_dialog()
    reinvite = d.create_request("INVITE")
    d.update_from_response(answer(reinvite, 200, contact="<sip:bob@192.0.2.77>"))
    assert d.remote_target == "sip:bob@192.0.2.77"
    assert len(d.route_set) == 3  # the route set never changes once confirmed


def test_uas_2xx_retransmitter_schedule_and_timeout() -> None:
    ok = answer(invite())
    r = Uas2xxRetransmitter(ok, now=0.0)
    times: list[float] = []
    while (deadline := r.get_timer()) is not None:
        for data in r.handle_timer(deadline):
            assert data == ok.to_bytes()
            times.append(deadline)
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert r.timed_out and not r.acked and r.done


def test_uas_2xx_retransmitter_stops_on_ack_and_honours_timers() -> None:
    r = Uas2xxRetransmitter(b"raw 2xx", now=10.0, timers=TimerConfig(t1=0.1, t2=0.4))
    assert r.get_timer() == pytest.approx(10.1)
    assert r.handle_timer(10.0) == []  # not due yet
    assert r.handle_timer(10.1) == [b"raw 2xx"]
    assert r.get_timer() == pytest.approx(10.3)
    r.ack_received()
    assert r.get_timer() is None and r.handle_timer(20.0) == [] and not r.timed_out


# ---- the table, row by row ------------------------------------------------------------

S, E = DialogState, DialogInput
NEW_CONTACT = "<sip:bob@10.9.9.9>"
NEW_ROUTE = "<sip:only.example.com;lr>"


def to_invite(status: int) -> Response:
    """A response to the INVITE that made the dialog, with a new Contact and Record-Route."""
    resp = answer(invite(), status, contact=NEW_CONTACT)
    resp.headers.set("Record-Route", NEW_ROUTE)
    return resp


def to_request(d: Dialog, method: str, status: int) -> Response:
    """A response to a request we send in ``d`` (which consumes a CSeq number)."""
    return answer(d.create_request(method), status, contact=NEW_CONTACT)


INPUTS: dict[DialogInput, Callable[[Dialog], object]] = {
    E.CONFIRM: lambda d: d.confirm(),
    E.TERMINATE: lambda d: d.terminate(),
    E.RECV_BYE: lambda d: d.receive_request(peer_request(d, "BYE", 900)),
    E.RECV_2XX_INVITE: lambda d: d.update_from_response(to_invite(200)),
    E.RECV_2XX_UPDATE: lambda d: d.update_from_response(to_request(d, "UPDATE", 200)),
    E.RECV_1XX_REFRESH: lambda d: d.update_from_response(to_invite(183)),
    E.RECV_FAILURE_INVITE: lambda d: d.update_from_response(to_invite(486)),
    E.RECV_GONE: lambda d: d.update_from_response(to_request(d, "INFO", 481)),
}


def dialog_in(state: DialogState) -> Dialog:
    """A UAC dialog brought to ``state`` through its inputs (early: from a 180)."""
    req = invite()
    if state is S.EARLY:
        d = Dialog.from_uac_response(req, answer(req, 180, contact="<sip:bob@10.0.0.1>"))
    else:
        d = Dialog.from_uac_response(req, answer(req, 200, contact="<sip:bob@10.0.0.1>"))
    if state is S.TERMINATED:
        d.terminate()
    assert d.state is state
    return d


OLD_ROUTES = ["<sip:p3.example.com;lr>", "<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]

# (state, input, next state, remote target after, route set after)
EXPECTED: list[tuple[DialogState, DialogInput, DialogState, str, list[str]]] = [
    (S.EARLY, E.CONFIRM, S.CONFIRMED, "sip:bob@10.0.0.1", OLD_ROUTES),
    (S.EARLY, E.TERMINATE, S.TERMINATED, "sip:bob@10.0.0.1", OLD_ROUTES),
    (S.EARLY, E.RECV_BYE, S.TERMINATED, "sip:bob@10.0.0.1", OLD_ROUTES),
    (S.EARLY, E.RECV_2XX_INVITE, S.CONFIRMED, "sip:bob@10.9.9.9", [NEW_ROUTE]),
    (S.EARLY, E.RECV_2XX_UPDATE, S.EARLY, "sip:bob@10.9.9.9", OLD_ROUTES),
    (S.EARLY, E.RECV_1XX_REFRESH, S.EARLY, "sip:bob@10.9.9.9", OLD_ROUTES),
    (S.EARLY, E.RECV_FAILURE_INVITE, S.TERMINATED, "sip:bob@10.0.0.1", OLD_ROUTES),
    (S.EARLY, E.RECV_GONE, S.TERMINATED, "sip:bob@10.0.0.1", OLD_ROUTES),
    (S.CONFIRMED, E.CONFIRM, S.CONFIRMED, "sip:bob@10.0.0.1", OLD_ROUTES),
    (S.CONFIRMED, E.TERMINATE, S.TERMINATED, "sip:bob@10.0.0.1", OLD_ROUTES),
    (S.CONFIRMED, E.RECV_BYE, S.TERMINATED, "sip:bob@10.0.0.1", OLD_ROUTES),
    (S.CONFIRMED, E.RECV_2XX_INVITE, S.CONFIRMED, "sip:bob@10.9.9.9", OLD_ROUTES),
    (S.CONFIRMED, E.RECV_2XX_UPDATE, S.CONFIRMED, "sip:bob@10.9.9.9", OLD_ROUTES),
    (S.CONFIRMED, E.RECV_GONE, S.TERMINATED, "sip:bob@10.0.0.1", OLD_ROUTES),
    (S.TERMINATED, E.TERMINATE, S.TERMINATED, "sip:bob@10.0.0.1", OLD_ROUTES),
    (S.TERMINATED, E.RECV_2XX_INVITE, S.TERMINATED, "sip:bob@10.9.9.9", OLD_ROUTES),
    (S.TERMINATED, E.RECV_2XX_UPDATE, S.TERMINATED, "sip:bob@10.9.9.9", OLD_ROUTES),
]


def test_the_expectations_cover_every_row_of_the_table() -> None:
    rows = {(state, event) for state, row in Dialog.TABLE.items() for event in row}
    assert {(row[0], row[1]) for row in EXPECTED} == rows
    assert set(Dialog.TABLE) == set(DialogState)
    for row in Dialog.TABLE.values():
        for _, action in row.values():
            assert action is None or callable(getattr(Dialog, f"_{action}", None)), action


@pytest.mark.parametrize(
    ("state", "event", "next_state", "target", "routes"),
    EXPECTED,
    ids=[f"{row[0].value}-{row[1].name}" for row in EXPECTED],
)
def test_row(
    state: DialogState,
    event: DialogInput,
    next_state: DialogState,
    target: str,
    routes: list[str],
) -> None:
    d = dialog_in(state)
    INPUTS[event](d)
    assert d.state is next_state
    assert (d.remote_target, d.route_set) == (target, routes)


# (state, input) from the network that the state does not list: absorbed
ABSORBED = [
    (S.CONFIRMED, E.RECV_1XX_REFRESH),
    (S.CONFIRMED, E.RECV_FAILURE_INVITE),  # a failed re-INVITE leaves the dialog as it was
    (S.TERMINATED, E.RECV_BYE),
    (S.TERMINATED, E.RECV_1XX_REFRESH),
    (S.TERMINATED, E.RECV_FAILURE_INVITE),
    (S.TERMINATED, E.RECV_GONE),
]


@pytest.mark.parametrize(
    ("state", "event"), ABSORBED, ids=[f"{s.value}-{e.name}" for s, e in ABSORBED]
)
def test_unexpected_network_input_is_absorbed(state: DialogState, event: DialogInput) -> None:
    assert event not in Dialog.TABLE[state]
    d = dialog_in(state)
    INPUTS[event](d)
    assert d.state is state
    assert (d.remote_target, d.route_set) == ("sip:bob@10.0.0.1", OLD_ROUTES)


@pytest.mark.parametrize("status", [100, 180, 202, 403])
def test_responses_that_mean_nothing_to_the_dialog_are_no_input(status: int) -> None:
    d = dialog_in(S.EARLY)
    d.update_from_response(to_request(d, "INFO", status))  # INFO is no target refresh
    d.update_from_response(to_request(d, "UPDATE", 100))
    assert d.state is S.EARLY and d.remote_target == "sip:bob@10.0.0.1"


def test_confirming_a_terminated_dialog_raises_the_named_error() -> None:
    d = dialog_in(S.TERMINATED)
    with pytest.raises(DialogStateError, match="confirm"):
        d.confirm()
    assert issubclass(DialogStateError, SipError)
    assert d.state is S.TERMINATED
