"""``sipdialer serve --config FILE`` as a real process: registers with a real Kamailio,
logs structured lines, and on SIGTERM un-registers and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.peers import ports
from tests.peers.kamailio import KamailioTrunk


def test_help_for_each_command() -> None:
    for args in (["--help"], ["serve", "--help"], ["demo", "--help"]):
        out = subprocess.run(
            [sys.executable, "-m", "sipdialer", *args], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert "usage:" in out.stdout


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("[trunk]\ntransport = carrier-pigeon\n")
    out = subprocess.run(
        [sys.executable, "-m", "sipdialer", "serve", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert "[trunk] transport" in out.stderr


def test_serve_registers_and_stops_cleanly_on_sigterm(
    tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk]
) -> None:
    trunk = kamailio_trunk(qop=True)
    port = ports.free_port("both")
    conf = tmp_path / "sip.conf"
    conf.write_text(
        f"[trunk]\nregistrar = {trunk.host}:{trunk.port}\ndomain = trunk.test\n"
        f"username = dialer\npassword = s3cret\n[sip]\nlisten = 127.0.0.1:{port}\n"
        # hermetic: any free HTTP port, no real Redis, the outbox under tmp_path
        f"[http]\nlisten = 127.0.0.1:0\n"
        f"[redis]\nurl = redis://127.0.0.1:1/0\noutbox = {tmp_path / 'outbox'}\n"
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sipdialer", "serve", "--config", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 10
        while "state=registered" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert any(f"127.0.0.1:{port}" in c for c in trunk.lookup("dialer"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_path.read_text()
    assert "event=service_stopped" in text
    assert "state=stopped" in text
    assert trunk.lookup("dialer") == []  # un-REGISTERed on the way out
    for line in text.splitlines():  # one structured line per event
        assert " level=" in line and " event=" in line, line
