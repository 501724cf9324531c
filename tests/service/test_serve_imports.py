"""``sipdialer serve`` as the process a user runs loads nothing of the demo: its
simulated trunk, phones and Redis stand-in stay out of the product (``-X importtime``
lists every module the process imported, up to the moment it is told to stop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sipdialer.demo.ports import free_port, free_port_range


def test_serve_imports_nothing_from_demo(tmp_path: Path) -> None:
    low, high = free_port_range(20)
    conf = tmp_path / "sip.conf"
    conf.write_text(
        f"[sip]\nlisten = 127.0.0.1:{free_port(tcp_too=True)}\nrtp_ports = {low}-{high}\n"
        f"[http]\nlisten = 127.0.0.1:{free_port()}\n"
        f"[redis]\nurl = redis://127.0.0.1:{free_port()}/0\noutbox = {tmp_path / 'outbox'}\n"
        f"[recording]\ndirectory = {tmp_path / 'rec'}\n"
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "sipdialer", "serve", "--config", str(conf)],
            stderr=log,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 20
        while "event=service_started" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    imported = [
        line.rsplit("|", 1)[-1].strip()
        for line in log_path.read_text().splitlines()
        if line.startswith("import time:")
    ]
    assert "sipdialer.service" in imported  # the listing is real
    assert "sipdialer.cli" in imported
    assert [m for m in imported if m.startswith("sipdialer.demo")] == []
