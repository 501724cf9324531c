"""A headless baresip 1.0.0 phone registered to a trunk (owns its config, tone, process).

Config and accounts follow the lab recipe (aufile source playing a sox sine tone,
aubridge dummy player, sndfile recordings, menu + ctrl_tcp + cons), but every port is
free: SIP (UDP+TCP P, TLS P+1) from the trunk's trusted phone range, ctrl_tcp, cons
(UDP) and an RTP range.

ctrl_tcp serves ONE client and a new connection drops the previous one, so the phone
object keeps the single connection itself: ``ctrl()`` sends a command and returns its
response, a reader thread collects the events (``events``, ``wait_event()``). Use
``cons()`` (fire-and-forget UDP) if something else holds ctrl_tcp.

NB baresip hangs the call up when the tone WAV ends: ``tone_seconds`` is the maximum
call length.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from . import ports
from .kamailio import KamailioTrunk
from .process import PeerProcess, PeerStartError, wait_until

AnswerMode = Literal["auto", "manual"]

CtrlMessage = dict[str, Any]


def netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


def parse_netstrings(buf: bytes) -> tuple[list[CtrlMessage], bytes]:
    """Split complete netstrings off ``buf``; returns (decoded JSON messages, rest)."""
    out: list[CtrlMessage] = []
    while True:
        i = buf.find(b":")
        if i < 0:
            break
        n = int(buf[:i])
        if len(buf) < i + 2 + n:
            break
        out.append(json.loads(buf[i + 1 : i + 1 + n]))
        buf = buf[i + 2 + n :]
    return out, buf


def make_tone(path: Path, hz: int, seconds: int, sox: str = "sox") -> Path:
    """8 kHz mono s16 sine WAV (what aufile needs with ausrc_srate 8000 / channels 1)."""
    if not path.exists():
        fmt = ["-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer"]
        synth = ["synth", str(seconds), "sine", str(hz), "vol", "0.5"]
        subprocess.run(
            [sox, "-n", *fmt, str(path), *synth],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
    return path


class BaresipPhone:
    """baresip with account ``sip:<user>@trunk.test`` registering via the trunk (or any
    registrar at ``(host, port)``; ``password``/``auth_user`` answer a digest challenge)."""

    host = "127.0.0.1"

    def __init__(
        self,
        tmpdir: Path | str,
        name: str,
        user: str,
        trunk: KamailioTrunk | tuple[str, int],
        tone_hz: int = 440,
        answer: AnswerMode = "auto",
        tone_seconds: int = 60,
        *,
        domain: str = "trunk.test",
        regint: int = 300,
        rtp_ports: int = 20,
        baresip: str = "baresip",
        sox: str = "sox",
        password: str | None = None,
        auth_user: str | None = None,
    ) -> None:
        self.name = name
        self.user = user
        self.domain = domain
        self.password = password
        self.auth_user = auth_user
        self.trunk = trunk if isinstance(trunk, KamailioTrunk) else None
        self.trunk_addr: tuple[str, int] = (
            trunk.addr if isinstance(trunk, KamailioTrunk) else (trunk[0], int(trunk[1]))
        )
        self.tone_hz = tone_hz
        self.answer = answer
        self.tone_seconds = tone_seconds
        self.regint = regint
        self.sox = sox
        self.dir = Path(tmpdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.recordings_dir = self.dir / "rec"
        self.recordings_dir.mkdir(exist_ok=True)
        self.tone_path = self.dir / f"tone_{tone_hz}_{tone_seconds}s.wav"
        self.log_path = self.dir / "baresip.log"

        self.reserved_ports: list[int] = []
        if self.trunk is not None:
            self.sip_port = self.trunk.allocate_phone_port()
        else:
            self.sip_port = self._free_sip_port()
        self.ctrl_port = ports.free_port("tcp")
        self.cons_port = ports.free_port("udp")
        self.rtp_port_min = ports.free_port_range(rtp_ports, "udp")
        self.rtp_port_max = self.rtp_port_min + rtp_ports - 1
        self.reserved_ports += [self.ctrl_port, self.cons_port]
        self.reserved_ports += range(self.rtp_port_min, self.rtp_port_max + 1)

        self._proc = PeerProcess("baresip", [baresip, "-f", str(self.dir)], self.log_path)
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._responses: dict[str, CtrlMessage] = {}
        self._events: list[CtrlMessage] = []
        self._event_cursor = 0
        self._token = 0

    def _free_sip_port(self) -> int:
        p = ports.free_port_range(2, "both")
        self.reserved_ports += [p, p + 1]
        return p

    # ----------------------------------------------------------------- config

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def sip_addr(self) -> tuple[str, int]:
        return (self.host, self.sip_port)

    def write_config(self) -> None:
        make_tone(self.tone_path, self.tone_hz, self.tone_seconds, self.sox)
        config = f"""\
# baresip 1.0.0 headless test phone {self.name!r} (generated by tests/peers/baresip.py)
poll_method		epoll
sip_listen		{self.host}:{self.sip_port}
# NB: baresip also binds TCP {self.sip_port} and TLS {self.sip_port + 1}
net_interface		{self.host}
dns_server		127.0.0.1:53
call_local_timeout	120
call_max_calls		4
audio_buffer		20-160
audio_path		/usr/share/baresip
audio_player		aubridge,{self.name}
audio_alert		aubridge,{self.name}
audio_source		aufile,{self.tone_path}
ausrc_srate		8000
auplay_srate		8000
ausrc_channels		1
auplay_channels		1
audio_level		no
rtp_ports		{self.rtp_port_min}-{self.rtp_port_max}
rtcp_mux		no
jitter_buffer_delay	1-10
rtp_stats		no
statmode_default	off
module_path		/usr/lib/baresip/modules
module			g711.so
module			aufile.so
module			aubridge.so
module			sndfile.so
module			cons.so
module_tmp		account.so
module_app		menu.so
module_app		ctrl_tcp.so
cons_listen		{self.host}:{self.cons_port}
ctrl_tcp_listen		{self.host}:{self.ctrl_port}
snd_path		{self.recordings_dir}
"""
        host, port = self.trunk_addr
        # digest credentials, for registrars that challenge (the Kamailio trunk trusts the
        # phone range by IP instead); baresip answers any realm with them
        auth = f";auth_pass={self.password}" if self.password is not None else ""
        auth += f";auth_user={self.auth_user}" if self.auth_user else ""
        account = (
            f'<{self.aor}>{auth};outbound="sip:{host}:{port};transport=udp";regint={self.regint}'
            f";answermode={self.answer};audio_codecs=pcmu,pcma;ptime=20\n"
        )
        (self.dir / "config").write_text(config)
        (self.dir / "accounts").write_text(account)
        (self.dir / "contacts").write_text("")

    # ---------------------------------------------------------------- process

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def running(self) -> bool:
        return self._proc.running()

    def start(self, timeout: float = 10.0) -> BaresipPhone:
        """Write config + tone, start baresip, connect to its ctrl_tcp."""
        self.write_config()
        self._proc.start()
        if not wait_until(lambda: self._connect() or not self._proc.running(), timeout):
            err = self._proc.fail(f"ctrl_tcp {self.host}:{self.ctrl_port} did not accept")
            self.stop()
            raise err
        if not self._proc.running():
            err = self._proc.fail("exited during start-up")
            self.stop()
            raise err
        return self

    def wait_registered(self, timeout: float = 10.0) -> list[str]:
        """Wait until the trunk has a contact for this phone's user; return the contacts.

        Without a KamailioTrunk object, poll ctrl ``reginfo`` until it says OK instead
        (REGISTER_OK usually fires before the ctrl connection exists).
        """
        if self.trunk is None:
            if not wait_until(self._reginfo_ok, timeout, interval=0.1):
                raise self._proc.fail(f"{self.user}: reginfo not OK within {timeout} s")
            return []
        contacts: list[str] = []

        def registered() -> bool:
            nonlocal contacts
            contacts = [c for c in self.trunk.lookup(self.user) if f":{self.sip_port}" in c]
            return bool(contacts) or not self._proc.running()

        if not wait_until(registered, timeout, interval=0.1) or not contacts:
            raise self._proc.fail(
                f"{self.user} not registered at the trunk within {timeout} s "
                f"(trunk lookup: {self.trunk.lookup(self.user)})"
            )
        return contacts

    def _reginfo_ok(self) -> bool:
        data = str(self.ctrl("reginfo").get("data", ""))
        return re.search(r"\bOK\b", re.sub(r"\x1b\[[0-9;]*m", "", data)) is not None

    def stop(self) -> None:
        """Close ctrl, SIGTERM baresip by PID (SIGKILL fallback)."""
        self._close_ctrl()
        self._proc.stop(timeout=2.0)
        if self.trunk is not None:
            self.trunk.release_phone_port(self.sip_port)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 30) -> str:
        return self._proc.log_tail(n)

    def recordings(self) -> list[Path]:
        """WAVs written by sndfile (``dump-<time>-enc.wav`` sent, ``-dec.wav`` received)."""
        return sorted(self.recordings_dir.glob("*.wav"))

    # ------------------------------------------------------------------- ctrl

    def _connect(self) -> bool:
        if self._sock is not None:
            return True
        try:
            sock = socket.create_connection((self.host, self.ctrl_port), timeout=1.0)
        except OSError:
            return False
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(
            target=self._read_loop, args=(sock,), name=f"baresip-ctrl-{self.name}", daemon=True
        )
        self._reader.start()
        return True

    def _close_ctrl(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._reader is not None:
            self._reader.join(2.0)
            self._reader = None

    def _read_loop(self, sock: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            msgs, buf = parse_netstrings(buf + data)
            with self._cond:
                for m in msgs:
                    m["_time"] = time.monotonic()
                    if m.get("response"):
                        self._responses[str(m.get("token", ""))] = m
                    elif m.get("event"):
                        self._events.append(m)
                self._cond.notify_all()
        with self._cond:
            if self._sock is sock:
                self._sock = None
            self._cond.notify_all()

    def ctrl(self, command: str, params: str = "", timeout: float = 5.0) -> CtrlMessage:
        """Send a ctrl_tcp command (e.g. "dial", "accept", "hangup", "listcalls").

        Returns the response ``{"response": true, "ok": ..., "data": ..., "token": ...}``.
        """
        if not self._connect():
            raise ConnectionError(f"{self.name}: cannot connect to ctrl_tcp {self.ctrl_port}")
        with self._cond:
            self._token += 1
            token = f"{self.name}-{self._token}"
        msg = json.dumps({"command": command, "params": params, "token": token}).encode()
        with self._send_lock:
            assert self._sock is not None
            self._sock.sendall(netstring(msg))
        with self._cond:
            if not self._cond.wait_for(lambda: token in self._responses, timeout):
                raise TimeoutError(f"{self.name}: no ctrl response to {command!r} in {timeout} s")
            return self._responses.pop(token)

    @property
    def events(self) -> list[CtrlMessage]:
        """All ctrl_tcp events received so far (dicts with "type", "id", "param", ...)."""
        with self._cond:
            return list(self._events)

    def wait_event(
        self,
        type_: str,
        timeout: float = 10.0,
        match: Callable[[CtrlMessage], bool] | None = None,
    ) -> CtrlMessage:
        """Next event of ``type_`` (e.g. CALL_INCOMING, CALL_ESTABLISHED, CALL_CLOSED).

        Events are consumed in order: the search starts after the last event returned
        by ``wait_event``.
        """

        def find() -> CtrlMessage | None:
            for i in range(self._event_cursor, len(self._events)):
                ev = self._events[i]
                if ev.get("type") == type_ and (match is None or match(ev)):
                    self._event_cursor = i + 1
                    return ev
            return None

        with self._cond:
            found = self._cond.wait_for(find, timeout)
            if found is None:
                seen = [e.get("type") for e in self._events[self._event_cursor :]]
                raise TimeoutError(f"{self.name}: no {type_} event in {timeout} s (seen {seen})")
            return found

    def cons(self, command: str) -> None:
        """Send a command line to the cons UDP port ("/dial 1000", "/hangup"), no reply."""
        line = command if command.startswith("/") else "/" + command
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(line.encode() + b"\n", (self.host, self.cons_port))

    def dial(self, target: str) -> CtrlMessage:
        """``dial`` a number or URI (a bare number becomes sip:<n>@<domain>)."""
        uri = target if ":" in target else f"sip:{target}@{self.domain}"
        return self.ctrl("dial", uri)

    def __enter__(self) -> BaresipPhone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["BaresipPhone", "PeerStartError", "make_tone", "netstring", "parse_netstrings"]
