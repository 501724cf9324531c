"""The simulated trunk (``sipdialer.demo.sim_trunk``) on its own: its registrar's
digest challenge, 407 on INVITEs without credentials, routing by Request-URI user to the
registered phone with Record-Route, statelessly forwarded CANCEL and in-dialog BYE, 404
for nobody, and the same answer to a retransmitted request."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from sipdialer.demo.sim_phone import SimPhone
from sipdialer.demo.sim_trunk import SimTrunk
from sipdialer.sip.message import Response, parse_message
from tests.service.test_sim_phone import HOST, Uac

DOMAIN = "sim-trunk.invalid"
ACCOUNTS = {"dialer": "dialer-pw", "1000": "agent-pw", "0820001234": "callee-pw"}


@pytest.fixture
async def trunk() -> AsyncIterator[SimTrunk]:
    t = SimTrunk(ACCOUNTS, domain=DOMAIN)
    await t.start()
    yield t
    await t.stop()


@pytest.fixture
async def uac() -> AsyncIterator[Uac]:
    u = Uac()
    await u.start()
    yield u
    await u.stop()


async def registered_phone(trunk: SimTrunk, user: str = "1000", **kw: object) -> SimPhone:
    phone = SimPhone("agent", user, tone_hz=440, **kw)  # type: ignore[arg-type]
    await phone.start()
    await phone.register(trunk.address, domain=DOMAIN, password=ACCOUNTS[user])
    return phone


async def test_register_is_challenged_and_needs_the_right_password(trunk: SimTrunk) -> None:
    phone = await registered_phone(trunk)
    intruder = SimPhone("intruder", "0820001234", tone_hz=1000)
    await intruder.start()
    try:
        texts = [e.text for e in trunk.events]
        assert texts == [
            "REGISTER 1000 -> 401 Unauthorized (digest challenge)",
            "REGISTER 1000 (digest ok) -> 200 OK",
        ]
        [binding] = trunk.registrar.lookup("1000", time.time())
        assert binding.contact_uri == phone.contact_uri
        with pytest.raises(RuntimeError, match="could not register"):
            await intruder.register(trunk.address, domain=DOMAIN, password="wrong", timeout=2)
        assert trunk.registrar.lookup("0820001234", time.time()) == []
    finally:
        await intruder.stop()
        await phone.stop()


async def test_invite_is_challenged_then_routed_to_the_registered_phone(
    trunk: SimTrunk, uac: Uac
) -> None:
    phone = await registered_phone(trunk, ring_seconds=0.1, hangup_after=0.3)
    try:
        leg, heard = uac.leg(
            f"sip:1000@{DOMAIN}", trunk.address, credentials=("dialer", ACCOUNTS["dialer"])
        )
        leg.invite()
        await asyncio.wait_for(heard.answered.wait(), 5)
        assert trunk.stats["answered_407"] == 1
        call = phone.calls[0]
        invite = call.invite
        assert invite.uri == phone.contact_uri  # the location service rewrote it
        assert invite.headers.get("Record-Route") == f"<sip:{HOST}:{trunk.port};lr>"
        assert "Proxy-Authorization" not in invite.headers  # consumed by the trunk
        vias = invite.vias()
        assert (vias[0].host, vias[0].port) == (HOST, trunk.port) and len(vias) == 2
        assert invite.headers.get("Max-Forwards") == "69"
        # the phone's BYE goes through the trunk (route set) back to us
        await asyncio.wait_for(heard.bye.wait(), 5)
        texts = [e.text for e in trunk.events]
        assert f"INVITE sip:1000@{DOMAIN} -> 407 Proxy Authentication Required" in texts
        assert any(t.startswith(f"INVITE sip:1000@{DOMAIN} (digest ok: dialer) -> ") for t in texts)
        assert f"BYE in dialog -> {HOST}:{uac.transport.port}" in texts
    finally:
        await phone.stop()


async def test_no_credentials_407_unknown_number_404(trunk: SimTrunk, uac: Uac) -> None:
    phone = await registered_phone(trunk)
    try:
        leg, heard = uac.leg(f"sip:1000@{DOMAIN}", trunk.address)
        leg.invite()
        await asyncio.wait_for(heard.terminated.wait(), 5)
        assert heard.failed == [407] and phone.calls == []
        leg, heard = uac.leg(
            f"sip:0999999999@{DOMAIN}",
            trunk.address,
            credentials=("dialer", ACCOUNTS["dialer"]),
            number="0999999999",
        )
        leg.invite()
        await asyncio.wait_for(heard.terminated.wait(), 5)
        assert heard.failed == [404]
    finally:
        await phone.stop()


async def test_cancel_is_forwarded_with_the_invites_branch(trunk: SimTrunk, uac: Uac) -> None:
    phone = await registered_phone(trunk, answer="no-answer")
    try:
        leg, heard = uac.leg(
            f"sip:1000@{DOMAIN}", trunk.address, credentials=("dialer", ACCOUNTS["dialer"])
        )
        leg.invite()
        call = await phone.wait_for_call(5)
        await asyncio.sleep(0.2)
        assert heard.progress == [180]
        leg.hangup()
        await asyncio.wait_for(heard.terminated.wait(), 5)
        assert leg.final_status == 487 and call.state == "cancelled"
        assert any(e.text.startswith(f"CANCEL sip:1000@{DOMAIN} -> ") for e in trunk.events)
    finally:
        await phone.stop()


async def test_a_retransmitted_register_gets_the_same_answer(trunk: SimTrunk) -> None:
    register = (
        b"REGISTER sip:sim-trunk.invalid SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-retransmit-1;rport\r\n"
        b"From: <sip:1000@sim-trunk.invalid>;tag=a1\r\n"
        b"To: <sip:1000@sim-trunk.invalid>\r\n"
        b"Call-ID: retransmit-test\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"Contact: <sip:1000@127.0.0.1:9>\r\n"
        b"Max-Forwards: 70\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    try:
        answers = []
        for _ in range(2):
            sock.sendto(register, trunk.address)
            data = await asyncio.wait_for(loop.sock_recv(sock, 65535), 2)
            answers.append(data)
        assert answers[0] == answers[1]
        response = parse_message(answers[0])
        assert isinstance(response, Response) and response.status == 401
        assert trunk.stats["answers_repeated"] == 1
        assert f"rport={sock.getsockname()[1]}" in (response.headers.get("Via") or "")
    finally:
        sock.close()
