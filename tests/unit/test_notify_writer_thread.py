"""The notifier's outbox writer thread (``background=True``, what the service runs): CDRs
reach the outbox off the event loop, in order, and each call's ``on_durable`` runs on the
loop only once its documents are on disk (the engine then forgets the call's journal
entry); a disk failure keeps the documents in memory and never reports them durable.
No Redis here: the pusher retries an unreachable one meanwhile."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from sipdialer.config import RedisConfig
from sipdialer.notify.notifier import Notifier
from tests.fixtures.cdr_samples import make_cdr

UNREACHABLE = RedisConfig(url="redis://127.0.0.1:1/0", legacy_c2d=True)


async def test_cdrs_are_committed_in_order_and_reported_durable_on_the_loop(
    tmp_path: Path,
) -> None:
    notifier = Notifier(UNREACHABLE, tmp_path / "outbox", background=True, backoff_max=0.2)
    await notifier.start()
    loop_thread = threading.get_ident()
    seen: list[tuple[str, int, int]] = []  # (call id, thread, entry files at that moment)

    def durable(call_id: str) -> None:
        seen.append((call_id, threading.get_ident(), notifier.outbox.depth()))

    cdrs = [make_cdr(n) for n in range(1, 6)]
    for cdr in cdrs:
        notifier.submit(cdr, lambda c=cdr.call_id: durable(c))  # type: ignore[misc]
    assert await asyncio.to_thread(notifier.flush, 5.0)
    for _ in range(100):
        if len(seen) == len(cdrs):
            break
        await asyncio.sleep(0.01)
    assert [s[0] for s in seen] == [c.call_id for c in cdrs]
    assert all(s[1] == loop_thread for s in seen)
    # each call's two documents (cdr + c2d) were on disk before it was told
    assert all(depth >= 2 * (i + 1) for i, (_, _, depth) in enumerate(seen))
    entries = notifier.outbox.pending()
    assert [e.call_id for e in entries] == [c.call_id for c in cdrs for _ in range(2)]
    assert [e.key for e in entries[:2]] == [notifier.cdr_key, notifier.c2d_key]
    assert notifier.status()["outbox_depth"] == 10
    await notifier.stop(timeout=0.1)
    # what was committed waits on disk for the next start
    assert Notifier(UNREACHABLE, tmp_path / "outbox").outbox.depth() == 10


async def test_a_disk_failure_keeps_documents_in_memory_and_never_reports_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = Notifier(UNREACHABLE, tmp_path / "outbox", background=True, backoff_max=0.2)
    await notifier.start()

    def full_disk(items: object) -> list[object]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(notifier.outbox, "append_many", full_disk)
    told: list[str] = []
    notifier.submit(make_cdr(1), lambda: told.append("durable"))
    assert await asyncio.to_thread(notifier.flush, 5.0)
    await asyncio.sleep(0.05)
    assert told == []  # the engine keeps the call's journal entry
    status = notifier.status()
    assert status["disk_errors_total"] == 1 and status["outbox_depth"] == 2
    await notifier.stop(timeout=0.1)


async def test_stop_commits_what_the_writer_still_holds(tmp_path: Path) -> None:
    notifier = Notifier(UNREACHABLE, tmp_path / "outbox", background=True, backoff_max=0.2)
    await notifier.start()
    for n in range(1, 21):
        notifier.submit(make_cdr(n))
    await notifier.stop(timeout=0.1)
    assert notifier.outbox.depth() == 40


async def test_a_hung_disk_bounds_the_backlog_by_refusing_calls_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer thread stuck in a write (a hung disk): every call that ends is still
    queued, in order, but past ``max_write_backlog`` the notifier stops accepting new calls
    (one error line); once the disk answers, everything reaches the outbox and calls are
    accepted again."""
    notifier = Notifier(
        UNREACHABLE,
        tmp_path / "outbox",
        background=True,
        backoff_max=0.2,
        max_write_backlog=4,
    )
    await notifier.start()
    disk = threading.Event()
    entered = threading.Event()
    real = notifier.outbox.append_many

    def hung(items: list[tuple[str, object, str | None]]) -> object:
        entered.set()
        disk.wait(10)
        return real(items)

    monkeypatch.setattr(notifier.outbox, "append_many", hung)
    durable: list[str] = []
    cdrs = [make_cdr(n) for n in range(1, 8)]
    notifier.submit(cdrs[0], lambda: durable.append(cdrs[0].call_id))
    assert await asyncio.to_thread(entered.wait, 5.0)  # the thread is stuck in the write
    accepting = []
    for cdr in cdrs[1:]:
        accepting.append(notifier.accepting_calls)
        notifier.submit(cdr, lambda c=cdr.call_id: durable.append(c))  # type: ignore[misc]
    # 1 being written + 6 queued: full from the 4th on
    assert accepting == [True, True, True, False, False, False]
    assert not notifier.accepting_calls
    status = notifier.status()
    assert status["write_backlog"] == 7
    assert status["write_backlog_full"] is True
    full_lines = [r for r in caplog.records if "notify_write_backlog_full" in r.getMessage()]
    assert len(full_lines) == 1 and full_lines[0].levelname == "ERROR"
    assert durable == []  # nothing reported durable while the disk hangs

    disk.set()
    assert await asyncio.to_thread(notifier.flush, 5.0)
    for _ in range(100):
        if len(durable) == len(cdrs):
            break
        await asyncio.sleep(0.01)
    assert durable == [c.call_id for c in cdrs]
    assert notifier.accepting_calls
    assert notifier.status()["write_backlog"] == 0
    assert [e.call_id for e in notifier.outbox.pending()] == [
        c.call_id for c in cdrs for _ in range(2)
    ]
    await notifier.stop(timeout=0.1)


def test_the_backlog_limit_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Notifier(UNREACHABLE, tmp_path / "outbox", max_write_backlog=0)
