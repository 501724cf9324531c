"""Registration with a real Kamailio trunk that challenges with digest, over UDP and TCP,
with and without qop; refresh before expiry; a wrong password ends in back-off."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sipdialer.config import parse_config
from sipdialer.service import Service
from sipdialer.sip.registration import RegState
from tests.fixtures import ports
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import wait_for


def service_for(
    trunk: KamailioTrunk, transport: str, *, expires: int = 60, password: str = "s3cret"
) -> Service:
    port = ports.free_port("both")
    config = parse_config(
        f"""
[trunk]
registrar = {trunk.host}:{trunk.port}
domain = {trunk.domain}
username = dialer
password = {password}
transport = {transport}
expires = {expires}
[sip]
listen = 127.0.0.1:{port}
t1 = 0.1
"""
    )
    return Service(config, serve_http=False)


def state(service: Service) -> RegState:
    assert service.registration is not None
    return service.registration.client.state


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("qop", [True, False], ids=["qop-auth", "no-qop"])
async def test_registers_and_binding_is_visible(
    kamailio_trunk: Callable[..., KamailioTrunk], qop: bool, transport: str
) -> None:
    trunk = kamailio_trunk(qop=qop)
    assert (
        ('qop="auth"' in trunk.cfg_path.read_text())
        or not qop
        or "WITH_QOP" in (trunk.cfg_path.read_text())
    )
    service = service_for(trunk, transport)
    await service.start()
    try:
        await wait_for(lambda: state(service) is RegState.REGISTERED, 5, "registration")
        contacts = await asyncio.to_thread(trunk.lookup, "dialer")
        port = service.transport.port
        assert any(f"127.0.0.1:{port}" in c for c in contacts), contacts
        if transport == "tcp":
            assert any("transport=tcp" in c for c in contacts), contacts
        assert "challenging" in trunk.log_text()  # it really was challenged
        sent = service.registration.client.last_sent if service.registration else None
        assert sent is not None
        authorization = sent.headers.get("Authorization") or ""
        assert authorization.startswith("Digest ")
        assert ("qop=auth" in authorization) == qop
    finally:
        await service.stop()
    # clean shutdown un-REGISTERs: the binding is gone
    assert state(service) is RegState.STOPPED
    assert await asyncio.to_thread(trunk.lookup, "dialer") == []


async def test_refresh_happens_before_expiry(
    kamailio_trunk: Callable[..., KamailioTrunk],
) -> None:
    trunk = kamailio_trunk(qop=True)
    service = service_for(trunk, "udp", expires=6)
    await service.start()
    try:
        await wait_for(lambda: state(service) is RegState.REGISTERED, 5, "registration")
        assert service.registration is not None
        client = service.registration.client
        first_expiry = client.expires_at
        first_cseq = client.cseq
        assert first_expiry is not None
        await wait_for(lambda: client.cseq > first_cseq, 8, "a refresh REGISTER")
        await wait_for(lambda: client.state is RegState.REGISTERED, 3, "refresh answered")
        assert client.expires_at is not None and client.expires_at > first_expiry
        # the refresh came before the first binding expired, and the binding never lapsed
        assert service.transport.now() < first_expiry
        assert await asyncio.to_thread(trunk.lookup, "dialer")
    finally:
        await service.stop()


async def test_wrong_password_fails_with_backoff(
    kamailio_trunk: Callable[..., KamailioTrunk],
) -> None:
    trunk = kamailio_trunk(qop=True)
    service = service_for(trunk, "udp", password="wrong")
    await service.start()
    try:
        await wait_for(lambda: state(service) is RegState.FAILED, 5, "failure")
        assert service.registration is not None
        status = service.registration.client.status()
        assert status.last_failure is not None and "401" in status.last_failure
        assert status.next_attempt_at is not None
        assert status.next_attempt_at - service.transport.now() > 1.0  # backing off
        await asyncio.sleep(3.5)
        # no tight loop: at most one more attempt in 3.5 s (2 s, then 4 s back-off)
        assert service.registration.client.failures <= 2
        assert await asyncio.to_thread(trunk.lookup, "dialer") == []
        assert trunk.log_text().count("challenging dialer") <= 4
    finally:
        await service.stop()
