"""The running service: builds the SIP endpoint, transports, user agent, trunk
registration, call engine, HTTP API and recording retention from a :class:`Config`,
starts them, and stops them cleanly (HTTP first, then calls, then un-REGISTER).

At start-up, before the HTTP API listens, it ends the calls a crashed run left in the
journal of live calls (:mod:`sipdialer.engine.recovery`), then journals its own.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

from sipdialer.aio.registrar_runtime import RegistrarRuntime
from sipdialer.aio.registration_runtime import TrunkRegistration
from sipdialer.aio.resolver import SipResolver
from sipdialer.aio.transport import SipTransport, client_tls_context, server_tls_context
from sipdialer.aio.trunk_route import TrunkRoute
from sipdialer.aio.useragent import UserAgent
from sipdialer.api.app import ApiServer, make_app
from sipdialer.api.context import ApiContext
from sipdialer.api.counters import CallCounters, RtpTotals
from sipdialer.config import Config
from sipdialer.engine.cdr import CdrSink, MemorySink
from sipdialer.engine.dialer import Dialer
from sipdialer.engine.journal import CallJournal, journal_dir_for
from sipdialer.engine.recovery import CallRecovery
from sipdialer.notify.notifier import Notifier
from sipdialer.rtp.pool import MediaPool
from sipdialer.rtp.retention import RetentionSweeper
from sipdialer.rtp.ringback import load_ringback
from sipdialer.sip.endpoint import SipEndpoint
from sipdialer.sip.registrar import Registrar
from sipdialer.sip.registration import RegistrationStatus
from sipdialer.sip.timers import TimerConfig

log = logging.getLogger("sipdialer.registration")


class Service:
    """Everything ``sipdialer serve`` runs.

    ``sink`` takes every CDR (the notifier in production; a ``status()`` method on it
    feeds ``/healthz`` and ``/metrics``). ``serve_http=False`` leaves the HTTP API out
    (tests that drive the engine from Python).

    ``journal_dir`` is where live calls are journaled so that the next start can end
    them after a crash; by default, with a :class:`Notifier` as the sink, next to its
    outbox (:func:`journal_dir_for`), and none with any other sink (a CDR recovered into
    memory would die with the process anyway).
    """

    def __init__(
        self,
        config: Config,
        sink: CdrSink | None = None,
        *,
        serve_http: bool = True,
        journal_dir: Path | str | None = None,
    ) -> None:
        self.config = config
        self.sink: CdrSink = sink if sink is not None else MemorySink()
        self.serve_http = serve_http
        if journal_dir is None and isinstance(self.sink, Notifier):
            journal_dir = journal_dir_for(self.sink.outbox.directory)
        self.journal_dir = Path(journal_dir) if journal_dir is not None else None
        self.recovery: CallRecovery | None = None
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
        trunk = config.trunk
        self.transport = SipTransport(
            self.endpoint,
            self.ua.handle_event,
            listen=sip.listen,
            tls_listen=sip.tls_listen,
            server_tls=server_tls_context(sip.tls_cert, sip.tls_key) if sip.tls_listen else None,
            client_tls=client_tls_context(trunk.ca_file or None)
            if trunk.transport == "tls"
            else None,
            on_flow_lost=self._flow_lost,
        )
        self.ua.attach(self.transport)
        self.resolver = SipResolver(sip.nameservers)
        self.trunk_route: TrunkRoute | None = None
        if trunk.next_hop is not None:
            self.trunk_route = TrunkRoute(trunk, self.resolver, self.transport)
        self.registration: TrunkRegistration | None = None
        self._route_task: asyncio.Future[None] | None = None
        self.dialer: Dialer | None = None
        self.registrar: RegistrarRuntime | None = None
        self.media_pool: MediaPool | None = None

    async def start(self) -> None:
        await self.transport.start()
        # the endpoint must advertise the port really bound (listen port 0 = any)
        self.endpoint.port = self.transport.port
        trunk = self.config.trunk
        if self.trunk_route is not None and trunk.registrar is not None and trunk.register:
            self.registration = TrunkRegistration(
                self.config, self.ua, self.transport, self.trunk_route
            )
            self.registration.start()
        elif self.trunk_route is not None:
            # no REGISTER (a trunk that authenticates by IP): resolve in the background now
            # and again every minute (the resolver's cache keeps answers for their TTL)
            self._route_task = asyncio.ensure_future(self._keep_route_resolved(self.trunk_route))
        self.dialer = Dialer(
            self.config,
            self.ua,
            self.counters,
            sip_port=self.transport.port,
            ringback=load_ringback(),
        )
        self.dialer.trunk_route = self.trunk_route
        workers = self.config.media.workers
        if workers > 0:  # the relay in worker processes, before any call can start
            self.media_pool = MediaPool(
                workers, self.dialer.rtp_bind_host, self.config.sip.rtp_ports
            )
            await self.media_pool.start()
            self.dialer.media_pool = self.media_pool
        if self.journal_dir is not None:
            await self._recover_calls(self.journal_dir)
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

    async def _recover_calls(self, directory: Path) -> None:
        """End the calls a crashed run left in the journal (BYE/CANCEL, WAV, CDR), then
        journal this run's calls there. Before the API listens: no new call meanwhile."""
        assert self.dialer is not None
        journal = CallJournal(directory, background=True)
        route = self.trunk_route
        if journal.ids() and route is not None and route.proto == "TLS":
            # BYEs open new TLS connections: the trunk's name to verify its certificate
            await route.begin_round()
        trunk = self.config.trunk
        self.recovery = CallRecovery(
            journal,
            self.ua,
            self.counters,
            passwords={trunk.username: trunk.password} if trunk.username else {},
            timers=self.endpoint.timers,
        )
        await self.recovery.run()
        self.dialer.journal = journal

    @staticmethod
    async def _keep_route_resolved(route: TrunkRoute) -> None:
        while True:
            await route.begin_round()
            await asyncio.sleep(60)

    def _flow_lost(self, transport: str, addr: tuple[str, int]) -> None:
        if self.registration is not None:
            self.registration.flow_lost(transport, addr)

    async def _start_registrar(self) -> None:
        """The registrar for ``[extensions]`` phones; the dialer routes agents through it."""
        assert self.dialer is not None
        cfg = self.config.registrar
        registrar = Registrar(
            self.config.extensions,
            realm=cfg.realm,
            secret=secrets.token_bytes(32),
            algorithms=cfg.algorithms,
            extension_algorithms=self.config.extension_algorithms,
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
            calls=self.dialer.directory,
            counters=self.counters,
            notifier=self.sink,
            registration=self._registration_status,
            rtp=self.rtp_totals,
            recordings_deleted=self._recordings_deleted,
            registrar=self.registrar.registrar if self.registrar is not None else None,
            now=self.transport.now,
            media_workers=self._media_workers,
        )

    def _media_workers(self) -> tuple[int, int] | None:
        pool = self.media_pool
        if pool is None:
            return None
        alive = sum(1 for w in pool.info() if w["alive"])
        return alive, pool.restarts

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
            if self.dialer.journal is not None:  # what the writer thread holds, on disk
                await asyncio.to_thread(self.dialer.journal.close)
        if self.media_pool is not None:  # after the calls: their recordings are finished
            pool, self.media_pool = self.media_pool, None
            await pool.close()
        if self.recovery is not None:
            await self.recovery.close()
            self.recovery = None
        if self.registrar is not None:
            await self.registrar.stop()
            self.registrar = None
        if self.registration is not None:
            await self.registration.stop()
        if self._route_task is not None:
            self._route_task.cancel()
            self._route_task = None
        await self.transport.close()
