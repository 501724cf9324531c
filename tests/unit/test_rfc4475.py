"""RFC 4475 torture messages: every valid one parses with the values the RFC names,
every invalid one is refused with SipParseError (or flagged by request_problem), and
nothing raises anything else. The files are read from ../shared/rfc4475/ (never copied)."""

from __future__ import annotations

import pytest

from sipdialer.sip.address import parse_uri
from sipdialer.sip.errors import SipParseError, SipVersionError
from sipdialer.sip.message import Request, Response, parse_message, request_problem
from tests.fixtures.corpus import (
    ALL,
    APPLICATION,
    COMPAT,
    CORPUS,
    MAY_ACCEPT,
    MUST_REFUSE,
    TRANSACTION,
    VALID,
    load,
)


def parse(name: str) -> Request | Response:
    return parse_message(load(name))


def test_corpus_is_complete() -> None:
    assert CORPUS.is_dir(), f"RFC 4475 corpus not found at {CORPUS}"
    names = sorted(p.stem for p in CORPUS.glob("*.dat"))
    assert len(names) == 49
    assert sorted(ALL) == names


@pytest.mark.parametrize("name", ALL)
def test_nothing_raises_anything_but_parse_error(name: str) -> None:
    data = load(name)
    for chunk in (data, data[: len(data) // 2], data[:-1], data + b"\r\n"):
        try:
            parse_message(chunk)
        except SipParseError:
            pass


@pytest.mark.parametrize("name", MUST_REFUSE)
def test_invalid_messages_are_refused(name: str) -> None:
    with pytest.raises(SipParseError):
        parse(name)


def test_badvers_is_a_version_error_for_505() -> None:
    with pytest.raises(SipVersionError):
        parse("badvers")


@pytest.mark.parametrize("name", VALID + TRANSACTION + APPLICATION + COMPAT)
def test_valid_and_application_messages_parse(name: str) -> None:
    msg = parse(name)
    assert isinstance(msg, Request | Response)
    # serialising and parsing again is stable (bytes that are not UTF-8 survive)
    again = parse_message(msg.to_bytes())
    assert again.to_bytes() == msg.to_bytes()


@pytest.mark.parametrize("name", MAY_ACCEPT)
def test_liberal_cases_parse_or_refuse_cleanly(name: str) -> None:
    try:
        msg = parse(name)
    except SipParseError:
        return
    assert msg.to_bytes()


def test_wsinv_whitespace_and_folding() -> None:
    msg = parse("wsinv")
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert msg.to_addr().uri == "sip:vivekg@chair-dnrc.example.com"
    assert msg.to_addr().tag == "1918181833n"
    frm = msg.from_addr()
    assert frm.display == 'J Rosenberg \\"'
    assert frm.uri == "sip:jdrosen@example.com"
    assert frm.tag == "98asjd8"
    assert int(msg.headers.get("Max-Forwards") or "") == 68
    assert msg.cseq() == (9, "INVITE")
    vias = msg.vias()
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    route = msg.headers.values("Route")
    assert route == ["<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"]
    (contact,) = msg.contacts()
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert len(msg.body) == 150 and msg.body.startswith(b"v=0\r\n")


def test_intmeth_tokens_and_non_utf8_bytes() -> None:
    msg = parse("intmeth")
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = parse_uri(msg.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert uri.host == "example.com"
    assert msg.top_via().branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to_addr().display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.cseq() == (139122385, msg.method)
    assert msg.from_addr().tag == "_token~1'+`*%!-."
    raw = load("intmeth")
    ext = msg.headers.get("extensionHeader-!.%*+_`'~") or ""
    value = ext.encode("utf-8", "surrogateescape")
    assert value and raw.index(value) > 0  # the raw bytes of the value survived
    assert parse_message(msg.to_bytes()).headers.get("extensionHeader-!.%*+_`'~") == ext


def test_esc01_escapes_kept() -> None:
    msg = parse("esc01")
    assert isinstance(msg, Request)
    uri = parse_uri(msg.uri)
    assert uri.user == "sips%3Auser%40example.com"
    assert uri.user_unescaped == "sips:user@example.com"
    assert msg.to_addr().sip_uri.user_unescaped == "user"
    assert msg.from_addr().sip_uri.user_unescaped == "I have spaces"
    assert msg.headers.get("Content-Type") == "application/sdp"  # compact "C"
    assert msg.call_id == "esc01.239409asdfakjkn23onasd0-3234"  # compact "i"
    (contact,) = msg.contacts()
    assert contact.sip_uri.user_unescaped == "caller"
    assert contact.sip_uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}


def test_escnull_and_two_contacts() -> None:
    msg = parse("escnull")
    assert msg.to_addr().sip_uri.user == "null-%00-null"
    assert msg.to_addr().sip_uri.user_unescaped == "null-\x00-null"
    assert [c.sip_uri.user for c in msg.contacts()] == ["%00", "%00%00"]


def test_esc02_escaped_method_and_header_name() -> None:
    msg = parse("esc02")
    assert isinstance(msg, Request)
    assert msg.method == "RE%47IST%45R"
    assert msg.cseq() == (29344, "RE%47IST%45R")
    assert msg.to_addr().display == "%Z%45"
    assert len(msg.contacts()) == 2  # C%6Fntact is an unknown header, not Contact
    assert msg.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_display_without_space() -> None:
    frm = parse("lwsdisp").from_addr()
    assert frm.display == "caller"
    assert frm.uri == "sip:caller@example.com"


def test_longreq_long_values() -> None:
    msg = parse("longreq")
    to = msg.to_addr()
    assert to.display is not None and to.display.startswith("I have a user name of extreme")
    assert to.sip_uri.port == 6000
    assert len(msg.vias()) > 30
    assert msg.headers.get("Content-Length") == "150"
    assert len(msg.body) == 150


def test_dblreq_only_the_first_message() -> None:
    msg = parse("dblreq")
    assert isinstance(msg, Request)
    assert msg.method == "REGISTER"
    assert msg.body == b""


def test_semiuri_semicolon_in_user() -> None:
    msg = parse("semiuri")
    uri = parse_uri(msg.uri)
    assert uri.user == "user;par=u%40example.net"
    assert uri.host == "example.com"
    assert uri.params == {}
    assert msg.headers.values("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_transports() -> None:
    vias = parse("transports").vias()
    assert [v.transport for v in vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_binary_body() -> None:
    msg = parse("mpart01")
    assert (msg.headers.get("Content-Type") or "").startswith("multipart/mixed")
    assert len(msg.body) == 553


def test_unreason_and_noreason() -> None:
    msg = parse("unreason")
    assert isinstance(msg, Response)
    assert msg.status == 200
    assert msg.reason.startswith("= 2**3 * 5**2 но сто девяносто девять")
    msg = parse("noreason")
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (100, "")


def test_badbranch_is_rfc2543_style() -> None:
    via = parse("badbranch").top_via()
    assert via.branch == "z9hG4bK"  # the cookie alone: not a usable RFC 3261 branch


def test_inv2543_parses_without_branch_or_max_forwards() -> None:
    msg = parse("inv2543")
    assert isinstance(msg, Request)
    assert msg.top_via().branch is None
    assert "Max-Forwards" not in msg.headers
    assert msg.from_addr().tag is None


@pytest.mark.parametrize(
    ("name", "status"),
    [("insuf", 400), ("multi01", 400), ("mcl01", 400), ("unkscm", 416), ("novelsc", 416)],
)
def test_application_layer_answers(name: str, status: int) -> None:
    msg = parse(name)
    assert isinstance(msg, Request)
    problem = request_problem(msg)
    assert problem is not None and problem[0] == status


@pytest.mark.parametrize("name", ["cparam01", "cparam02", "regescrt", "zeromf", "bext01"])
def test_application_layer_acceptable(name: str) -> None:
    msg = parse(name)
    assert isinstance(msg, Request)
    assert request_problem(msg) is None


def test_cparam_contact_params_belong_where_the_rfc_says() -> None:
    (c1,) = parse("cparam01").contacts()
    assert c1.uri == "sip:+19725552222@gw1.example.net"
    assert c1.params == {"unknownparam": None}  # header parameter without < >
    (c2,) = parse("cparam02").contacts()
    assert c2.sip_uri.params == {"unknownparam": None}  # URI parameter inside < >
    assert c2.params == {}
