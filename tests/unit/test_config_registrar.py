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
