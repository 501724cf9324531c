"""The configuration keys the HTTP API added, the public URL default, and recording
retention (the sweep and the service running it at start-up)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sipdialer.config import ConfigError, load_config, parse_config
from sipdialer.rtp.recorder import new_recording_ref
from sipdialer.rtp.retention import sweep

EXAMPLE = Path(__file__).resolve().parents[2] / "sip.conf.example"


def test_defaults() -> None:
    cfg = parse_config("")
    assert cfg.calls.max_concurrent == 100
    assert cfg.http.max_body_bytes == 16384
    assert cfg.redis.health_grace == 60
    assert cfg.http.base_url() == "http://127.0.0.1:8080"


def test_example_documents_the_new_keys() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.calls.max_concurrent == 100
    assert cfg.http.max_body_bytes == 16384
    assert cfg.redis.health_grace == 60
    text = EXAMPLE.read_text()
    for key in ("max_concurrent", "max_body_bytes", "health_grace", "retention_days"):
        assert f"\n{key} =" in text


def test_values() -> None:
    cfg = parse_config(
        "[calls]\nmax_concurrent = 7\n[http]\nmax_body_bytes = 2048\n[redis]\nhealth_grace = 2.5\n"
    )
    assert (cfg.calls.max_concurrent, cfg.http.max_body_bytes) == (7, 2048)
    assert cfg.redis.health_grace == 2.5


@pytest.mark.parametrize(
    ("listen", "public_url", "public_host", "bound", "expected"),
    [
        ("127.0.0.1:8080", "", "", None, "http://127.0.0.1:8080"),
        ("127.0.0.1:0", "", "", 41234, "http://127.0.0.1:41234"),
        ("0.0.0.0:8080", "", "dialer.example", None, "http://dialer.example:8080"),
        ("[::1]:8080", "", "", None, "http://[::1]:8080"),
        ("0.0.0.0:8080", "https://api.example/c2d", "x", 9, "https://api.example/c2d"),
    ],
)
def test_public_url_default(
    listen: str, public_url: str, public_host: str, bound: int | None, expected: str
) -> None:
    cfg = parse_config(f"[http]\nlisten = {listen}\npublic_url = {public_url}\n")
    assert cfg.http.base_url(bound, public_host) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[calls]\nmax_concurrent = 0\n", "[calls] max_concurrent"),
        ("[calls]\nmax_concurrent = 1.5\n", "[calls] max_concurrent"),
        ("[calls]\nmax_concurrent = many\n", "[calls] max_concurrent"),
        ("[calls]\nmax_concurrent = ٥\n", "[calls] max_concurrent"),
        ("[http]\nmax_body_bytes = 10\n", "[http] max_body_bytes"),
        ("[http]\nmax_body_bytes = 16k\n", "[http] max_body_bytes"),
        ("[http]\npublic_url = ftp://x\n", "[http] public_url"),
        ("[http]\npublic_url = http://a b\n", "[http] public_url"),
        ("[http]\napi_tokens = ok, tökén\n", "[http] api_tokens"),
        ("[redis]\nhealth_grace = -1\n", "[redis] health_grace"),
        ("[recording]\nretention_days = soon\n", "[recording] retention_days"),
    ],
)
def test_errors_name_the_key(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text)


def _age(path: Path, days: float) -> None:
    t = time.time() - days * 86400
    os.utime(path, (t, t))


def test_sweep_deletes_only_old_recordings(tmp_path: Path) -> None:
    old, new = new_recording_ref(), new_recording_ref()
    (tmp_path / f"{old}.wav").write_bytes(b"x")
    (tmp_path / f"{new}.wav").write_bytes(b"x")
    (tmp_path / "notes.wav").write_bytes(b"x")  # not a recording name
    (tmp_path / f"{old}.txt").write_bytes(b"x")
    (tmp_path / f"{new_recording_ref()}.wav").mkdir()
    for p in tmp_path.iterdir():
        _age(p, 10)
    _age(tmp_path / f"{new}.wav", 1)
    assert sweep(tmp_path, 7 * 86400) == 1
    left = sorted(p.name for p in tmp_path.iterdir())
    assert f"{old}.wav" not in left and f"{new}.wav" in left
    assert "notes.wav" in left and f"{old}.txt" in left
    assert sweep(tmp_path / "missing", 1) == 0
