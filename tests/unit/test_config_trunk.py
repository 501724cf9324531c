"""``[trunk]`` keys for reaching a real provider: names and optional ports for the
registrar and outbound proxy, tls with ca_file, keepalive."""

from __future__ import annotations

import pytest

from sipdialer.config import ConfigError, parse_config


def trunk(text: str) -> object:
    return parse_config("[trunk]\n" + text).trunk


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sip.example.com", ("sip.example.com", None)),
        ("sip.example.com:5080", ("sip.example.com", 5080)),
        ("localhost:5080", ("localhost", 5080)),
        ("127.0.0.1", ("127.0.0.1", None)),
        ("10.0.0.1:5060", ("10.0.0.1", 5060)),
        ("[2001:db8::1]", ("2001:db8::1", None)),
        ("[2001:db8::1]:5061", ("2001:db8::1", 5061)),
        ("trunk.test.", ("trunk.test.", None)),
    ],
)
def test_registrar_takes_a_name_and_an_optional_port(
    value: str, expected: tuple[str, int | None]
) -> None:
    cfg = parse_config(f"[trunk]\nregistrar = {value}\n").trunk
    assert cfg.registrar == expected
    assert cfg.next_hop == expected


@pytest.mark.parametrize(
    "value",
    ["sip.example.com:0", "sip.example.com:70000", "bad_host!", "-lead.example.com", "a b", "x:y"],
)
def test_bad_registrar_names_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[trunk\] registrar"):
        parse_config(f"[trunk]\nregistrar = {value}\n")


def test_domain_defaults_to_the_registrar_name() -> None:
    cfg = parse_config("[trunk]\nregistrar = sip.example.com\n").trunk
    assert cfg.domain == "sip.example.com"
    assert cfg.label == "sip.example.com/udp"


def test_tls_outbound_proxy_ca_file_and_keepalive() -> None:
    cfg = parse_config(
        "[trunk]\nregistrar = example.com\ntransport = TLS\nca_file = /etc/ca.pem\n"
        "outbound_proxy = edge.example.com:5061\nkeepalive = 10\n"
    ).trunk
    assert cfg.transport == "tls"
    assert cfg.ca_file == "/etc/ca.pem"
    assert cfg.outbound_proxy == ("edge.example.com", 5061)
    assert cfg.next_hop == ("edge.example.com", 5061)  # every request goes to the proxy
    assert cfg.keepalive == 10.0
    assert cfg.label == "example.com/tls"


def test_defaults() -> None:
    cfg = parse_config("").trunk
    assert (cfg.transport, cfg.ca_file, cfg.outbound_proxy, cfg.keepalive) == ("udp", "", None, 25)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("transport = sctp\n", "transport"),
        ("keepalive = -1\n", "keepalive"),
        ("outbound_proxy = bad host\n", "outbound_proxy"),
    ],
)
def test_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[trunk\] {key}"):
        parse_config("[trunk]\n" + text)
