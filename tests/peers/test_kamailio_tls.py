"""Self-tests of the Kamailio trunk's TLS listener (``KamailioTrunk(..., tls=True)``).

Only Python's ``ssl``, raw sockets and the project's pure SIP code are used, so these
tests prove the test peer, not the service's TLS client: TLS 1.2 and 1.3 are spoken and
1.1 is refused; the certificate verifies with the fixture's CA for ``trunk.test`` and
fails with another CA, the system CAs or another name; OPTIONS and REGISTER (digest) are
answered over the TLS connection; requests the trunk sends to a TLS client (a callee's
BYE, an INVITE to a TLS registration) come back over that same connection although the
client's Contact names a port nobody listens on; plain TCP to the TLS port gets no SIP;
and without ``tls`` the effective config has no TLS in it.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipdialer.sip.address import parse_address
from sipdialer.sip.digest import ClientAuthenticator
from sipdialer.sip.message import (
    Request,
    Response,
    StreamFramer,
    make_response,
    parse_message,
)
from tests.conftest import MakeTrunk
from tests.fixtures import ports
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.require import require_binary

TIMEOUT = 5.0


def branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def tls_context(cafile: Path) -> ssl.SSLContext:
    """What a careful client does: the given CA only, host name checked, strict X.509."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


class TlsSip:
    """One TLS connection to the trunk that sends SIP and reads whole messages back."""

    def __init__(
        self, trunk: KamailioTrunk, context: ssl.SSLContext | None = None, name: str = "trunk.test"
    ) -> None:
        self.trunk = trunk
        raw = socket.create_connection(trunk.tls_addr, timeout=TIMEOUT)
        try:
            self.sock = (context or tls_context(trunk.ca_file)).wrap_socket(
                raw, server_hostname=name
            )
        except BaseException:
            raw.close()
            raise
        self.port: int = self.sock.getsockname()[1]
        self.framer = StreamFramer()
        self.pending: list[bytes] = []
        self.call_id = secrets.token_hex(8)
        self.tag = secrets.token_hex(4)

    def close(self) -> None:
        self.sock.close()

    def send(self, msg: Request | Response) -> None:
        self.sock.sendall(msg.to_bytes())

    def receive(self, timeout: float = TIMEOUT) -> Request | Response:
        """The next whole message on this connection (AssertionError on timeout/EOF)."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            assert left > 0, "nothing received over TLS"
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            assert data, "the trunk closed the TLS connection"
            self.pending.extend(self.framer.feed(data))
        return parse_message(self.pending.pop(0), stream=True)

    def final_response(self, timeout: float = TIMEOUT) -> Response:
        """Skip provisional responses; return the first final one."""
        while True:
            msg = self.receive(timeout)
            assert isinstance(msg, Response), f"expected a response, got {msg!r}"
            if msg.status >= 200:
                return msg

    def request(
        self,
        method: str,
        uri: str,
        *,
        cseq: int,
        to: str = "<sip:dialer@trunk.test>",
        contact: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        via_branch: str | None = None,
    ) -> Request:
        headers = [
            ("Via", f"SIP/2.0/TLS 127.0.0.1:{self.port};branch={via_branch or branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:dialer@trunk.test>;tag={self.tag}"),
            ("To", to),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if contact is not None:
            headers.append(("Contact", contact))
        return Request(method, uri, headers + (extra or []))


class UdpPhone:
    """A lab phone on a trusted UDP port of the trunk (registers without digest)."""

    def __init__(self, trunk: KamailioTrunk, user: str) -> None:
        self.trunk = trunk
        self.user = user
        self.port = trunk.allocate_phone_port()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        self.contact = f"<sip:{user}@127.0.0.1:{self.port}>"

    def close(self) -> None:
        self.sock.close()
        self.trunk.release_phone_port(self.port)

    def send(self, msg: Request | Response) -> None:
        self.sock.sendto(msg.to_bytes(), self.trunk.addr)

    def receive(self, timeout: float = TIMEOUT) -> Request | Response:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65535)
        return parse_message(data)

    def receive_request(self, method: str) -> Request:
        """The next ``method`` request (provisional responses and retransmissions skipped)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = self.receive(max(deadline - time.monotonic(), 0.01))
            if isinstance(msg, Request) and msg.method == method:
                return msg

    def final_response(self) -> Response:
        while True:
            msg = self.receive()
            if isinstance(msg, Response) and msg.status >= 200:
                return msg

    def headers(self, method: str, cseq: int, call_id: str) -> list[tuple[str, str]]:
        return [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch()};rport"),
            ("Max-Forwards", "70"),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
        ]

    def register(self) -> None:
        tag = secrets.token_hex(4)
        headers = self.headers("REGISTER", 1, secrets.token_hex(8))
        headers += [
            ("From", f"<sip:{self.user}@trunk.test>;tag={tag}"),
            ("To", f"<sip:{self.user}@trunk.test>"),
            ("Contact", self.contact),
            ("Expires", "60"),
        ]
        self.send(Request("REGISTER", "sip:trunk.test", headers))
        reply = self.final_response()
        assert reply.status == 200, reply.to_bytes().decode(errors="replace")


@pytest.fixture
def tls_trunk(kamailio_trunk: MakeTrunk) -> KamailioTrunk:
    return kamailio_trunk(tls=True)


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A TCP port nobody listens on, for a Contact the trunk must not connect to."""
    port = ports.free_port("tcp")
    yield port
    ports.release([port])


def register_over_tls(client: TlsSip, contact: str) -> Response:
    """REGISTER as dialer: 401 with a digest challenge, answered, 200. Returns the 401."""
    first = client.request("REGISTER", "sip:trunk.test", cseq=1, contact=contact)
    first.headers.add("Expires", "60")
    client.send(first)
    challenge = client.final_response()
    assert challenge.status == 401, challenge.to_bytes().decode(errors="replace")

    auth = ClientAuthenticator(KamailioTrunk.dialer_user, KamailioTrunk.dialer_password)
    auth.on_challenge(challenge.headers.get_all("WWW-Authenticate"))
    second = client.request(
        "REGISTER",
        "sip:trunk.test",
        cseq=2,
        contact=contact,
        extra=[("Expires", "60"), *auth.authorize(method="REGISTER", uri="sip:trunk.test")],
    )
    client.send(second)
    ok = client.final_response()
    assert ok.status == 200, ok.to_bytes().decode(errors="replace")
    return challenge


# ------------------------------------------------------------------------ handshake


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_handshake_verifies_with_the_fixture_ca(
    tls_trunk: KamailioTrunk, version: ssl.TLSVersion
) -> None:
    assert tls_trunk.tls_port != tls_trunk.port
    assert tls_trunk.tls_addr == ("127.0.0.1", tls_trunk.tls_port)
    for name in ("trunk.test", "localhost", "127.0.0.1"):
        context = tls_context(tls_trunk.ca_file)
        context.minimum_version = context.maximum_version = version
        client = TlsSip(tls_trunk, context, name)
        try:
            assert client.sock.version() == version.name.replace("_", ".")
            cert = client.sock.getpeercert()
            assert cert is not None
            assert (("commonName", "trunk.test"),) in cert["subject"]
            assert set(cert["subjectAltName"]) == {
                ("DNS", "trunk.test"),
                ("DNS", "localhost"),
                ("IP Address", "127.0.0.1"),
            }
        finally:
            client.close()


def test_tls_1_1_is_refused_by_the_trunk(tls_trunk: KamailioTrunk) -> None:
    context = tls_context(tls_trunk.ca_file)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1 is
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError) as err:
        TlsSip(tls_trunk, context)
    # the trunk's alert, not a client that could not even offer the version
    assert err.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", err.value


def test_handshake_with_an_unrelated_ca_fails(tls_trunk: KamailioTrunk) -> None:
    other = tls_trunk.unrelated_ca_file()
    assert other.read_bytes() != tls_trunk.ca_file.read_bytes()
    with pytest.raises(ssl.SSLCertVerificationError) as err:
        TlsSip(tls_trunk, tls_context(other))
    assert "unable to get local issuer certificate" in str(err.value)


def test_handshake_with_the_system_cas_fails(tls_trunk: KamailioTrunk) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        TlsSip(tls_trunk, ssl.create_default_context())


def test_handshake_for_another_host_name_fails(tls_trunk: KamailioTrunk) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as err:
        TlsSip(tls_trunk, name="other.test")
    assert "Hostname mismatch" in str(err.value)


def test_plain_tcp_to_the_tls_port_gets_no_sip_answer(tls_trunk: KamailioTrunk) -> None:
    options = (
        f"OPTIONS sip:trunk.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP 127.0.0.1:5060;branch={branch()};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:dialer@trunk.test>;tag=1\r\nTo: <sip:trunk.test>\r\n"
        "Call-ID: plain-tcp\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    received = b""
    with socket.create_connection(tls_trunk.tls_addr, timeout=TIMEOUT) as sock:
        sock.sendall(options)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = sock.recv(65535)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    assert b"SIP/2.0" not in received, received
    # the same OPTIONS on the plain TCP port is answered: the silence above is TLS's
    with socket.create_connection(tls_trunk.addr, timeout=TIMEOUT) as sock:
        sock.sendall(options)
        assert sock.recv(65535).startswith(b"SIP/2.0 200 ")


# ------------------------------------------------------------------ SIP over TLS


def test_options_over_tls_is_answered_on_the_same_connection(tls_trunk: KamailioTrunk) -> None:
    client = TlsSip(tls_trunk)
    try:
        client.send(client.request("OPTIONS", "sip:trunk.test", cseq=1, to="<sip:trunk.test>"))
        reply = client.final_response()
        assert reply.status == 200
        assert reply.call_id == client.call_id
        via = reply.top_via()
        assert via.transport == "TLS"
        assert via.rport == client.port  # the trunk saw our connection's port
    finally:
        client.close()


def test_register_over_tls_is_challenged_then_bound_to_the_tls_socket(
    tls_trunk: KamailioTrunk, dead_port: int
) -> None:
    client = TlsSip(tls_trunk)
    contact = f"<sip:dialer@127.0.0.1:{dead_port};transport=tls>"
    try:
        challenge = register_over_tls(client, contact)
        www = challenge.headers.get("WWW-Authenticate") or ""
        assert www.startswith("Digest ") and 'realm="trunk.test"' in www
        assert 'qop="auth"' in www

        assert tls_trunk.lookup("dialer") == [f"sip:dialer@127.0.0.1:{dead_port};transport=tls"]
        [binding] = tls_trunk.bindings("dialer")
        assert binding.socket == f"tls:127.0.0.1:{tls_trunk.tls_port}"
        # requests to this binding go to the connection, not to the Contact's port
        assert binding.received == f"sip:127.0.0.1:{client.port};transport=tls"
    finally:
        client.close()


def test_binding_over_udp_has_no_received_address(kamailio_trunk: MakeTrunk) -> None:
    trunk = kamailio_trunk(tls=True)
    phone = UdpPhone(trunk, "1000")
    try:
        phone.register()
        [binding] = trunk.bindings("1000")
        assert binding.address == f"sip:1000@127.0.0.1:{phone.port}"
        assert binding.socket == f"udp:127.0.0.1:{trunk.port}"
        assert binding.received == ""
    finally:
        phone.close()


def test_callee_bye_comes_back_over_the_callers_tls_connection(
    tls_trunk: KamailioTrunk, dead_port: int
) -> None:
    """INVITE over TLS (407, digest, 200, ACK) to a UDP phone, then the phone hangs up:
    its BYE reaches the TLS client although the client's Contact port is dead."""
    callee = UdpPhone(tls_trunk, "0820001234")
    client = TlsSip(tls_trunk)
    try:
        callee.register()
        ruri = "sip:0820001234@trunk.test"
        to = f"<{ruri}>"
        contact = f"<sip:dialer@127.0.0.1:{dead_port};transport=tls>"

        first_branch = branch()
        client.send(
            client.request("INVITE", ruri, cseq=1, to=to, contact=contact, via_branch=first_branch)
        )
        challenge = client.final_response()
        assert challenge.status == 407, challenge.to_bytes().decode(errors="replace")
        ack_to = challenge.headers.get("To") or ""
        client.send(client.request("ACK", ruri, cseq=1, to=ack_to, via_branch=first_branch))

        auth = ClientAuthenticator(tls_trunk.dialer_user, tls_trunk.dialer_password)
        auth.on_challenge(challenge.headers.get_all("Proxy-Authenticate"), proxy=True)
        client.send(
            client.request(
                "INVITE",
                ruri,
                cseq=2,
                to=to,
                contact=contact,
                extra=auth.authorize(method="INVITE", uri=ruri),
            )
        )

        invite = callee.receive_request("INVITE")
        [seen_contact] = invite.contacts()
        assert f"alias=127.0.0.1~{client.port}~3" in seen_contact.uri  # 3 = TLS
        record_route = invite.headers.values("Record-Route")
        assert any("transport=tls" in rr and "r2=on" in rr for rr in record_route), record_route
        callee_tag = secrets.token_hex(4)
        callee.send(
            make_response(invite, 200, to_tag=callee_tag, extra=[("Contact", callee.contact)])
        )

        ok = client.final_response()
        assert ok.status == 200 and ok.cseq() == (2, "INVITE")
        dialog_to = ok.headers.get("To") or ""
        route_set = list(reversed(ok.headers.values("Record-Route")))
        [remote_contact] = ok.contacts()
        ack = client.request(
            "ACK", remote_contact.uri, cseq=2, to=dialog_to, extra=[("Route", r) for r in route_set]
        )
        client.send(ack)
        assert callee.receive_request("ACK").call_id == client.call_id

        bye_headers = callee.headers("BYE", 1, invite.call_id)
        bye_headers += [
            ("From", str(invite.to_addr().with_tag(callee_tag))),
            ("To", invite.headers.get("From") or ""),
            *[("Route", r) for r in record_route],
        ]
        callee.send(Request("BYE", seen_contact.uri, bye_headers))

        bye = client.receive()
        assert isinstance(bye, Request) and bye.method == "BYE", bye
        assert bye.call_id == client.call_id
        assert "alias=" not in bye.uri  # handle_ruri_alias took it off
        client.send(make_response(bye, 200))
        done = callee.final_response()
        assert done.status == 200 and done.cseq() == (1, "BYE")
    finally:
        client.close()
        callee.close()


def test_invite_to_a_tls_registration_comes_over_its_connection(
    tls_trunk: KamailioTrunk, dead_port: int
) -> None:
    client = TlsSip(tls_trunk)
    caller = UdpPhone(tls_trunk, "1000")
    try:
        register_over_tls(client, f"<sip:dialer@127.0.0.1:{dead_port};transport=tls>")
        call_id = secrets.token_hex(8)
        headers = caller.headers("INVITE", 1, call_id)
        headers += [
            ("From", f"<sip:1000@trunk.test>;tag={secrets.token_hex(4)}"),
            ("To", "<sip:dialer@trunk.test>"),
            ("Contact", caller.contact),
        ]
        caller.send(Request("INVITE", "sip:dialer@trunk.test", headers))

        invite = client.receive()
        assert isinstance(invite, Request) and invite.method == "INVITE", invite
        assert invite.call_id == call_id
        assert invite.uri == f"sip:dialer@127.0.0.1:{dead_port};transport=tls"
        client.send(make_response(invite, 486, to_tag=secrets.token_hex(4)))
        busy = caller.final_response()
        assert busy.status == 486
        assert parse_address(busy.headers.get("To") or "").tag is not None
    finally:
        caller.close()
        client.close()


# ------------------------------------------------------------------- without TLS


def test_without_tls_the_effective_config_has_no_tls(tmp_path: Path) -> None:
    require_binary("kamailio")
    trunk = KamailioTrunk(tmp_path / "trunk")
    try:
        with pytest.raises(AttributeError):
            _ = trunk.tls_port
        with pytest.raises(AttributeError):
            _ = trunk.ca_file
        assert "WITH_TLS" not in trunk.defines()
        config = trunk.write_config()
        printed = subprocess.run(
            ["kamailio", "--cfg-print", "-f", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        # directives only (no comments, no #!define lines), the tmp path taken out
        effective = [
            line.strip().replace(str(tmp_path), "TMP")
            for line in printed.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        assert any(line.startswith("listen=tcp:") for line in effective)
        for word in ("tls", "nathelper", "alias(", "onreply_route", "received_avp"):
            assert not [line for line in effective if word in line.lower()], word
        assert not (tmp_path / "trunk" / "tls").exists()
    finally:
        ports.release(trunk.reserved_ports)
