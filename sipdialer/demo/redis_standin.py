"""An in-process Redis stand-in: the list commands, over RESP2 on a TCP port.

Owns a small asyncio server that answers what the notifier and a notification client
send, in the Redis protocol (RESP2), so that redis-py, ``redis-cli`` and a demo user's own
client all work against it unchanged. Lists only, in memory, nothing persisted.

Commands (case-insensitive; ``key`` is any byte string):

    PING [msg]  ECHO msg  SELECT db  QUIT  INFO [section]  DBSIZE  FLUSHDB  FLUSHALL
    LPUSH/RPUSH key v [v…]   LPOP/RPOP key [count]   BLPOP/BRPOP key [key…] timeout
    LLEN key   LRANGE key start stop   DEL key [key…]   EXISTS key [key…]   TYPE key
    KEYS pattern   MULTI / EXEC / DISCARD   CLIENT SETNAME|SETINFO|GETNAME|ID
    COMMAND …  (an empty array: redis-cli asks for command docs at start)
    HELLO [2|3] [SETNAME name]   (switches the connection's protocol version)

RESP3 is spoken after ``HELLO 3``, since redis-py 5+ defaults to it (redis-py 8 does not
fall back to RESP2 when HELLO fails); for these commands it differs from RESP2 only in
the null reply (``_``) and HELLO's map. ``HELLO`` with another version, or with AUTH
(the stand-in has no users), is answered ``-NOPROTO`` / ``-ERR`` like Redis.

Anything else is answered ``-ERR unknown command`` as Redis does; inside MULTI that error
also makes EXEC fail (``-EXECABORT``). A blocking pop inside MULTI does not block (as in
Redis). A blocked BLPOP/BRPOP is woken by any push, and the longest-waiting client gets
the element first; a client that disconnects while blocked takes nothing.

Inline commands (``PING\\r\\n`` typed into telnet) are understood too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import time
from collections import deque
from collections.abc import Callable

__all__ = ["RedisStandIn"]

MAX_ARGS = 1 << 20
MAX_BULK = 64 << 20
DATABASES = 16
Reply = bytes


class _ProtocolError(Exception):
    pass


def simple(text: str) -> Reply:
    return b"+" + text.encode() + b"\r\n"


def error(text: str) -> Reply:
    return b"-" + text.encode("utf-8", "replace") + b"\r\n"


def integer(n: int) -> Reply:
    return b":%d\r\n" % n


def bulk(value: bytes | None) -> Reply:
    if value is None:
        return b"$-1\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(items: list[Reply]) -> Reply:
    return b"*%d\r\n" % len(items) + b"".join(items)


OK = simple("OK")
WRONG_ARGS = "ERR wrong number of arguments for '{}' command"
NOT_INTEGER = error("ERR value is not an integer or out of range")


class _Client:
    """One connection: its protocol, database, MULTI queue, whether it has gone."""

    def __init__(self, cid: int) -> None:
        self.id = cid
        self.protocol = 2
        self.db = 0
        self.name: bytes | None = None
        self.multi: list[list[bytes]] | None = None
        self.multi_failed = False
        self.gone = asyncio.Event()

    def null(self, kind: bytes = b"$") -> Reply:
        """The nil reply: RESP2's ``$-1`` (``kind`` ``$``) or ``*-1`` (``*``); RESP3's ``_``."""
        return b"_\r\n" if self.protocol == 3 else kind + b"-1\r\n"

    def bulk(self, value: bytes | None) -> Reply:
        return self.null(b"$") if value is None else bulk(value)


class RedisStandIn:
    """The server; ``url`` is what a client connects to after :meth:`start`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.dbs: list[dict[bytes, deque[bytes]]] = [{} for _ in range(DATABASES)]
        self.commands_total = 0
        self._server: asyncio.AbstractServer | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._connections: set[asyncio.StreamWriter] = set()
        self._next_id = 1
        self._started_at = time.time()
        self._handlers: dict[bytes, Callable[[_Client, list[bytes]], Reply]] = {
            b"PING": self._ping,
            b"ECHO": self._echo,
            b"SELECT": self._select,
            b"INFO": self._info,
            b"DBSIZE": self._dbsize,
            b"FLUSHDB": self._flushdb,
            b"FLUSHALL": self._flushall,
            b"LPUSH": lambda c, a: self._push(c, a, left=True),
            b"RPUSH": lambda c, a: self._push(c, a, left=False),
            b"LPOP": lambda c, a: self._pop(c, a, left=True),
            b"RPOP": lambda c, a: self._pop(c, a, left=False),
            b"LLEN": self._llen,
            b"LRANGE": self._lrange,
            b"DEL": self._del,
            b"EXISTS": self._exists,
            b"TYPE": self._type,
            b"KEYS": self._keys,
            b"CLIENT": self._client,
            b"COMMAND": lambda c, a: array([]),
            b"HELLO": self._hello,
        }

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        self._server = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def items(self, key: str | bytes, db: int = 0) -> list[bytes]:
        """A copy of a list, head first (for tests)."""
        k = key.encode() if isinstance(key, str) else key
        return list(self.dbs[db].get(k, ()))

    # ---- connections ------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(self._next_id)
        self._next_id += 1
        self._connections.add(writer)
        commands: asyncio.Queue[list[bytes] | None] = asyncio.Queue()
        reading = asyncio.create_task(self._read_loop(reader, commands, client))
        try:
            while True:
                args = await commands.get()
                if args is None:
                    break
                if not args:
                    continue
                reply = await self._execute(client, args)
                writer.write(reply)
                await writer.drain()
                if args[0].upper() == b"QUIT":
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            client.gone.set()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
            self._connections.discard(writer)
            writer.close()

    async def _read_loop(
        self,
        reader: asyncio.StreamReader,
        commands: asyncio.Queue[list[bytes] | None],
        client: _Client,
    ) -> None:
        try:
            while True:
                args = await self._read_command(reader)
                if args is None:
                    break
                await commands.put(args)
        except (_ProtocolError, ValueError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            client.gone.set()
            await commands.put(None)

    @staticmethod
    async def _read_command(reader: asyncio.StreamReader) -> list[bytes] | None:
        line = await reader.readline()
        if not line:
            return None
        if not line.startswith(b"*"):
            return line.split()  # an inline command
        count = int(line[1:].strip())
        if not 0 <= count <= MAX_ARGS:
            raise _ProtocolError("bad multibulk length")
        args: list[bytes] = []
        for _ in range(count):
            header = await reader.readline()
            if not header.startswith(b"$"):
                raise _ProtocolError("expected '$'")
            size = int(header[1:].strip())
            if not 0 <= size <= MAX_BULK:
                raise _ProtocolError("bad bulk length")
            data = await reader.readexactly(size + 2)
            args.append(data[:-2])
        return args

    # ---- dispatch ---------------------------------------------------------------------------
    async def _execute(self, client: _Client, args: list[bytes]) -> Reply:
        self.commands_total += 1
        name = args[0].upper()
        if client.multi is not None and name not in (b"EXEC", b"DISCARD", b"MULTI", b"QUIT"):
            if name not in self._handlers and name not in (b"BRPOP", b"BLPOP"):
                client.multi_failed = True
                return self._unknown(args)
            client.multi.append(args)
            return simple("QUEUED")
        if name == b"MULTI":
            if client.multi is not None:
                return error("ERR MULTI calls can not be nested")
            client.multi, client.multi_failed = [], False
            return OK
        if name == b"EXEC":
            return self._exec(client)
        if name == b"DISCARD":
            if client.multi is None:
                return error("ERR DISCARD without MULTI")
            client.multi = None
            return OK
        if name == b"QUIT":
            return OK
        if name in (b"BRPOP", b"BLPOP"):
            return await self._blocking_pop(client, args, left=name == b"BLPOP", block=True)
        handler = self._handlers.get(name)
        if handler is None:
            return self._unknown(args)
        return handler(client, args)

    @staticmethod
    def _unknown(args: list[bytes]) -> Reply:
        name = args[0].decode("utf-8", "replace")
        rest = " ".join(f"'{a.decode('utf-8', 'replace')}'" for a in args[1:4])
        return error(f"ERR unknown command '{name}', with args beginning with: {rest}")

    def _exec(self, client: _Client) -> Reply:
        if client.multi is None:
            return error("ERR EXEC without MULTI")
        queued, failed = client.multi, client.multi_failed
        client.multi, client.multi_failed = None, False
        if failed:
            return error("EXECABORT Transaction discarded because of previous errors.")
        replies: list[Reply] = []
        for args in queued:
            name = args[0].upper()
            if name in (b"BRPOP", b"BLPOP"):
                replies.append(self._nonblocking_pop(client, args, left=name == b"BLPOP"))
            else:
                replies.append(self._handlers[name](client, args))
        return array(replies)

    def _db(self, client: _Client) -> dict[bytes, deque[bytes]]:
        return self.dbs[client.db]

    # ---- commands ---------------------------------------------------------------------------
    def _ping(self, client: _Client, args: list[bytes]) -> Reply:
        if len(args) > 2:
            return error(WRONG_ARGS.format("ping"))
        return bulk(args[1]) if len(args) == 2 else simple("PONG")

    def _echo(self, client: _Client, args: list[bytes]) -> Reply:
        if len(args) != 2:
            return error(WRONG_ARGS.format("echo"))
        return bulk(args[1])

    def _select(self, client: _Client, args: list[bytes]) -> Reply:
        if len(args) != 2:
            return error(WRONG_ARGS.format("select"))
        try:
            db = int(args[1])
        except ValueError:
            return NOT_INTEGER
        if not 0 <= db < DATABASES:
            return error("ERR DB index is out of range")
        client.db = db
        return OK

    def _info(self, client: _Client, args: list[bytes]) -> Reply:
        keys = sum(len(db) for db in self.dbs)
        text = (
            "# Server\r\n"
            "redis_version:7.0.0\r\n"  # the protocol level imitated
            "redis_mode:standalone\r\n"
            "server_name:sipdialer-redis-standin\r\n"
            f"tcp_port:{self.port}\r\n"
            f"uptime_in_seconds:{int(time.time() - self._started_at)}\r\n"
            "# Clients\r\n"
            f"connected_clients:{len(self._connections)}\r\n"
            f"blocked_clients:{len(self._waiters)}\r\n"
            "# Stats\r\n"
            f"total_commands_processed:{self.commands_total}\r\n"
            "# Keyspace\r\n"
            f"db0:keys={len(self.dbs[0])},expires=0,avg_ttl=0\r\n"
            f"total_keys:{keys}\r\n"
        )
        return bulk(text.encode())

    def _dbsize(self, client: _Client, args: list[bytes]) -> Reply:
        return integer(len(self._db(client)))

    def _flushdb(self, client: _Client, args: list[bytes]) -> Reply:
        self._db(client).clear()
        return OK

    def _flushall(self, client: _Client, args: list[bytes]) -> Reply:
        for db in self.dbs:
            db.clear()
        return OK

    def _push(self, client: _Client, args: list[bytes], *, left: bool) -> Reply:
        if len(args) < 3:
            return error(WRONG_ARGS.format("lpush" if left else "rpush"))
        items = self._db(client).setdefault(args[1], deque())
        for value in args[2:]:
            if left:
                items.appendleft(value)
            else:
                items.append(value)
        length = len(items)
        self._wake()
        return integer(length)

    def _take(self, client: _Client, key: bytes, left: bool) -> bytes | None:
        db = self._db(client)
        items = db.get(key)
        if not items:
            return None
        value = items.popleft() if left else items.pop()
        if not items:
            del db[key]
        return value

    def _pop(self, client: _Client, args: list[bytes], *, left: bool) -> Reply:
        if len(args) not in (2, 3):
            return error(WRONG_ARGS.format("lpop" if left else "rpop"))
        if len(args) == 2:
            return client.bulk(self._take(client, args[1], left))
        try:
            count = int(args[2])
        except ValueError:
            return NOT_INTEGER
        if count < 0:
            return error("ERR value is out of range, must be positive")
        if args[1] not in self._db(client):
            return client.null(b"*")
        values: list[Reply] = []
        for _ in range(count):
            value = self._take(client, args[1], left)
            if value is None:
                break
            values.append(bulk(value))
        return array(values)

    def _nonblocking_pop(self, client: _Client, args: list[bytes], *, left: bool) -> Reply:
        if len(args) < 3:
            return error(WRONG_ARGS.format("blpop" if left else "brpop"))
        for key in args[1:-1]:
            value = self._take(client, key, left)
            if value is not None:
                return array([bulk(key), bulk(value)])
        return client.null(b"*")

    async def _blocking_pop(
        self, client: _Client, args: list[bytes], *, left: bool, block: bool
    ) -> Reply:
        if len(args) < 3:
            return error(WRONG_ARGS.format("blpop" if left else "brpop"))
        try:
            timeout = float(args[-1])
        except ValueError:
            return error("ERR timeout is not a float or out of range")
        if timeout < 0:
            return error("ERR timeout is negative")
        loop = asyncio.get_running_loop()
        deadline = None if timeout == 0 else loop.time() + timeout
        while True:
            reply = self._nonblocking_pop(client, args, left=left)
            if reply != client.null(b"*") or not block:
                return reply
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return reply
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            gone = asyncio.ensure_future(client.gone.wait())
            try:
                await asyncio.wait({waiter, gone}, timeout=remaining, return_when="FIRST_COMPLETED")
            finally:
                gone.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if client.gone.is_set():
                return client.null(b"*")  # nobody to give it to: take nothing

    def _wake(self) -> None:
        """A push happened: wake blocked clients, longest-waiting first."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _llen(self, client: _Client, args: list[bytes]) -> Reply:
        if len(args) != 2:
            return error(WRONG_ARGS.format("llen"))
        return integer(len(self._db(client).get(args[1], ())))

    def _lrange(self, client: _Client, args: list[bytes]) -> Reply:
        if len(args) != 4:
            return error(WRONG_ARGS.format("lrange"))
        try:
            start, stop = int(args[2]), int(args[3])
        except ValueError:
            return NOT_INTEGER
        items = list(self._db(client).get(args[1], ()))
        n = len(items)
        start = max(n + start, 0) if start < 0 else start
        stop = n + stop if stop < 0 else min(stop, n - 1)
        if start > stop or start >= n:
            return array([])
        return array([bulk(v) for v in items[start : stop + 1]])

    def _del(self, client: _Client, args: list[bytes]) -> Reply:
        if len(args) < 2:
            return error(WRONG_ARGS.format("del"))
        db = self._db(client)
        return integer(sum(1 for key in args[1:] if db.pop(key, None) is not None))

    def _exists(self, client: _Client, args: list[bytes]) -> Reply:
        if len(args) < 2:
            return error(WRONG_ARGS.format("exists"))
        db = self._db(client)
        return integer(sum(1 for key in args[1:] if key in db))

    def _type(self, client: _Client, args: list[bytes]) -> Reply:
        if len(args) != 2:
            return error(WRONG_ARGS.format("type"))
        return simple("list" if args[1] in self._db(client) else "none")

    def _keys(self, client: _Client, args: list[bytes]) -> Reply:
        if len(args) != 2:
            return error(WRONG_ARGS.format("keys"))
        pattern = args[1].decode("utf-8", "surrogateescape")
        keys = [
            k
            for k in self._db(client)
            if fnmatch.fnmatchcase(k.decode("utf-8", "surrogateescape"), pattern)
        ]
        return array([bulk(k) for k in sorted(keys)])

    def _hello(self, client: _Client, args: list[bytes]) -> Reply:
        rest = [a.upper() for a in args[2:]]
        if len(args) > 1:
            try:
                version = int(args[1])
            except ValueError:
                return error("ERR Protocol version is not an integer or out of range")
            if version not in (2, 3):
                return error("NOPROTO unsupported protocol version")
            if b"AUTH" in rest:
                return error("WRONGPASS the stand-in has no users: connect without AUTH")
            if b"SETNAME" in rest:
                i = rest.index(b"SETNAME") + 2
                if i >= len(args):
                    return error("ERR syntax error in HELLO option 'setname'")
                client.name = args[i]
            client.protocol = version
        fields: list[tuple[bytes, Reply]] = [
            (b"server", bulk(b"redis")),
            (b"version", bulk(b"7.0.0")),
            (b"proto", integer(client.protocol)),
            (b"id", integer(client.id)),
            (b"mode", bulk(b"standalone")),
            (b"role", bulk(b"master")),
            (b"modules", array([])),
        ]
        if client.protocol == 3:
            return b"%%%d\r\n" % len(fields) + b"".join(bulk(k) + v for k, v in fields)
        return array([part for k, v in fields for part in (bulk(k), v)])

    def _client(self, client: _Client, args: list[bytes]) -> Reply:
        sub = args[1].upper() if len(args) > 1 else b""
        if sub == b"SETNAME" and len(args) == 3:
            client.name = args[2]
            return OK
        if sub == b"SETINFO" and len(args) == 4:
            return OK
        if sub == b"GETNAME" and len(args) == 2:
            return client.bulk(client.name)
        if sub == b"ID" and len(args) == 2:
            return integer(client.id)
        return error(f"ERR unknown subcommand '{sub.decode('utf-8', 'replace')}'")

    def __repr__(self) -> str:
        return f"<RedisStandIn {self.host}:{self.port}>"
