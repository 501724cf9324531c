"""The user agent's answers to requests nobody owns (sent statelessly by the endpoint) and
to in-dialog requests a call does not act on — the tables in
:mod:`sipdialer.aio.useragent` — and the rate-limited, escaped refusal log."""

from __future__ import annotations

import logging

import pytest

from sipdialer.aio.useragent import ALLOW, UserAgent, in_dialog_refusal
from sipdialer.logs import _Formatter
from sipdialer.sip.endpoint import UasAnswer
from sipdialer.sip.events import RequestReceived
from sipdialer.sip.message import Request
from tests.unit.test_logs import NASTY_FROM, fields

SOURCE = ("198.51.100.9", 5060)


def request(
    method: str, *, to_tag: str | None = None, require: str | None = None, sender: str = ""
) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bKp1"),
        ("From", sender or "<sip:probe@example.com>;tag=f1"),
        ("To", "<sip:1000@192.0.2.1>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", "policy-1"),
        ("CSeq", f"1 {method}"),
    ]
    if require:
        headers.append(("Require", require))
    return Request(method, "sip:1000@192.0.2.1", headers)


ALLOW_HEADER = (("Allow", ALLOW),)


@pytest.mark.parametrize(
    ("req", "answer"),
    [
        (
            request("OPTIONS"),
            UasAnswer(
                200,
                None,
                (("Allow", ALLOW), ("Accept", "application/sdp"), ("Accept-Language", "en")),
            ),
        ),
        (request("INVITE"), UasAnswer(403, "Forbidden (no incoming calls)")),
        (request("REGISTER"), UasAnswer(405, None, ALLOW_HEADER)),  # no registrar installed
        (request("SUBSCRIBE"), UasAnswer(405, None, ALLOW_HEADER)),
        (request("FROBNICATE"), UasAnswer(501, None, ALLOW_HEADER)),
        (request("CANCEL"), UasAnswer(481)),
        (request("BYE", to_tag="unknown"), UasAnswer(481)),
        (request("OPTIONS", require="100rel"), UasAnswer(420, None, (("Unsupported", "100rel"),))),
        (request("ACK", to_tag="unknown"), None),
    ],
    ids=lambda v: v.method if isinstance(v, Request) else "",
)
def test_stateless_answers_to_requests_nobody_owns(req: Request, answer: UasAnswer | None) -> None:
    assert UserAgent().stateless_answer(req, SOURCE, "UDP") == answer


def test_owned_requests_go_to_their_owner_in_a_transaction() -> None:
    ua = UserAgent()
    seen: list[RequestReceived] = []
    ua.registrar = seen.append
    ua.add_dialog("policy-1", "ours", seen.append)
    assert ua.stateless_answer(request("REGISTER"), SOURCE, "UDP") is None
    assert ua.stateless_answer(request("REFER", to_tag="ours"), SOURCE, "UDP") is None
    assert ua.stateless_answer(request("BYE", to_tag="ours"), SOURCE, "UDP") is None


@pytest.mark.parametrize(
    ("method", "require", "answer"),
    [
        ("REFER", None, UasAnswer(405, None, ALLOW_HEADER)),
        ("SUBSCRIBE", None, UasAnswer(405, None, ALLOW_HEADER)),
        ("MESSAGE", None, UasAnswer(405, None, ALLOW_HEADER)),
        ("PUBLISH", None, UasAnswer(405, None, ALLOW_HEADER)),
        ("NOTIFY", None, UasAnswer(481, "Call/Transaction Does Not Exist")),
        ("PRACK", None, UasAnswer(481, "Call/Transaction Does Not Exist")),
        ("FROBNICATE", None, UasAnswer(501, None, ALLOW_HEADER)),
        ("INVITE", "100rel", UasAnswer(420, None, (("Unsupported", "100rel"),))),
        ("UPDATE", "timer", None),  # session timers (RFC 4028): the leg answers
        ("UPDATE", "precondition", UasAnswer(420, None, (("Unsupported", "precondition"),))),
        ("PRACK", "100rel", UasAnswer(420, None, (("Unsupported", "100rel"),))),
        ("BYE", "foo", None),  # a hang-up is never refused
        ("BYE", None, None),
        ("INVITE", None, None),
        ("UPDATE", None, None),
        ("OPTIONS", None, None),
        ("INFO", None, None),
        ("ACK", None, None),
        ("CANCEL", None, None),
    ],
)
def test_in_dialog_refusals(method: str, require: str | None, answer: UasAnswer | None) -> None:
    assert in_dialog_refusal(request(method, to_tag="ours", require=require)) == answer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_refused_invites_are_logged_a_few_times_a_second_per_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ua = UserAgent()
    clock = ua.clock = Clock()
    caplog.set_level(logging.INFO, logger="sipdialer.sip")
    for _ in range(100):
        ua.stateless_answer(request("INVITE"), SOURCE, "UDP")
    ua.stateless_answer(request("INVITE"), ("203.0.113.1", 5060), "UDP")  # another source
    clock.now += 1.0
    ua.stateless_answer(request("INVITE"), SOURCE, "UDP")
    lines = [r.getMessage() for r in caplog.records if "sip_invite_refused" in r.getMessage()]
    assert len(lines) == 7
    assert sum("source=198.51.100.9" in line for line in lines) == 6
    assert lines[-1].endswith("suppressed=95")
    assert not any("suppressed" in line for line in lines[:-1])


def test_refusal_log_escapes_what_the_network_sent(caplog: pytest.LogCaptureFixture) -> None:
    ua = UserAgent()
    caplog.set_level(logging.INFO, logger="sipdialer.sip")
    ua.stateless_answer(request("INVITE", sender=NASTY_FROM), SOURCE, "UDP")
    (record,) = [r for r in caplog.records if "sip_invite_refused" in r.getMessage()]
    line = _Formatter().format(record)
    assert not any(c in line for c in "\x1b\x00\n\r\u2028")
    keys = [k for k, _ in fields(line)]
    assert keys == ["level", "logger", "event", "source", "port", "from", "to", "user_agent"]
    assert dict(fields(line))["from"].startswith('"\\"\\x1b[31mAdmin\\x00\\"')
