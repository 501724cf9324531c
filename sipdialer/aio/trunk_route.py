"""Where requests to the trunk go: the configured next hop (outbound proxy, else the
registrar) resolved per RFC 3263 into an ordered list of targets, and which of them works.

The registration finds a working target (it fails over on a transaction timeout, an
ICMP refusal or a failed TCP/TLS connect) and calls :meth:`TrunkRoute.confirm`; calls
then go to :attr:`TrunkRoute.current` until it fails. Targets are re-resolved when the
resolver's cached answer (kept for its DNS TTL) has expired and a new round starts, and
a target that is still listed stays the current one. Only the next hop is resolved: the
Request-URI, To and From keep the configured domain. With an outbound proxy every request
carries a ``Route`` to it (RFC 3261 §8.1.2, loose routing).
"""

from __future__ import annotations

import logging

from sipdialer.aio.resolver import ResolveError, SipResolver, Target
from sipdialer.aio.transport import SipTransport
from sipdialer.config import TrunkConfig

log = logging.getLogger("sipdialer.trunk")


class TrunkRoute:
    """The trunk's resolved targets, the one that works now, and the failover order."""

    def __init__(self, trunk: TrunkConfig, resolver: SipResolver, transport: SipTransport) -> None:
        hop = trunk.next_hop
        if hop is None:
            raise ValueError("no [trunk] registrar or outbound_proxy configured")
        self.host, self.port = hop
        self.proto = trunk.transport.upper()
        self.resolver = resolver
        self.transport = transport
        self.targets: list[Target] = []
        self.current: Target | None = None
        self._tried: set[Target] = set()
        self.route_header: str | None = None
        if trunk.outbound_proxy is not None:
            host = f"[{self.host}]" if ":" in self.host else self.host
            port = "" if self.port is None else f":{self.port}"
            tp = "" if self.proto == "UDP" else f";transport={self.proto.lower()}"
            scheme = "sips" if self.proto == "TLS" else "sip"
            self.route_header = f"<{scheme}:{host}{port}{tp};lr>"

    @property
    def label(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.host}{port}/{self.proto.lower()}"

    async def begin_round(self) -> Target | None:
        """Start a round of attempts: (re-)resolve, keep the current target when it is still
        listed, else take the first. None (and a log line) when nothing resolves."""
        try:
            targets = await self.resolver.resolve(self.host, self.port, self.proto)
        except ResolveError as exc:
            log.warning("event=trunk_resolve_failed next_hop=%s error=%s", self.label, exc)
            self.targets = []
            self.current = None
            return None
        if targets != self.targets:
            log.info(
                "event=trunk_resolved next_hop=%s targets=%s",
                self.label,
                ",".join(f"{t.host}:{t.port}/{t.transport.lower()}" for t in targets),
            )
        self.targets = targets
        self._tried.clear()
        if self.current not in targets:
            self.current = targets[0] if targets else None
        if self.current is not None:
            self._use(self.current)
        return self.current

    def fail_over(self, failed: Target | None) -> Target | None:
        """``failed`` did not answer: the next untried target of this round, or None."""
        if failed is not None:
            self._tried.add(failed)
            log.info(
                "event=trunk_target_failed target=%s:%d/%s",
                failed.host,
                failed.port,
                failed.transport.lower(),
            )
        for target in self.targets:
            if target not in self._tried:
                self.current = target
                self._use(target)
                return target
        return None

    def confirm(self, target: Target) -> None:
        """``target`` answered: requests to the trunk go there until it fails."""
        if self.current != target:
            self.current = target
        self._tried.clear()

    def _use(self, target: Target) -> None:
        if target.transport == "TLS":
            self.transport.set_server_name((target.host, target.port), target.name)
