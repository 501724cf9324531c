"""The service sweeps old recordings when it starts (config [recording] retention)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from sipdialer.rtp.recorder import new_recording_ref
from tests.fixtures.api_service import api_service

EXAMPLE = Path(__file__).resolve().parents[2] / "sip.conf.example"


def _age(path: Path, days: float) -> None:
    t = time.time() - days * 86400
    os.utime(path, (t, t))


async def test_service_sweeps_at_start_up(tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    old, new = new_recording_ref(), new_recording_ref()
    for ref, days in ((old, 40), (new, 5)):
        (recordings / f"{ref}.wav").write_bytes(b"RIFF")
        _age(recordings / f"{ref}.wav", days)
    async with api_service(tmp_path) as lab:
        assert lab.service.retention is None  # retention_days = 0: keep forever
    assert (recordings / f"{old}.wav").exists()
    async with api_service(tmp_path, recording_extra="retention_days = 30") as lab:
        deadline = time.monotonic() + 5
        while (recordings / f"{old}.wav").exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (recordings / f"{new}.wav").exists()
        async with lab.client.get("/metrics") as resp:
            assert "sipdialer_recordings_deleted_total 1" in await resp.text()
