"""The asyncio side of the trunk registration: carries the pure
:class:`~sipdialer.sip.registration.RegistrationClient`'s requests through the user agent,
feeds it responses, timeouts and transport errors, arms its one timer and logs each state
change once.
"""

from __future__ import annotations

import asyncio
import logging

from sipdialer.aio.transport import SipTransport
from sipdialer.aio.useragent import UserAgent
from sipdialer.config import Config
from sipdialer.logs import quote_value
from sipdialer.sip.events import Event, ResponseReceived, TransactionTimeout, TransportError
from sipdialer.sip.message import Request
from sipdialer.sip.registration import RegistrationClient, RegState

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
