"""``[sip] tls_listen``: phones or trunks that connect to us over TLS are served (a client
verifying our certificate sends OPTIONS and gets 200 on its connection); a plain TCP
client on the TLS port gets no SIP answer; a missing key is a clear config error."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from sipdialer.config import ConfigError, parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.service import Service
from sipdialer.sip.message import Response, StreamFramer, parse_message
from tests.fixtures import ports
from tests.fixtures.tls_certs import make_ca, make_server_certificate

pytestmark = pytest.mark.both_loops


def options(port: int, local: tuple[str, int]) -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1:{port};transport=tls SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS {local[0]}:{local[1]};branch=z9hG4bKtlsopt\r\n"
        "Max-Forwards: 70\r\nTo: <sip:127.0.0.1>\r\nFrom: <sip:p@127.0.0.1>;tag=t1\r\n"
        "Call-ID: tls-listen-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def ask_over_tls(port: int, ca_file: Path) -> Response:
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        conn.sendall(options(port, conn.getsockname()))
        framer = StreamFramer()
        while True:
            data = conn.recv(65535)
            assert data, "closed before an answer"
            for message in framer.feed(data):
                parsed = parse_message(message)
                assert isinstance(parsed, Response)
                return parsed


def no_answer_over_plain_tcp(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as conn:
        conn.sendall(options(port, conn.getsockname()))
        try:
            return conn.recv(65535)
        except (TimeoutError, ConnectionResetError):
            return b""


async def test_tls_listen_answers_over_tls_only(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    server = make_server_certificate(ca, tmp_path / "server")
    sip, tls = ports.free_port("both"), ports.free_port("tcp")
    config = parse_config(
        f"[sip]\nlisten = 127.0.0.1:{sip}\ntls_listen = 127.0.0.1:{tls}\n"
        f"tls_cert = {server.cert_file}\ntls_key = {server.key_file}\n"
    )
    service = Service(config, sink=MemorySink(), serve_http=False)
    await service.start()
    try:
        answer = await asyncio.to_thread(ask_over_tls, tls, ca.cert_file)
        assert answer.status == 200 and answer.call_id == "tls-listen-1"
        assert b"SIP/2.0" not in await asyncio.to_thread(no_answer_over_plain_tcp, tls)
    finally:
        await service.stop()


def test_tls_listen_needs_a_certificate_and_a_key() -> None:
    with pytest.raises(ConfigError, match=r"\[sip\] tls_cert"):
        parse_config("[sip]\ntls_listen = 127.0.0.1:5061\n")
