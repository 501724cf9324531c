"""The INI configuration: defaults, every documented key, and errors that name the key."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from sipdialer.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "sip.conf.example"


def test_example_parses_and_documents_every_spec_key() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.trunk.registrar == ("127.0.0.1", 5080)
    assert cfg.trunk.domain == "trunk.test"
    assert cfg.trunk.transport == "udp"
    assert cfg.sip.listen == ("127.0.0.1", 5070)
    assert cfg.sip.rtp_ports == (20000, 29999)
    assert cfg.redis.key_prefix == "enigma" and cfg.redis.legacy_c2d is True
    assert cfg.recording.enabled is True
    raw = configparser.ConfigParser(interpolation=None)
    raw.read(EXAMPLE)
    spec = {
        "trunk": ["registrar", "domain", "username", "password", "transport", "expires"],
        "sip": ["listen", "rtp_ports"],
        "http": ["listen", "public_url", "api_tokens"],
        "redis": ["url", "key_prefix", "legacy_c2d"],
        "calls": ["agent_ring_timeout", "callee_ring_timeout", "max_duration", "rtp_timeout"],
        "recording": ["directory", "enabled"],
    }
    for section, keys in spec.items():
        for key in keys:
            assert raw.has_option(section, key), f"[{section}] {key} missing from the example"
    assert raw.has_section("extensions")


def test_defaults_without_file_content() -> None:
    cfg = parse_config("")
    assert cfg.trunk.registrar is None
    assert cfg.calls.agent_ring_timeout == 30
    assert cfg.http.api_tokens == ()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[trunk]\ntransport = sctp\n", "[trunk] transport"),
        ("[trunk]\nregistrar = host:99999\n", "[trunk] registrar"),
        ("[sip]\nrtp_ports = 30000-20000\n", "[sip] rtp_ports"),
        ("[calls]\nmax_duration = soon\n", "[calls] max_duration"),
        ("[redis]\nlegacy_c2d = maybe\n", "[redis] legacy_c2d"),
        ("[sip]\nlisen = 1.2.3.4:5\n", "[sip] lisen"),
        ("[extensions]\n12 = pw\n", "[extensions] 12"),
        ("[bogus]\nx = 1\n", "[bogus]"),
        ("[sip]\nlisten = 0.0.0.0:5060\n", "[sip] public_host"),
        ("[sip]\nlisten = 127.0.0.1:5060\npublic_host = sip.example.com\n", "[sip] public_host"),
    ],
)
def test_errors_name_the_key(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text)


def test_extensions_and_tokens() -> None:
    cfg = parse_config("[extensions]\n1001 = pw1\n2002 = pw2\n[http]\napi_tokens = a, b\n")
    assert cfg.extensions == {"1001": "pw1", "2002": "pw2"}
    assert cfg.http.api_tokens == ("a", "b")


def test_nameservers_default_port_ipv6_and_default_empty() -> None:
    assert parse_config("").sip.nameservers == ()
    assert load_config(EXAMPLE).sip.nameservers == ()
    documented = configparser.ConfigParser(interpolation=None)
    documented.read(EXAMPLE)
    assert documented.has_option("sip", "nameservers")
    cfg = parse_config(
        "[sip]\nnameservers = 127.0.0.1:5354, 10.0.0.2, [::1]:5353, ::1, [fe80::1]\n"
    )
    assert cfg.sip.nameservers == (
        ("127.0.0.1", 5354),
        ("10.0.0.2", 53),
        ("::1", 5353),
        ("::1", 53),
        ("fe80::1", 53),
    )
    assert parse_config("[sip]\nnameservers =\n").sip.nameservers == ()


@pytest.mark.parametrize(
    "value",
    ["ns.example.com", "ns.example.com:53", "127.0.0.1:99999", "127.0.0.1:0", "1.2.3.4:x", "[::1"],
)
def test_nameservers_must_be_ip_with_port(value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[sip\] nameservers"):
        parse_config(f"[sip]\nnameservers = {value}\n")
