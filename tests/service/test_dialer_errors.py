"""Calls that cannot even start still end in exactly one CDR that says why."""

from __future__ import annotations

import asyncio

import pytest

from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import CallRequest
from sipdialer.service import Service
from tests.fixtures import ports


@pytest.mark.parametrize("workers", ["0", "auto"])  # in-process relay, media workers
async def test_no_rtp_ports_left_is_an_error_cdr(workers: str) -> None:
    rtp = ports.free_port_range(4, "udp")
    config = parse_config(
        f"""
[trunk]
registrar = 127.0.0.1:{ports.free_port("both")}
register = no
[sip]
listen = 127.0.0.1:{ports.free_port("both")}
rtp_ports = {rtp}-{rtp + 3}
[media]
workers = {workers}
"""
    )
    sink = MemorySink()
    service = Service(config, sink=sink, serve_http=False)
    await service.start()
    try:
        assert service.dialer is not None
        request = CallRequest(agent="1000", callee="0820001234", outbound_id="0123456789")
        first = await service.dialer.originate(request)  # takes the two even ports
        second = await service.dialer.originate(request)  # none left
        await asyncio.wait_for(second.done.wait(), 5)
        assert second.cdr is not None
        p = second.cdr.cdr_payload()
        assert (p["disposition"], p["end_code"], p["end_reason"]) == ("FAILED", 127, "error")
        assert "no media ports" in (p["end_detail"] or "")
        assert second.agent_forks == [] and second.callee is None
        assert [c.call_id for c in sink.cdrs] == [second.id]
        first.hangup()
        await asyncio.wait_for(first.done.wait(), 5)
        assert [c.call_id for c in sink.cdrs] == [second.id, first.id]
    finally:
        await service.stop()
