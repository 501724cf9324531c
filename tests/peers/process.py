"""Child-process handling shared by the peers: start in a new session, log to a file,
stop by PID (SIGTERM, wait, then SIGKILL to the process group we created).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class PeerStartError(RuntimeError):
    """A peer did not come up; the message includes the tail of its log."""


def tail(path: Path | str, n: int = 30) -> str:
    """Last ``n`` lines of a log file ('' if it does not exist)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


class PeerProcess:
    """One child program started with ``start_new_session=True``, output to ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, cwd: Path | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        if self.running():
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the PID, wait ``timeout``, then SIGKILL its process group (our session).

        The leader is left a zombie (``WNOWAIT``) while the group is killed, so its
        PID, which is also the group id, cannot be reused in between.
        """
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                        break
                except ChildProcessError:
                    break
                time.sleep(0.02)
        # Whatever is left of the session we created (e.g. kamailio's children, or the
        # leader itself if it ignored SIGTERM) gets SIGKILL, by process group id.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def log_tail(self, n: int = 30) -> str:
        return tail(self.log_path, n)

    def fail(self, what: str, n: int = 30) -> PeerStartError:
        """Build a PeerStartError with ``what``, the exit status and the log tail."""
        rc = self.returncode()
        state = f"exited with {rc}" if rc is not None else "still running"
        return PeerStartError(
            f"{self.name}: {what} ({state}; pid {self.pid})\n"
            f"--- last {n} lines of {self.log_path} ---\n{self.log_tail(n)}"
        )


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until it is truthy or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
