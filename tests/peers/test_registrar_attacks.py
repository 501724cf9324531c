"""Attacks on the extensions registrar over real sockets (issue 11, point 4): a spoofer
trying to lock a real baresip phone out, and a guesser rotating 25 source addresses.

The service and its registrar run in-process (``start_lab`` of test_registrar_live.py).
A forged UDP source address cannot be sent without raw sockets (root), so the spoofed
REGISTERs are handed to the service's transport exactly as its datagram protocol hands
over what the kernel delivers — ``transport.feed(data, forged_source, "UDP")``; the
challenges they answer were fetched over a real socket at the attacker's own address
(127.0.0.2), and the phone is a real baresip process registering over UDP.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sipdialer.sip.digest import build_authorization, parse_challenge
from sipdialer.sip.message import Request, Response, parse_message
from tests.fixtures import ports
from tests.fixtures.baresip import BaresipPhone
from tests.peers.test_registrar_live import MD5_ONLY, PASSWORD, Lab, lab_factory

__all__ = ["lab_factory"]  # the fixture, used by name below


class Guesser:
    """A blocking REGISTER client at one loopback address (run it in a thread)."""

    def __init__(self, server: tuple[str, int], host: str) -> None:
        self.server = server
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(3.0)
        self.port: int = self.sock.getsockname()[1]
        self.cseq = 0

    def close(self) -> None:
        self.sock.close()

    def request(
        self, user: str, authorization: str | None = None, *, via: tuple[str, int] | None = None
    ) -> Request:
        self.cseq += 1
        host, port = via or (self.host, self.port)
        headers = [
            ("Via", f"SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{user}@127.0.0.1>;tag={secrets.token_hex(4)}"),
            ("To", f"<sip:{user}@127.0.0.1>"),
            ("Call-ID", f"{secrets.token_hex(8)}@{host}"),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"<sip:{user}@{host}:{port}>"),
        ]
        if authorization is not None:
            headers.append(("Authorization", authorization))
        return Request("REGISTER", "sip:127.0.0.1", headers)

    def exchange(self, request: Request) -> Response:
        self.sock.sendto(request.to_bytes(), self.server)
        while True:
            message = parse_message(self.sock.recv(65535))
            if isinstance(message, Response) and message.status >= 200:
                return message

    def answer(self, user: str, password: str, algorithm: str = "MD5") -> str | Response:
        """Fetch a challenge here and return the Authorization answering it (or the answer
        that came instead of a challenge: a blocked address gets 403)."""
        challenge = self.exchange(self.request(user))
        if challenge.status != 401:
            return challenge
        value = next(
            v
            for v in challenge.headers.get_all("WWW-Authenticate")
            if f"algorithm={algorithm}" in v
        )
        return build_authorization(
            parse_challenge(value),
            method="REGISTER",
            uri="sip:127.0.0.1",
            username=user,
            password=password,
        )

    def guess(self, user: str, password: str) -> Response:
        auth = self.answer(user, password)
        if isinstance(auth, Response):
            return auth
        return self.exchange(self.request(user, auth))


async def test_spoofed_and_real_wrong_registers_do_not_lock_the_phone_out(
    lab_factory: Any, baresip_phone: Callable[..., BaresipPhone]
) -> None:
    lab: Lab = await lab_factory(algorithms=MD5_ONLY)
    # the registrar's clock stands still: 1001's back-off never runs out during the test
    frozen = time.time()
    lab.runtime.clock = lambda: frozen
    phone = await asyncio.to_thread(baresip_phone, "agent", "1001", lab.sip_addr, password=PASSWORD)
    [binding] = lab.registrar.lookup("1001", frozen)
    assert binding.source[0] == "127.0.0.1"

    attacker = Guesser(lab.sip_addr, "127.0.0.2")
    forged_port = ports.free_port("udp")  # nobody listens there: the answers go nowhere
    try:
        # 1. blind spoofing: wrong answers to challenges fetched at 127.0.0.2, forged as
        #    coming from the phone's IP (before: ten of them blocked 127.0.0.1 for 300 s)
        for i in range(20):
            auth = await asyncio.to_thread(attacker.answer, "1001", f"spoofed-guess-{i}")
            assert isinstance(auth, str), auth
            forged = attacker.request("1001", auth, via=("127.0.0.1", forged_port))
            lab.service.transport.feed(forged.to_bytes(), ("127.0.0.1", forged_port), "UDP")
        spoofed_counted = lab.registrar.stats["auth_failed"]
        # 2. guessing for real from 127.0.0.2: blocks 127.0.0.2 and makes 1001 back off
        statuses: Counter[int] = Counter()
        for i in range(20):
            reply = await asyncio.to_thread(attacker.guess, "1001", f"guess-{i}")
            statuses[reply.status] += 1
    finally:
        attacker.close()
        ports.release([forged_port])

    # the phone's own address is not locked out, although 1001 backs off: a second baresip
    # registers as 1001 from 127.0.0.1 at once (the fixture waits for its registration)
    await asyncio.to_thread(baresip_phone, "agent2", "1001", lab.sip_addr, password=PASSWORD)
    sources = {b.source for b in lab.registrar.lookup("1001", frozen)}
    assert len(sources) == 2 and all(ip == "127.0.0.1" for ip, _ in sources)
    assert await asyncio.to_thread(phone._reginfo_ok)
    # the spoofed answers counted for nobody; the real guesses did, and were slowed
    assert spoofed_counted == 0 and lab.registrar.stats["foreign_challenge"] == 20
    assert lab.registrar.stats["auth_failed"] == 5
    assert statuses == {401: 5, 503: 15}, statuses


async def test_rotating_guesser_from_25_addresses_is_refused(lab_factory: Any) -> None:
    """Before: six guesses per address stayed under the per-IP limit and guess 150 (the
    right password) registered within 0.2 s. Now five guesses are checked in all; the
    rest, the right one included, get 503 + Retry-After without being checked.

    The registrar's clock is held at one instant, as if the 150 guesses took no time at
    all (the issue's took 0.2 s): the outcome must not depend on how fast this machine
    sends them (a slow run would see the 1 s back-off run out and one more guess checked).
    """
    lab: Lab = await lab_factory()
    frozen = time.time()
    lab.runtime.clock = lambda: frozen
    guessers = [Guesser(lab.sip_addr, f"127.0.0.{10 + i}") for i in range(25)]
    statuses: list[int] = []
    retry_after: set[str] = set()
    try:
        for i in range(150):
            password = PASSWORD if i == 149 else f"guess-{i}"
            reply = await asyncio.to_thread(guessers[i % 25].guess, "1001", password)
            statuses.append(reply.status)
            if reply.status == 503:
                retry_after.add(reply.headers.get("Retry-After") or "")
    finally:
        for guesser in guessers:
            guesser.close()
    assert statuses[-1] == 503, "the right password got through"
    assert lab.registrar.bindings(frozen) == []
    assert statuses[:5] == [401] * 5 and statuses[5:] == [503] * 145
    assert lab.registrar.stats["auth_failed"] == 5 and lab.registrar.stats["throttled"] == 0
    assert retry_after == {"1"}
