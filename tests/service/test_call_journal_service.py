"""The journal of live calls as the running service keeps it: a call through the simulated
trunk to two simulated phones is written at each of its state changes, with what a
restart would need, and its file is gone once its CDR is out; which sink gets a journal."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sipdialer.config import parse_config
from sipdialer.demo.sim_phone import SimPhone
from sipdialer.demo.sim_trunk import SimTrunk
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.dialer import CallRequest
from sipdialer.engine.journal import CallJournal, JournaledCall, journal_dir_for
from sipdialer.notify.notifier import Notifier
from sipdialer.service import Service
from tests.fixtures import ports
from tests.fixtures.lab import ended, wait_state

ACCOUNTS = {"dialer": "trunk-pw", "1000": "agent-pw", "0820001234": "callee-pw"}


@pytest.fixture
async def trunk() -> AsyncIterator[SimTrunk]:
    trunk = SimTrunk(ACCOUNTS)
    await trunk.start()
    yield trunk
    await trunk.stop()


async def phone(
    trunk: SimTrunk, user: str, tone_hz: float, hangup_after: float | None = None
) -> SimPhone:
    p = SimPhone(user, user, tone_hz=tone_hz, ring_seconds=0.2, hangup_after=hangup_after)
    await p.start()
    await p.register(trunk.address, domain=trunk.domain, password=ACCOUNTS[user])
    return p


def service_config(trunk: SimTrunk, tmp_path: Path) -> str:
    rtp = ports.free_port_range(20, "udp")
    return (
        f"[trunk]\nregistrar = {trunk.host}:{trunk.port}\ndomain = {trunk.domain}\n"
        f"username = dialer\npassword = trunk-pw\n"
        f"[sip]\nlisten = 127.0.0.1:{ports.free_port('both')}\nrtp_ports = {rtp}-{rtp + 19}\n"
        f"[redis]\noutbox = {tmp_path / 'outbox'}\n"
        f"[recording]\ndirectory = {tmp_path / 'recordings'}\n"
    )


async def test_a_call_is_journaled_at_each_state_and_forgotten_once_its_cdr_is_out(
    trunk: SimTrunk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await phone(trunk, "1000", tone_hz=440)
    callee = await phone(trunk, "0820001234", tone_hz=1000, hangup_after=1.0)
    sink = MemorySink()
    journal_dir = tmp_path / "journal"
    service = Service(
        parse_config(service_config(trunk, tmp_path)),
        sink=sink,
        serve_http=False,
        journal_dir=journal_dir,
    )
    await service.start()
    try:
        assert service.dialer is not None and service.dialer.journal is not None
        written: list[JournaledCall] = []
        journal = service.dialer.journal
        record = journal.record

        def spy(call: JournaledCall) -> bool:
            done = record(call)
            if done:
                written.append(call)
            return done

        monkeypatch.setattr(journal, "record", spy)
        runner = await service.dialer.originate(
            CallRequest(agent="1000", callee="0820001234", outbound_id="0123456789")
        )
        await wait_state(runner, "bridged")
        # the writer thread has what the loop gave it on disk within a moment
        assert await asyncio.to_thread(journal.flush, 5.0)
        [on_disk] = CallJournal(journal_dir).load()  # what a crash now would leave
        assert on_disk.id == runner.id and on_disk.state == "bridged"
        assert [(leg.name, leg.state) for leg in on_disk.legs] == [
            ("agent", "confirmed"),
            ("callee", "confirmed"),
        ]
        assert all(leg.dialog is not None and leg.needs_bye for leg in on_disk.legs)
        assert on_disk.record.bridged_at is not None
        assert on_disk.recording_path is not None
        assert on_disk.recording_path.endswith(f"{on_disk.record.recording_ref}.wav")
        assert Path(on_disk.recording_path).is_absolute()
        cdr = await ended(runner)
        assert cdr.outcome.end_reason == "callee_hungup"
        assert await asyncio.to_thread(journal.flush, 5.0)
        assert CallJournal(journal_dir).ids() == []  # the CDR is out: nothing to recover
        states = [call.state for call in written]
        changes = [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]
        assert changes == ["agent_ringing", "callee_ringing", "bridged", "ended"], states
        ringing = next(c for c in written if c.state == "agent_ringing")
        [agent_leg] = ringing.legs
        assert agent_leg.invite is not None and agent_leg.needs_cancel  # the INVITE sent
        last = written[-1]
        assert last.outcome is not None and last.outcome.end_reason == "callee_hungup"
    finally:
        await service.stop()
        for p in (agent, callee):
            await p.stop()


def test_the_journal_follows_the_notifier_and_no_memory_sink_gets_one(tmp_path: Path) -> None:
    config = parse_config(f"[redis]\noutbox = {tmp_path / 'outbox'}\n")
    notifier = Notifier(config.redis, config.redis.outbox)
    assert Service(config, sink=notifier).journal_dir == tmp_path / "outbox.journal"
    assert journal_dir_for(config.redis.outbox) == tmp_path / "outbox.journal"
    assert Service(config, sink=MemorySink()).journal_dir is None
    explicit = Service(config, sink=MemorySink(), journal_dir=tmp_path / "j")
    assert explicit.journal_dir == tmp_path / "j"
