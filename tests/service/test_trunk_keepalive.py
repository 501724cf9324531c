"""Keep-alives to the trunk and the outbound proxy, against a scripted trunk on a raw UDP
socket (every byte it gets is checked): OPTIONS every ``[trunk] keepalive`` seconds while
registered, a fresh REGISTER when they stop being answered, and a Route to the outbound
proxy on every request while the Request-URI keeps the configured domain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.service import Service
from sipdialer.sip.message import Request, make_response, parse_message
from sipdialer.sip.registration import RegState
from tests.fixtures import ports
from tests.fixtures.lab import wait_for


class ScriptedTrunk(asyncio.DatagramProtocol):
    """A UDP endpoint that answers REGISTER with 200 and OPTIONS with 200 while
    ``answer_options`` (a protocol, not sock_recvfrom: uvloop does not implement that)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.received: list[Request] = []
        self.answer_options = True

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = parse_message(data)
        assert isinstance(message, Request)
        self.received.append(message)
        if message.method == "OPTIONS" and not self.answer_options:
            return
        extra = []
        if message.method == "REGISTER":
            extra = [("Contact", f"{message.headers.get('Contact')};expires=60")]
        response = make_response(message, 200, to_tag="trunk", extra=extra)
        assert self.transport is not None
        self.transport.sendto(response.to_bytes(), addr)

    def methods(self) -> list[str]:
        return [r.method for r in self.received]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@pytest.fixture
async def trunk() -> AsyncIterator[ScriptedTrunk]:
    t = ScriptedTrunk()
    await t.start()
    yield t
    t.close()


async def start_service(trunk_lines: str, keepalive: int = 1) -> Service:
    sip = ports.free_port("both")
    rtp = ports.free_port_range(10, "udp")
    config = parse_config(
        f"[trunk]\n{trunk_lines}domain = provider.example\nusername = dialer\n"
        f"password = s3cret\nkeepalive = {keepalive}\n"
        f"[sip]\nlisten = 127.0.0.1:{sip}\nrtp_ports = {rtp}-{rtp + 9}\nt1 = 0.05\n"
    )
    service = Service(config, sink=MemorySink(), serve_http=False)
    await service.start()
    return service


async def test_udp_keepalive_options_and_reregistration_when_they_go_unanswered(
    trunk: ScriptedTrunk,
) -> None:
    service = await start_service(f"registrar = 127.0.0.1:{trunk.port}\n")
    try:
        registration = service.registration
        assert registration is not None
        await wait_for(lambda: registration.client.state is RegState.REGISTERED, 5, "register")
        await wait_for(lambda: trunk.methods().count("OPTIONS") >= 2, 5, "two keep-alives")
        options = [r for r in trunk.received if r.method == "OPTIONS"]
        assert options[0].uri == "sip:provider.example"
        registers = trunk.methods().count("REGISTER")
        # the trunk stops answering keep-alives: after the OPTIONS transaction times out
        # (64 x T1 = 3.2 s) the service registers afresh
        trunk.answer_options = False
        await wait_for(lambda: trunk.methods().count("REGISTER") > registers, 10, "re-REGISTER")
        await wait_for(lambda: registration.client.state is RegState.REGISTERED, 5, "again")
    finally:
        await service.stop()


async def test_outbound_proxy_gets_every_request_with_a_route_and_the_domain_stays(
    trunk: ScriptedTrunk,
) -> None:
    # the registrar's name does not resolve anywhere: only the proxy is ever contacted
    service = await start_service(
        f"registrar = sip.provider.invalid\noutbound_proxy = 127.0.0.1:{trunk.port}\n"
    )
    try:
        registration = service.registration
        assert registration is not None
        await wait_for(lambda: registration.client.state is RegState.REGISTERED, 5, "register")
        await wait_for(lambda: "OPTIONS" in trunk.methods(), 5, "keep-alive")
        for request in trunk.received:
            assert request.headers.get("Route") == f"<sip:127.0.0.1:{trunk.port};lr>"
        register = trunk.received[0]
        assert register.method == "REGISTER" and register.uri == "sip:provider.example"
        assert "dialer@provider.example" in (register.headers.get("To") or "")
    finally:
        await service.stop()


async def test_keepalive_zero_sends_none(trunk: ScriptedTrunk) -> None:
    service = await start_service(f"registrar = 127.0.0.1:{trunk.port}\n", keepalive=0)
    try:
        registration = service.registration
        assert registration is not None
        await wait_for(lambda: registration.client.state is RegState.REGISTERED, 5, "register")
        await asyncio.sleep(2.5)
        assert "OPTIONS" not in trunk.methods()
    finally:
        await service.stop()
