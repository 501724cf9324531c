"""In-dialog requests the service does not act on, inside a live call (issue 11, point 8):
SIPp plays the trunk, answers the callee leg and then sends REFER, SUBSCRIBE, NOTIFY,
MESSAGE, PRACK, an unknown method and an INFO that requires 100rel inside the dialog.
Each must get its refusal (405 / 481 / 501 / 420, the table in
:mod:`sipdialer.aio.useragent`) instead of the 200 they all used to get, and the call must
go on: OPTIONS still gets 200 and the callee's BYE ends it normally.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.lab import ended, wait_state
from tests.fixtures.process import wait_until
from tests.fixtures.sipp_trunk import cseq_of, header, sipp_done

EXPECTED = {
    "1 REFER": 405,
    "2 SUBSCRIBE": 405,
    "3 NOTIFY": 481,
    "4 MESSAGE": 405,
    "5 PRACK": 481,
    "6 FROBNICATE": 501,
    "7 INFO": 420,
    "8 OPTIONS": 200,
    "9 BYE": 200,
}


@pytest.mark.peers
async def test_in_dialog_methods_we_do_not_act_on_are_refused(
    sipp_trunk, make_lab, rtp_socket
) -> None:
    agent_media = await rtp_socket()
    trunk = sipp_trunk("in_dialog_methods.xml", agent_rtp=agent_media.port)
    lab = await make_lab(trunk.port)
    runner = await lab.call()
    await wait_state(runner, "bridged")
    await asyncio.to_thread(wait_until, lambda: not trunk.proc.running(), 20)

    answers = {cseq_of(m): m for m in trunk.received() if m.startswith("SIP/2.0 ")}
    got = {cseq: int(answers[cseq].split()[1]) for cseq in EXPECTED if cseq in answers}
    assert got == EXPECTED
    for cseq in ("1 REFER", "2 SUBSCRIBE", "4 MESSAGE", "6 FROBNICATE"):
        allow = {m.strip() for m in header(answers[cseq], "Allow").split(",")}
        assert "INVITE" in allow and "BYE" in allow and cseq.split()[1] not in allow
    assert header(answers["7 INFO"], "Unsupported") == "100rel"
    # the call itself was not disturbed: SIPp ran its whole scenario, BYE ended the call
    await sipp_done(trunk)
    cdr = (await ended(runner)).cdr_payload()
    assert (cdr["disposition"], cdr["end_code"], cdr["end_reason"]) == (
        "ANSWERED",
        16,
        "callee_hungup",
    )
    assert lab.sink.cdrs == [runner.cdr]
