"""The running service: builds the SIP endpoint, transports, user agent, trunk
registration, call engine, HTTP API and recording retention from a :class:`Config`,
starts them, and stops them cleanly (HTTP first, then calls, then un-REGISTER).

Owns the asyncio side of the registration (carrying its requests and arming its timer);
the registration state machine itself is the pure :class:`RegistrationClient`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

from sipdialer.api import ApiServer, make_app
from sipdialer.api_context import ApiContext
from sipdialer.cdr import CdrSink, MemorySink
from sipdialer.config import Config
from sipdialer.dialer import Dialer
from sipdialer.logs import quote_value
from sipdialer.metrics import CallCounters, RtpTotals
from sipdialer.registrar import Registrar
from sipdialer.registrar_runtime import RegistrarRuntime
from sipdialer.registration import RegistrationClient, RegistrationStatus, RegState
from sipdialer.retention import RetentionSweeper
from sipdialer.rtp.ringback import load_ringback
from sipdialer.sip.endpoint import SipEndpoint
from sipdialer.sip.events import Event, ResponseReceived, TransactionTimeout, TransportError
from sipdialer.sip.message import Request
from sipdialer.sip.timers import TimerConfig
from sipdialer.transport import SipTransport
from sipdialer.useragent import UserAgent

log = logging.getLogger("sipdialer.registration")


class TrunkRegistration:
    """Keeps :class:`RegistrationClient` talking to the trunk through the user agent."""

    def __init__(self, config: Config, ua: UserAgent, transport: SipTransport) -> None:
        trunk = config.trunk
        assert trunk.registrar is not None
        self.config = config
        self.ua = ua
        self.transport = transport
        self.dest = trunk.registrar
        self.proto = trunk.transport.upper()
        host = config.sip.advertised_host
        tp = ";transport=tcp" if self.proto == "TCP" else ""
        self.client = RegistrationClient(
            domain=trunk.domain,
            username=trunk.username,
            password=trunk.password,
            contact_uri=f"sip:{trunk.username}@{host}:{transport.port}{tp}",
            expires=trunk.expires,
            registrar_label=f"{self.dest[0]}:{self.dest[1]}/{trunk.transport}",
        )
        self._timer: asyncio.TimerHandle | None = None
        self._last_state = self.client.state
        self._stopped = asyncio.Event()

    def start(self) -> None:
        self._send(self.client.start(self.transport.now()))

    async def stop(self, timeout: float = 2.0) -> None:
        if self._timer:
            self._timer.cancel()
        request = self.client.stop(self.transport.now())
        self._report()
        if request is None:
            return
        self._send(request)
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            log.info("event=unregister_timeout")

    def _send(self, request: Request | None) -> None:
        if request is not None:
            self.ua.send_request(request, self.dest, self.proto, self._on_event)
        self._rearm()

    def _on_event(self, event: Event) -> None:
        now = self.transport.now()
        if isinstance(event, ResponseReceived):
            self._send(self.client.on_response(event.response, now))
        elif isinstance(event, TransactionTimeout):
            self.client.on_timeout(now)
            self._rearm()
        elif isinstance(event, TransportError):
            self.client.on_transport_error(now, "cannot reach the registrar")
            self._rearm()  # re-arms the back-off timer and logs the state change

    def _rearm(self) -> None:
        if self._timer:
            self._timer.cancel()
            self._timer = None
        at = self.client.get_timer()
        if at is not None:
            self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)
        self._report()

    def _on_timer(self) -> None:
        self._timer = None
        self._send(self.client.handle_timer(self.transport.now()))

    def _report(self) -> None:
        state = self.client.state
        if state is self._last_state:
            return
        self._last_state = state
        st = self.client.status()
        now = self.transport.now()
        fields = f"event=trunk_registration state={st.state} registrar={st.registrar}"
        fields += f" aor={st.aor}"
        if st.expires_at is not None:
            fields += f" expires_in={st.expires_at - now:.0f}"
        if st.last_failure:
            fields += f" failure={quote_value(st.last_failure)} failures={st.failures}"
        if st.next_attempt_at is not None and state is RegState.FAILED:
            fields += f" retry_in={st.next_attempt_at - now:.1f}"
        log.info(fields)
        if state is RegState.STOPPED:
            self._stopped.set()


class Service:
    """Everything ``sipdialer serve`` runs.

    ``sink`` takes every CDR (the notifier in production; a ``status()`` method on it
    feeds ``/healthz`` and ``/metrics``). ``serve_http=False`` leaves the HTTP API out
    (tests that drive the engine from Python).
    """

    def __init__(
        self, config: Config, sink: CdrSink | None = None, *, serve_http: bool = True
    ) -> None:
        self.config = config
        self.sink: CdrSink = sink if sink is not None else MemorySink()
        self.serve_http = serve_http
        self.counters = CallCounters(self.sink)
        self.rtp_totals = RtpTotals()
        self.http: ApiServer | None = None
        self.retention: RetentionSweeper | None = None
        sip = config.sip
        self.endpoint = SipEndpoint(
            host=sip.advertised_host,
            port=sip.listen[1],
            timers=TimerConfig(t1=sip.t1, t2=sip.t2, t4=sip.t4),
            user_agent=sip.user_agent,
        )
        self.ua = UserAgent()
        self.transport = SipTransport(self.endpoint, self.ua.handle_event, listen=sip.listen)
        self.ua.attach(self.transport)
        self.registration: TrunkRegistration | None = None
        self.dialer: Dialer | None = None
        self.registrar: RegistrarRuntime | None = None

    async def start(self) -> None:
        await self.transport.start()
        # the endpoint must advertise the port really bound (listen port 0 = any)
        self.endpoint.port = self.transport.port
        trunk = self.config.trunk
        if trunk.registrar is not None and trunk.register:
            self.registration = TrunkRegistration(self.config, self.ua, self.transport)
            self.registration.start()
        self.dialer = Dialer(
            self.config,
            self.ua,
            self.counters,
            sip_port=self.transport.port,
            ringback=load_ringback(),
        )
        if self.config.extensions:
            await self._start_registrar()
        rec = self.config.recording
        if rec.retention_days > 0:
            self.retention = RetentionSweeper(Path(rec.directory), rec.retention_days)
            self.retention.start()
        if self.serve_http:
            try:
                await self._start_http()
            except BaseException:
                await self.stop()
                raise

    async def _start_registrar(self) -> None:
        """The registrar for ``[extensions]`` phones; the dialer routes agents through it."""
        assert self.dialer is not None
        cfg = self.config.registrar
        registrar = Registrar(
            self.config.extensions,
            realm=cfg.realm,
            secret=secrets.token_bytes(32),
            algorithms=cfg.algorithms,
            min_expires=cfg.min_expires,
            max_expires=cfg.max_expires,
        )
        self.registrar = RegistrarRuntime(registrar, self.ua, store_path=Path(cfg.store))
        await self.registrar.start()
        self.dialer.registrar = registrar

    async def _start_http(self) -> None:
        assert self.dialer is not None
        http = self.config.http
        self.http = ApiServer(make_app(self.api_context()), *http.listen)
        await self.http.start()
        if not http.public_url:
            # the recording links in CDRs: the port really bound, a reachable host
            self.dialer.public_url = http.base_url(self.http.port, self.config.sip.public_host)

    def api_context(self) -> ApiContext:
        """What the HTTP API sees of this service (after :meth:`start`)."""
        assert self.dialer is not None
        return ApiContext(
            config=self.config,
            dialer=self.dialer,
            counters=self.counters,
            notifier=self.sink,
            registration=self._registration_status,
            rtp=self.rtp_totals,
            recordings_deleted=self._recordings_deleted,
            registrar=self.registrar.registrar if self.registrar is not None else None,
            now=self.transport.now,
        )

    def _registration_status(self) -> RegistrationStatus | None:
        if self.registration is None:
            return None
        return self.registration.client.status()

    def _recordings_deleted(self) -> int:
        return self.retention.deleted_total if self.retention is not None else 0

    @property
    def http_port(self) -> int | None:
        """The port the API really listens on (None before start or without HTTP)."""
        return self.http.port if self.http is not None else None

    async def stop(self) -> None:
        if self.http is not None:
            http, self.http = self.http, None
            try:
                await http.stop()
            except Exception:  # keep stopping the rest
                log.exception("event=http_stop_failed")
        if self.retention is not None:
            await self.retention.stop()
            self.retention = None
        if self.dialer is not None:
            await self.dialer.close()
        if self.registrar is not None:
            await self.registrar.stop()
            self.registrar = None
        if self.registration is not None:
            await self.registration.stop()
        await self.transport.close()
