"""``sipdialer demo`` and ``sipdialer inspect`` as a user runs them: real processes, cwd in
``tmp_path`` (so ``recordings/`` lands there), checked on what they print and write.

Without Redis (``--redis-url`` at a port where nothing listens) the demo uses its
embedded stand-in (fakeredis's server) and the ``enigma`` prefix; with a real
redis-server it uses a demo prefix and leaves nothing behind. Without matplotlib (blocked
by a ``sitecustomize`` on ``PYTHONPATH``) ``--plot`` says which extra to install and exits
2, and everything else still works. The notifications it prints must validate against ``schemas/``;
the recording's left channel must carry the agent's 440 Hz and the right the callee's
1000 Hz (FFT peak ± 15 Hz).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import redis
import soundfile

from tests.fixtures import ports
from tests.fixtures.redis import RedisServer

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEEP_RUNNING = ("--keep-running", "--talk-seconds", "1")


PLOT_EXTRA = "pip install 'sipdialer[plot]'"


def run(
    args: list[str], cwd: Path, timeout: float = 90, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sipdialer", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def demo(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run(["demo", *args], tmp_path, env=env)


def without_matplotlib(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import matplotlib`` fails, as where it is not installed."""
    site = tmp_path / "no-matplotlib"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    path = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def write_tones(path: Path, seconds: float = 1.0) -> None:
    """A stereo 8 kHz recording: 440 Hz left, 1000 Hz right."""
    t = np.arange(int(8000 * seconds)) / 8000
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1000 * t)
    soundfile.write(path, (np.stack([left, right], axis=1) * 16000).astype(np.int16), 8000)


def no_redis_url() -> str:
    return f"redis://127.0.0.1:{ports.free_port('tcp')}/0"


def printed_document(out: str, key: str) -> Any:
    """The JSON document the demo printed after ``BRPOP <key> …``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(f"BRPOP {key} "))
    body: list[str] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if line.startswith("    ") and not line.strip().startswith("("):
            body.append(line)
    return json.loads("\n".join(body))


def validate(document: Any, name: str) -> None:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(document)


def peak_hz(samples: np.ndarray) -> float:
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * 8000 / x.size)


def check_answered(result: subprocess.CompletedProcess[str], tmp_path: Path, prefix: str) -> str:
    """The checks every answered demo passes; returns the recording reference."""
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "ANSWERED" in out and "exit code 0" in out
    cdr = printed_document(out, f"{prefix}:notifications:cdr")
    c2d = printed_document(out, f"{prefix}:notifications:c2d")
    validate(cdr, "cdr")
    validate(c2d, "c2d")
    payload = cdr["payload"]
    assert (payload["disposition"], payload["end_code"]) == ("ANSWERED", 16)
    assert c2d["notifications"][0]["disposition"] == "ANSWERED"
    assert payload["end_reason"] == "callee_hungup" and payload["billsec"] >= 3
    ref = payload["recording_url"]
    assert ref and c2d["notifications"][0]["recording_url"] == ref
    match = re.search(r"^\s+file\s+(recordings/\S+\.wav)$", out, re.M)
    assert match, out
    wav = tmp_path / match.group(1)
    assert wav.is_file() and wav.parent == tmp_path / "recordings" and wav.stem == ref
    data, rate = soundfile.read(wav, dtype="int16")
    assert rate == 8000 and data.shape[1] == 2 and data.shape[0] >= 3 * rate
    assert abs(peak_hz(data[:, 0]) - 440) <= 15
    assert abs(peak_hz(data[:, 1]) - 1000) <= 15
    assert f"/click2dial/recordings/{ref}" in out
    return str(ref)


def test_help_documents_every_option(tmp_path: Path) -> None:
    out = run(["demo", "--help"], tmp_path).stdout
    for option in (
        "--redis-url",
        "--key-prefix",
        "--recordings",
        "--callee-busy",
        "--no-answer",
        "--talk-seconds",
        "--plot",
        "--keep-running",
        "--verbose",
    ):
        assert option in out, option
    out = run(["inspect", "--help"], tmp_path).stdout
    assert "RECORDING.wav" in out and "--plot" in out and "--png" in out


def test_demo_without_redis_uses_the_embedded_one(tmp_path: Path) -> None:
    result = demo(tmp_path, "--redis-url", no_redis_url())
    check_answered(result, tmp_path, "enigma")  # the notifications went through it
    assert "using an embedded stand-in" in result.stdout
    assert re.search(r"at redis://127\.0\.0\.1:\d+/0: fakeredis \d", result.stdout)
    assert "HTTP/1.1 201 Created" in result.stdout
    for state in ("agent_ringing", "callee_ringing", "bridged", "ended"):
        assert f"state -> {state}" in result.stdout
    assert result.stderr == ""  # no log spam


def test_demo_with_a_real_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    result = demo(tmp_path, "--redis-url", redis_server.url)
    match = re.search(r"key prefix\s+(enigma-demo-[0-9a-f]{6}) ", result.stdout)
    assert match, result.stdout
    check_answered(result, tmp_path, match.group(1))
    assert "stand-in" not in result.stdout
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.keys("enigma*") == []  # read back: nothing left behind
    finally:
        client.close()


def test_demo_callee_busy(tmp_path: Path) -> None:
    result = demo(tmp_path, "--callee-busy", "--redis-url", no_redis_url())
    assert result.returncode == 0, result.stdout + result.stderr
    c2d = printed_document(result.stdout, "enigma:notifications:c2d")
    validate(c2d, "c2d")
    assert (c2d["notifications"][0]["disposition"], c2d["notifications"][0]["end_code"]) == (
        "BUSY",
        17,
    )
    assert "BUSY" in result.stdout and "17" in result.stdout
    assert "486 Busy Here" in result.stdout


def test_demo_no_answer(tmp_path: Path) -> None:
    result = demo(tmp_path, "--no-answer", "--redis-url", no_redis_url())
    assert result.returncode == 0, result.stdout + result.stderr
    cdr = printed_document(result.stdout, "enigma:notifications:cdr")
    validate(cdr, "cdr")
    assert (cdr["payload"]["disposition"], cdr["payload"]["end_code"]) == ("NO ANSWER", 19)
    assert "NO ANSWER" in result.stdout and "19" in result.stdout
    assert "CANCEL -> 487 Request Terminated" in result.stdout


def test_demo_plot_and_inspect(tmp_path: Path) -> None:
    result = demo(tmp_path, "--plot", "--talk-seconds", "1.5", "--redis-url", no_redis_url())
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"^\s+plot\s+(recordings/\S+\.png) ", result.stdout, re.M)
    assert match, result.stdout
    png = tmp_path / match.group(1)
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 0
    wav = png.with_suffix(".wav")
    inspected = run(["inspect", str(wav), "--png", str(tmp_path / "again.png")], tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    lines = inspected.stdout.splitlines()
    left = next(line for line in lines if line.strip().startswith("left (agent)"))
    right = next(line for line in lines if line.strip().startswith("right (callee)"))
    assert abs(float(left.split()[2]) - 440) <= 15
    assert abs(float(right.split()[2]) - 1000) <= 15
    assert (tmp_path / "again.png").read_bytes()[:8] == PNG_SIGNATURE
    bad = run(["inspect", str(tmp_path / "missing.wav")], tmp_path)
    assert bad.returncode == 2 and "missing.wav" in bad.stderr


def test_inspect_plot_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    wav = tmp_path / "tones.wav"
    write_tones(wav)
    env = without_matplotlib(tmp_path)
    plain = run(["inspect", str(wav)], tmp_path, env=env)
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr
    result = run(["inspect", str(wav), "--plot"], tmp_path, env=env)
    assert result.returncode == 2
    assert result.stdout == plain.stdout  # the measurements are printed all the same
    assert "left (agent)" in result.stdout
    assert result.stderr.count("\n") == 1 and PLOT_EXTRA in result.stderr, result.stderr
    assert "matplotlib" in result.stderr and "Traceback" not in result.stderr
    assert not wav.with_suffix(".png").exists()
    png = run(["inspect", str(wav), "--png", str(tmp_path / "x.png")], tmp_path, env=env)
    assert png.returncode == 2 and png.stderr == result.stderr
    # and with matplotlib, the same command draws (the block above is what made it fail)
    drawn = run(["inspect", str(wav), "--plot"], tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert wav.with_suffix(".png").read_bytes()[:8] == PNG_SIGNATURE


def test_demo_plot_without_matplotlib_runs_the_call_and_exits_2(tmp_path: Path) -> None:
    result = demo(
        tmp_path,
        "--plot",
        "--talk-seconds",
        "1.5",
        "--redis-url",
        no_redis_url(),
        env=without_matplotlib(tmp_path),
    )
    out = result.stdout
    assert result.returncode == 2, out + result.stderr
    assert result.stderr.count("\n") == 1 and PLOT_EXTRA in result.stderr, result.stderr
    assert re.search(r"^\s+plot\s+not drawn: .*matplotlib", out, re.M), out
    assert "the plot was not drawn; exit code 2" in out
    assert "FAIL" not in out  # the call itself went as expected
    cdr = printed_document(out, "enigma:notifications:cdr")
    assert (cdr["payload"]["disposition"], cdr["payload"]["end_code"]) == ("ANSWERED", 16)
    recordings = list((tmp_path / "recordings").iterdir())
    assert [p.suffix for p in recordings] == [".wav"]


@pytest.mark.timeout(90)
def test_keep_running_serves_calls_placed_by_hand(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sipdialer", "demo", *KEEP_RUNNING, "--redis-url", no_redis_url()],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def read_lines() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read_lines, daemon=True).start()
    seen: list[str] = []

    def wait_for(text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in seen):
            assert proc.poll() is None, "".join(seen)
            try:
                seen.append(lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {text!r} in:\n{''.join(seen)}") from None

    try:
        wait_for("Ctrl-C stops everything")
        text = "".join(seen)
        post = re.search(r"curl -s -X POST (\S+) -H .* -d '(\{.*\})'", text)
        assert post, text
        request = urllib.request.Request(
            post.group(1),
            data=post.group(2).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
            call_id = json.loads(response.read())["id"]
        wait_for(f"{call_id[:8]} state -> ended: ANSWERED")
        cli = re.search(r"redis-cli (-p \d+|-u \S+) BRPOP (\S+:notifications:cdr) 0", text)
        assert cli, text
        if cli.group(1).startswith("-p"):
            url = f"redis://127.0.0.1:{cli.group(1).split()[1]}/0"
        else:
            url = cli.group(1).split()[1]
        client = redis.Redis.from_url(url)
        try:
            taken = client.brpop([cli.group(2)], timeout=5)
        finally:
            client.close()
        assert taken is not None
        assert json.loads(taken[1])["payload"]["call_ref"] == "by-hand-1"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
