"""Self-tests of the peer fixtures (tests/peers) against the real programs.

Redis PING/stop/restart, the Kamailio trunk (OPTIONS keepalive, digest challenges with
and without qop, trusted phone ports, short registrations) and baresip phones
(registration, a call between two phones through the trunk).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import time

import pytest

from tests.conftest import MakePhone, MakeTrunk
from tests.fixtures import ports
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.redis import RedisServer, ping

# ------------------------------------------------------------------ raw SIP helpers


class RawSip:
    """A UDP socket on 127.0.0.1 that sends SIP requests to the trunk and reads replies."""

    def __init__(self, trunk: KamailioTrunk, port: int | None = None) -> None:
        self.trunk = trunk
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port if port is not None else 0))
        self.sock.settimeout(3.0)
        self.port = self.sock.getsockname()[1]
        self.call_id = secrets.token_hex(8)
        self.cseq = 0

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        method: str,
        ruri: str,
        user: str = "dialer",
        to_user: str | None = None,
        headers: tuple[str, ...] = (),
    ) -> tuple[int, str]:
        """Send one request, return (status code, full final response text)."""
        self.cseq += 1
        to_user = to_user or user
        msg = (
            f"{method} {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{user}@trunk.test>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:{to_user}@trunk.test>\r\n"
            f"Call-ID: {self.call_id}\r\n"
            f"CSeq: {self.cseq} {method}\r\n"
            f"Contact: <sip:{user}@127.0.0.1:{self.port}>\r\n"
            + "".join(h + "\r\n" for h in headers)
            + "Content-Length: 0\r\n\r\n"
        )
        self.sock.sendto(msg.encode(), self.trunk.addr)
        while True:
            data = self.sock.recv(65535).decode(errors="replace")
            code = int(data.split(" ", 2)[1])
            if code >= 200:
                return code, data


def header(msg: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.*?)\r?$", msg, flags=re.MULTILINE | re.IGNORECASE)
    assert m, f"no {name} header in:\n{msg}"
    return m.group(1)


def digest_authorization(challenge: str, method: str, uri: str, user: str, pw: str) -> str:
    """Authorization value answering a Digest challenge (MD5, qop=auth when offered)."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    realm, nonce = params["realm"], params["nonce"]
    ha1 = hashlib.md5(f"{user}:{realm}:{pw}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    value = f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}"'
    if "qop" in params:
        nc, cnonce = "00000001", secrets.token_hex(8)
        resp = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        value += f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return value + f', response="{resp}", algorithm=MD5'


# --------------------------------------------------------------------------- ports


def test_free_port_is_free_for_udp_and_tcp_and_outside_the_phone_range() -> None:
    port = ports.free_port("both")
    try:
        assert port >= 10000
        assert port not in range(5100, 5200)
        assert ports.port_is_free(port, "both")
        assert ports.free_port("both") != port  # reserved: not handed out twice
    finally:
        ports.release([port])


def test_free_port_range_is_consecutive_and_free() -> None:
    base = ports.free_port_range(10, "udp")
    try:
        assert base % 2 == 0
        assert all(ports.port_is_free(p, "udp") for p in range(base, base + 10))
        assert all(ports.is_reserved(p) for p in range(base, base + 10))
    finally:
        ports.release(range(base, base + 10))


# --------------------------------------------------------------------------- redis


def test_redis_answers_ping_and_restarts_on_the_same_port(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.ping()
    port, pid = redis_server.port, redis_server.pid

    redis_server.stop()
    assert not redis_server.running()
    assert not ping("127.0.0.1", port)

    redis_server.start()
    assert redis_server.port == port
    assert redis_server.pid != pid
    assert redis_server.ping()


# ------------------------------------------------------------------------ kamailio


@pytest.mark.parametrize("qop", [True, False], ids=["qop", "no-qop"])
def test_trunk_keepalive_and_register_challenge(kamailio_trunk: MakeTrunk, qop: bool) -> None:
    trunk = kamailio_trunk(qop=qop)
    assert "uptime:" in trunk.kamcmd("core.uptime")
    sip = RawSip(trunk)  # kernel-chosen port: not a trusted phone port
    try:
        assert sip.port not in trunk.phone_ports

        code, resp = sip.request("OPTIONS", f"sip:trunk.test:{trunk.port}")
        assert code == 200, resp

        code, resp = sip.request("REGISTER", "sip:trunk.test", headers=("Expires: 60",))
        assert code == 401, resp
        challenge = header(resp, "WWW-Authenticate")
        assert 'realm="trunk.test"' in challenge
        assert ('qop="auth"' in challenge) is qop

        auth = digest_authorization(challenge, "REGISTER", "sip:trunk.test", "dialer", "s3cret")
        code, resp = sip.request(
            "REGISTER", "sip:trunk.test", headers=(f"Authorization: {auth}", "Expires: 60")
        )
        assert code == 200, resp
        assert trunk.lookup("dialer") == [f"sip:dialer@127.0.0.1:{sip.port}"]
        assert trunk.lookup("nobody") == []

        code, resp = sip.request("INVITE", "sip:1000@trunk.test", to_user="1000")
        assert code == 407, resp
        assert ('qop="auth"' in header(resp, "Proxy-Authenticate")) is qop
    finally:
        sip.close()


def test_trunk_trusts_phone_ports_and_allows_short_expiry(kamailio_trunk: MakeTrunk) -> None:
    trunk = kamailio_trunk()
    sip = RawSip(trunk, port=trunk.allocate_phone_port())
    try:
        code, resp = sip.request("REGISTER", "sip:trunk.test", user="1000", headers=("Expires: 5",))
        assert code == 200, resp  # no challenge for a lab phone
        assert "expires=5" in header(resp, "Contact")
        assert trunk.lookup("1000") == [f"sip:1000@127.0.0.1:{sip.port}"]
        assert "AoR: 1000" in trunk.dump()

        code, resp = sip.request("INVITE", "sip:0820000486@trunk.test", user="1000")
        assert code == 486, resp
    finally:
        sip.close()


# ------------------------------------------------------------------------- baresip


def test_phone_registers_at_the_trunk(kamailio_trunk: MakeTrunk, baresip_phone: MakePhone) -> None:
    trunk = kamailio_trunk()
    phone = baresip_phone("agent", "1000", trunk, tone_hz=440)
    assert phone.sip_port in trunk.phone_ports
    contacts = trunk.lookup("1000")
    assert len(contacts) == 1
    assert contacts[0].endswith(f"@127.0.0.1:{phone.sip_port}")


def test_two_phones_call_each_other_through_the_trunk(
    kamailio_trunk: MakeTrunk, baresip_phone: MakePhone
) -> None:
    trunk = kamailio_trunk()
    agent = baresip_phone("agent", "1000", trunk, tone_hz=440, tone_seconds=10)
    callee = baresip_phone("callee", "0820001234", trunk, tone_hz=1000, answer="auto")

    assert agent.dial("0820001234")["ok"]
    out = agent.wait_event("CALL_ESTABLISHED", timeout=5)
    inc = callee.wait_event("CALL_ESTABLISHED", timeout=5)
    assert (out["direction"], out["peeruri"]) == ("outgoing", "sip:0820001234@trunk.test")
    assert (inc["direction"], inc["peeruri"]) == ("incoming", "sip:1000@trunk.test")
    assert "ESTABLISHED" in agent.ctrl("listcalls")["data"]
    assert "ESTABLISHED" in callee.ctrl("listcalls")["data"]
    time.sleep(0.3)  # some audio both ways

    assert agent.ctrl("hangup")["ok"]
    callee.wait_event("CALL_CLOSED", timeout=5)
    agent.wait_event("CALL_CLOSED", timeout=5)
    assert "Active calls (0)" in callee.ctrl("listcalls")["data"]
    # sndfile: -enc.wav = sent, -dec.wav = received
    assert {p.name[-7:] for p in agent.recordings()} == {"dec.wav", "enc.wav"}


def test_manual_phone_rings_until_accepted(
    kamailio_trunk: MakeTrunk, baresip_phone: MakePhone
) -> None:
    trunk = kamailio_trunk(qop=False)
    agent = baresip_phone("agent", "1000", trunk, tone_seconds=10)
    callee = baresip_phone("callee", "0820001234", trunk, tone_hz=1000, answer="manual")

    agent.dial("sip:0820001234@trunk.test")
    assert callee.wait_event("CALL_INCOMING", timeout=5)["peeruri"] == "sip:1000@trunk.test"
    agent.wait_event("CALL_RINGING", timeout=5)
    assert callee.ctrl("accept")["ok"]
    agent.wait_event("CALL_ESTABLISHED", timeout=5)
    callee.wait_event("CALL_ESTABLISHED", timeout=5)

    assert callee.ctrl("hangup")["ok"]  # remote BYE towards the agent
    assert agent.wait_event("CALL_CLOSED", timeout=5)["direction"] == "outgoing"
