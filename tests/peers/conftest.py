"""Fixtures of the SIPp call tests (:mod:`tests.fixtures.sipp_trunk`): ``sipp_trunk``,
``make_lab`` and ``rtp_socket``, each a factory that cleans up after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.fixtures import ports
from tests.fixtures.require import require_binary
from tests.fixtures.sipp_trunk import (
    Lab,
    RtpSocket,
    SippTrunk,
    open_rtp_socket,
    start_lab,
    start_sipp_trunk,
)

if TYPE_CHECKING:
    from tests.conftest import PeerStack


@pytest.fixture
def sipp_trunk(tmp_path: Path, peer_stack: PeerStack) -> Callable[..., SippTrunk]:
    """Factory ``sipp_trunk(scenario, host="127.0.0.1", **keys)``: a started SIPp UAS
    playing the trunk (:func:`~tests.fixtures.sipp_trunk.start_sipp_trunk`)."""
    require_binary("sipp")

    def start(scenario: str, host: str = "127.0.0.1", **keys: object) -> SippTrunk:
        return start_sipp_trunk(tmp_path, peer_stack, scenario, host, **keys)

    return start


@pytest.fixture
async def make_lab(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory ``await make_lab(trunk_port, host=, t1=0.5, callee_ring_timeout=10,
    rtp_timeout=None)`` → a started service (:class:`~tests.fixtures.sipp_trunk.Lab`),
    stopped at teardown."""
    started: list[Lab] = []
    reserved: list[int] = []

    async def make(trunk_port: int, **options: Any) -> Lab:
        lab = await start_lab(tmp_path, trunk_port, reserved, **options)
        started.append(lab)
        return lab

    yield make
    for lab in started:
        await lab.service.stop()
    ports.release(reserved)


@pytest.fixture
async def rtp_socket() -> AsyncIterator[Callable[..., Any]]:
    """Factory ``await rtp_socket(host="127.0.0.1")`` → a bound
    :class:`~tests.fixtures.sipp_trunk.RtpSocket` (closed at teardown)."""
    made: list[RtpSocket] = []

    async def make(host: str = "127.0.0.1") -> RtpSocket:
        sock = await open_rtp_socket(host)
        made.append(sock)
        return sock

    yield make
    for sock in made:
        if sock.transport is not None:
            sock.transport.close()
    ports.release([sock.port for sock in made])
