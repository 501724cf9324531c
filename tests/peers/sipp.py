"""SIPp as a subprocess (owns nothing but the command line): one-shot runs for load and
scenario tests, and a background process for a UAS sink (e.g. the trunk's 083 numbers).

SIPp resolves host names, so pass IPs (``trunk.test`` is not in DNS). ``-nostdin`` is
added when missing, so SIPp never waits on the terminal.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from .process import PeerProcess


def _argv(args: Sequence[str], binary: str) -> list[str]:
    argv = [binary, *map(str, args)]
    if "-nostdin" not in argv:
        argv.append("-nostdin")
    return argv


def run_sipp(
    args: Sequence[str],
    timeout: float = 60.0,
    cwd: Path | str | None = None,
    binary: str = "sipp",
) -> subprocess.CompletedProcess[str]:
    """Run ``sipp args...`` to completion; stdout/stderr captured as text.

    SIPp exits 0 when all calls succeeded, 1 when at least one failed, and 97/99 on
    internal or start-up errors. Raises ``subprocess.TimeoutExpired`` after ``timeout``.
    """
    return subprocess.run(
        _argv(args, binary),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        start_new_session=True,
    )


def start_sipp(
    args: Sequence[str], log_path: Path, cwd: Path | None = None, binary: str = "sipp"
) -> PeerProcess:
    """Start ``sipp args...`` in the background (e.g. a UAS); ``.stop()`` it at the end."""
    proc = PeerProcess("sipp", _argv(args, binary), log_path, cwd=cwd)
    proc.start()
    return proc
