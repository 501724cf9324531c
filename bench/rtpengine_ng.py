"""rtpengine as a relay under test: bencode, its ng control protocol, and the daemon.

Owns what ``bench/bridge.py --against rtpengine`` needs to drive Debian's
``rtpengine-daemon`` (``apt-get install --no-install-recommends rtpengine-daemon``):

* :func:`bencode` / :func:`bdecode`: the bencoding the ng protocol carries (integers,
  byte strings, lists, dictionaries). Strings decode to ``str`` with ``surrogateescape``,
  so bytes that are not UTF-8 survive a round trip; dictionary keys are accepted in any
  order (rtpengine does not sort them) and written sorted.
* :class:`NgClient`: one ng request over UDP is ``<cookie> <bencoded dict>``; the reply
  carries the same cookie and a dictionary whose ``result`` is ``ok``, ``pong`` or
  ``error`` (with ``error-reason``). Lost datagrams are retransmitted with the same cookie
  (rtpengine answers a repeated cookie from its cache, without doing the work twice).
* :class:`RtpengineDaemon`: a userspace rtpengine (``--table=-1``: no kernel forwarding),
  ``--num-threads=1``, no recording, no config file, pinned to one core, on a free ng port
  and a free RTP port range; :meth:`RtpengineDaemon.open_call` does the offer/answer of
  one call between two phones and returns the two ports the phones send to.

``python bench/rtpengine_ng.py --self-test`` checks the codec (also run by
``tests/unit/test_bench_bencode.py``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = [
    "NgClient",
    "NgError",
    "RtpengineDaemon",
    "bdecode",
    "bencode",
    "media_port",
    "phone_sdp",
]

Value = int | str | bytes | list[Any] | dict[str, Any]

MAX_DEPTH = 64  # nesting the decoder accepts (ng messages are two or three levels deep)


# --------------------------------------------------------------------------------------
# bencode
# --------------------------------------------------------------------------------------


def bencode(value: Value) -> bytes:
    """``value`` bencoded: ``i<n>e``, ``<len>:<bytes>``, ``l…e``, ``d…e`` (keys sorted)."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Value, out: list[bytes]) -> None:
    if isinstance(value, bool):  # a bool is an int to Python, but never meant as one here
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str | bytes):
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        out.append(b"d")
        keys = {}
        for k in value:
            if not isinstance(k, str | bytes):
                raise TypeError(f"bencode dictionary key must be a string, not {k!r}")
            raw = k.encode("utf-8", "surrogateescape") if isinstance(k, str) else k
            if raw in keys:
                raise ValueError(f"duplicate dictionary key {raw!r}")
            keys[raw] = value[k]
        for raw in sorted(keys):
            out.append(b"%d:" % len(raw))
            out.append(raw)
            _encode(keys[raw], out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Value:
    """The one value ``data`` holds; :class:`ValueError` if it is malformed, truncated or
    followed by anything."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise ValueError(f"trailing data at offset {end}")
    return value


def _decode(data: bytes, i: int, depth: int) -> tuple[Value, int]:
    if i >= len(data):
        raise ValueError("truncated")
    head = data[i : i + 1]
    if head == b"i":
        end = data.find(b"e", i + 1)
        if end < 0:
            raise ValueError("unterminated integer")
        return _integer(data[i + 1 : end]), end + 1
    if head in (b"l", b"d"):
        if depth >= MAX_DEPTH:
            raise ValueError("nested too deeply")
        i += 1
        items: list[Value] = []
        while True:
            if i >= len(data):
                raise ValueError("unterminated list or dictionary")
            if data[i : i + 1] == b"e":
                break
            if head == b"d" and len(items) % 2 == 0 and not data[i : i + 1].isdigit():
                raise ValueError(f"dictionary key at offset {i} is not a string")
            item, i = _decode(data, i, depth + 1)
            items.append(item)
        if head == b"l":
            return items, i + 1
        if len(items) % 2:
            raise ValueError("dictionary key without a value")
        result: dict[str, Any] = {}
        for k, v in zip(items[::2], items[1::2], strict=True):
            assert isinstance(k, str)
            if k in result:
                raise ValueError(f"duplicate dictionary key {k!r}")
            result[k] = v
        return result, i + 1
    if head.isdigit():
        colon = data.find(b":", i)
        if colon < 0:
            raise ValueError("string length without ':'")
        length = _integer(data[i:colon])
        if length < 0:
            raise ValueError("negative string length")
        end = colon + 1 + length
        if end > len(data):
            raise ValueError("truncated string")
        return data[colon + 1 : end].decode("utf-8", "surrogateescape"), end
    raise ValueError(f"unexpected {head!r} at offset {i}")


def _integer(digits: bytes) -> int:
    text = digits.decode("ascii", "replace")
    body = text[1:] if text.startswith("-") else text
    if not body.isdigit() or not body.isascii():
        raise ValueError(f"bad integer {text!r}")
    if (body.startswith("0") and len(body) > 1) or text == "-0":
        raise ValueError(f"integer with a leading zero: {text!r}")
    return int(text)


def self_test() -> None:
    """Round trips, the wire form of the protocol's own example, and malformed input."""
    assert bencode({"command": "ping"}) == b"d7:command4:pinge"
    assert bdecode(b"d6:result4:ponge") == {"result": "pong"}
    # rtpengine writes keys unsorted: accepted
    assert bdecode(b"d7:sdp_key1:x6:result2:oke") == {"sdp_key": "x", "result": "ok"}
    sample: Value = {
        "command": "offer",
        "call-id": "c1",
        "replace": ["origin", "session-connection"],
        "n": -42,
        "zero": 0,
        "raw": "caf\udcc3",  # a lone byte 0xc3: not UTF-8, kept by surrogateescape
        "nested": {"a": [1, [2, {"b": ""}]]},
    }
    wire = bencode(sample)
    assert bdecode(wire) == sample, bdecode(wire)
    assert bencode({"b": 1, "a": 2}) == b"d1:ai2e1:bi1ee"
    assert bencode(b"\x00\xff") == b"2:\x00\xff"
    for bad in (
        b"",
        b"i03e",
        b"i-0e",
        b"ie",
        b"i1",
        b"5:abc",
        b"-1:a",
        b"l",
        b"d1:ae",
        b"di1ei2ee",
        b"d1:ai1e1:ai2ee",
        b"i1ei2e",
        b"x",
        b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1),
    ):
        try:
            bdecode(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted malformed {bad!r}")
    for wrong in (True, 1.5, {1: 2}, None):
        try:
            bencode(wrong)  # type: ignore[arg-type]  # wrong types on purpose
        except TypeError:
            continue
        raise AssertionError(f"encoded {wrong!r}")


# --------------------------------------------------------------------------------------
# ng over UDP
# --------------------------------------------------------------------------------------


class NgError(RuntimeError):
    """rtpengine answered ``result: error`` (or not at all)."""


class NgClient:
    """Requests to one rtpengine ng listener, one at a time, over UDP."""

    def __init__(self, host: str, port: int, timeout: float = 1.0, attempts: int = 3) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self.attempts = attempts
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(self.address)
        self.sock.settimeout(timeout)
        self._cookies = itertools.count(1)
        self._prefix = f"{os.getpid()}_{os.urandom(3).hex()}_"

    def close(self) -> None:
        self.sock.close()

    def request(self, command: str, **fields: Value) -> dict[str, Any]:
        """Send ``{"command": command, **fields}`` (``call_id`` → ``call-id``); the reply
        dictionary. :class:`NgError` on ``result: error`` or after ``attempts`` timeouts."""
        message: dict[str, Any] = {"command": command}
        message.update({k.replace("_", "-"): v for k, v in fields.items()})
        cookie = f"{self._prefix}{next(self._cookies)}".encode()
        datagram = cookie + b" " + bencode(message)
        for _ in range(self.attempts):
            self.sock.send(datagram)
            deadline = time.monotonic() + self.timeout
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    break
                except ConnectionRefusedError:  # nobody listens (yet): ICMP port unreachable
                    time.sleep(min(left, 0.05))
                    break
                got, _, body = data.partition(b" ")
                if got != cookie:
                    continue  # a late reply to an earlier, retransmitted request
                reply = bdecode(body)
                if not isinstance(reply, dict):
                    raise NgError(f"{command}: reply is not a dictionary: {reply!r}")
                if reply.get("result") == "error":
                    raise NgError(f"{command}: {reply.get('error-reason', 'error')}")
                return reply
        raise NgError(f"{command}: no reply from {self.address} after {self.attempts} tries")


def phone_sdp(host: str, port: int, session: int) -> str:
    """A phone's SDP: PCMU only, send and receive, at ``host:port``."""
    return (
        f"v=0\r\no=- {session} 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )


def media_port(sdp: str) -> int:
    """The port of the first ``m=audio`` line."""
    for line in sdp.splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise NgError(f"no m=audio line in {sdp!r}")


# --------------------------------------------------------------------------------------
# The daemon
# --------------------------------------------------------------------------------------


class RtpengineDaemon:
    """One ``rtpengine`` process: userspace, one worker thread, pinned to ``core``.

    ``ng_port`` and ``port_min``..``port_max`` (RTP and RTCP) must be free; its log
    (warnings and worse) goes to ``log_path``.
    """

    BINARY = "rtpengine"

    def __init__(
        self,
        core: int,
        ng_port: int,
        port_min: int,
        port_max: int,
        log_path: Path,
        host: str = "127.0.0.1",
    ) -> None:
        self.core = core
        self.host = host
        self.ng_port = ng_port
        self.log_path = log_path
        self.argv = [
            self.binary(),
            "--config-file=none",
            "--foreground",
            "--log-stderr",
            "--log-level=4",
            "--table=-1",
            "--num-threads=1",
            f"--interface={host}",
            f"--listen-ng={host}:{ng_port}",
            f"--port-min={port_min}",
            f"--port-max={port_max}",
            "--delete-delay=0",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.ng: NgClient | None = None
        self._session = itertools.count(1)

    @classmethod
    def binary(cls) -> str:
        found = shutil.which(cls.BINARY) or shutil.which(cls.BINARY, path="/usr/sbin:/sbin")
        if found is None:
            raise FileNotFoundError(
                "rtpengine not found: apt-get install --no-install-recommends rtpengine-daemon"
            )
        return found

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> int:
        """Start it and wait until it answers ``ping``; its pid."""
        core = self.core

        def pinned() -> None:  # runs in the child between fork and exec
            os.sched_setaffinity(0, {core})
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=pinned
            )
        self.ng = NgClient(self.host, self.ng_port, timeout=0.2, attempts=1)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise NgError(f"rtpengine exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                reply = self.ng.request("ping")
            except NgError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise NgError(f"rtpengine did not answer ping: {self.log_tail()}") from None
                continue
            if reply.get("result") != "pong":
                raise NgError(f"ping answered {reply!r}")
            break
        self.ng.timeout, self.ng.attempts = 2.0, 3
        return self.proc.pid

    def open_call(
        self, call_id: str, phone_a: tuple[str, int], phone_b: tuple[str, int]
    ) -> tuple[int, int]:
        """Offer from phone A, answer from phone B; ``(port A sends to, port B sends to)``."""
        assert self.ng is not None
        common: dict[str, Value] = {
            "call_id": call_id,
            "from_tag": "a",
            "replace": ["origin", "session-connection"],
            "ICE": "remove",
        }
        offer = self.ng.request("offer", sdp=phone_sdp(*phone_a, next(self._session)), **common)
        answer = self.ng.request(
            "answer", sdp=phone_sdp(*phone_b, next(self._session)), to_tag="b", **common
        )
        # the offer's rewritten SDP goes to B: its port is where B sends (to reach A)
        return media_port(str(answer["sdp"])), media_port(str(offer["sdp"]))

    def delete_call(self, call_id: str) -> None:
        assert self.ng is not None
        self.ng.request("delete", call_id=call_id, from_tag="a")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.ng is not None:
            self.ng.close()
            self.ng = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--self-test", action="store_true", help="check the bencode codec")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        print("bencode self-test: ok")
    else:
        ap.print_help()


if __name__ == "__main__":
    main()
