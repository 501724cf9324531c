"""``[registrar] algorithms`` defaults so every phone registers (MD5 only), and
``[extension_algorithms]`` makes one extension's phone use SHA-256."""

from __future__ import annotations

import pytest

from sipdialer.config import ConfigError, parse_config


def test_default_offers_md5_only_so_every_phone_registers() -> None:
    assert parse_config("").registrar.algorithms == ("MD5",)
    assert parse_config("[registrar]\nalgorithms = sha-256, md5\n").registrar.algorithms == (
        "SHA-256",
        "MD5",
    )


def test_per_extension_algorithms() -> None:
    cfg = parse_config(
        "[extensions]\n1001 = pw1\n1002 = pw2\n"
        "[extension_algorithms]\n1001 = sha-256\n1002 = SHA-256, md5, sha-256\n"
    )
    assert cfg.extension_algorithms == {"1001": ("SHA-256",), "1002": ("SHA-256", "MD5")}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[extensions]\n1001 = pw\n[extension_algorithms]\n1002 = md5\n", "1002"),
        ("[extensions]\n1001 = pw\n[extension_algorithms]\n1001 = sha-512\n", "1001"),
        ("[extensions]\n1001 = pw\n[extension_algorithms]\n1001 =\n", "1001"),
    ],
)
def test_errors_name_the_extension(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[extension_algorithms\] {named}"):
        parse_config(text)


def test_srtp_policies_default_to_plain_rtp() -> None:
    cfg = parse_config("[extensions]\n1001 = pw\n")
    assert cfg.trunk.srtp == "no" and cfg.registrar.srtp == "no"
    assert cfg.srtp_for_extension("1001") == "no"


def test_srtp_per_side_and_per_extension() -> None:
    cfg = parse_config(
        "[trunk]\nsrtp = Optional\n[registrar]\nsrtp = required\n"
        "[extensions]\n1001 = pw1\n1002 = pw2\n[extension_srtp]\n1002 = no\n"
    )
    assert cfg.trunk.srtp == "optional"
    assert cfg.srtp_for_extension("1001") == "required"
    assert cfg.srtp_for_extension("1002") == "no"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[trunk]\nsrtp = yes\n", r"\[trunk\] srtp"),
        ("[registrar]\nsrtp = mandatory\n", r"\[registrar\] srtp"),
        (
            "[extensions]\n1001 = pw\n[extension_srtp]\n1002 = optional\n",
            r"\[extension_srtp\] 1002",
        ),
        (
            "[extensions]\n1001 = pw\n[extension_srtp]\n1001 = sometimes\n",
            r"\[extension_srtp\] 1001",
        ),
    ],
)
def test_srtp_errors_name_the_key(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(text)
