"""A throwaway redis-server on a free loopback port (owns its process and data dir).

No persistence (``--save "" --appendonly no``). ``stop()`` and ``start()`` again reuse
the same port, so a test can take Redis away mid-call and bring it back.
Readiness is a raw ``PING`` over a socket, so there is no redis-py dependency.
"""

from __future__ import annotations

import socket
from pathlib import Path

from . import ports
from .process import PeerProcess, wait_until


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a Redis server at host:port answers ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """redis-server bound to 127.0.0.1:port with its working dir under ``tmpdir``."""

    host = "127.0.0.1"

    def __init__(self, tmpdir: Path | str, port: int | None = None, binary: str = "redis-server"):
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.reserved_ports: list[int] = []
        if port is None:
            port = ports.free_port("tcp")
            self.reserved_ports.append(port)
        self.port = port
        self.log_path = self.dir / "redis.log"
        argv = [
            binary,
            "--port", str(port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        self._proc = PeerProcess("redis-server", argv, self.log_path, cwd=self.dir)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart on the same port) and wait until it answers PING."""
        self._proc.start()
        if not wait_until(lambda: self.ping() or not self._proc.running(), timeout):
            self.stop()
            raise self._proc.fail(f"no PONG on {self.host}:{self.port} within {timeout} s")
        if not self._proc.running():
            raise self._proc.fail(f"exited before answering PING on {self.host}:{self.port}")
        return self

    def ping(self) -> bool:
        return ping(self.host, self.port)

    def running(self) -> bool:
        return self._proc.running()

    def stop(self) -> None:
        """SIGTERM (then SIGKILL); the port stays reserved for a later ``start()``."""
        self._proc.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 30) -> str:
        return self._proc.log_tail(n)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
