"""``GET /metrics``: the service's numbers in the Prometheus text format (0.0.4), through
``prometheus-client``.

Each application gets its own :class:`~prometheus_client.CollectorRegistry`
(:data:`REGISTRY`; several apps may run in one process, e.g. in tests) holding: the
:class:`ServiceCollector`, which reads the service's state at each scrape; the histogram
of API request latency (:data:`HTTP_SECONDS`, observed by ``app.py``'s middleware); and
the process collector.

Families (all prefixed ``sipdialer_`` but the process ones):

======================================  =========  ========================================
calls_total{disposition}                counter    finished calls by disposition
calls_active                            gauge      calls not yet released
calls_max_concurrent                    gauge      ``[calls] max_concurrent``
trunk_registered                        gauge      1 registered, 0 not (only when registering)
rtp_packets_received_total{leg}         counter    relay counters, agent / callee leg,
rtp_packets_sent_total{leg}             counter    summed over every call since start
rtp_packets_dropped_total{leg}          counter
rtp_bytes_received_total{leg}           counter
rtp_packets_foreign_total{leg}          counter    of the dropped, those the latch refused
redis_up                                gauge      the notifier's ``redis_ok`` (when it reports)
notify_outbox_depth                     gauge      notifications waiting on disk
notify_pushed_total                     counter    notifications Redis has taken
recordings_deleted_total                counter    recordings removed by retention
recording_write_failures_total          counter    failed recording writes (disk full, I/O)
recordings_partial_total                counter    recordings cut short by a write failure
media_workers                           gauge      media worker processes alive (with workers)
media_worker_restarts_total             counter    media workers started again after a death
call_setup_seconds                      histogram  originate → bridged, bridged calls only
http_request_duration_seconds           histogram  API requests by ``route`` (its name in
  {route,status_class}                             the router, ``unmatched`` for none) and
                                                   ``status_class`` (``2xx``, ``4xx``, …)
process_*                               (process)  RSS, CPU seconds, open fds, start time
======================================  =========  ========================================
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sipdialer.api.context import CONTEXT, ApiContext
from sipdialer.api.health import notifier_status
from sipdialer.rtp.recorder import recordings_disk
from sipdialer.sip.registration import RegState

__all__ = ["CONTENT_TYPE", "HTTP_SECONDS", "REGISTRY", "ServiceCollector", "metrics", "setup"]

#: The text format Prometheus scrapes (0.0.4; prometheus-client's "latest" is 1.0.0).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
HTTP_SECONDS = web.AppKey("http_request_seconds", Histogram)

_RTP_FAMILIES = {
    "packets_in": ("sipdialer_rtp_packets_received_total", "RTP packets received, by leg."),
    "packets_out": ("sipdialer_rtp_packets_sent_total", "RTP packets sent, by leg."),
    "packets_dropped": (
        "sipdialer_rtp_packets_dropped_total",
        "RTP packets dropped (malformed, foreign source, unknown payload type, "
        "nowhere to send), by the leg they arrived on or were meant for.",
    ),
    "bytes_in": ("sipdialer_rtp_bytes_received_total", "RTP bytes received, by leg."),
    "packets_foreign": (
        "sipdialer_rtp_packets_foreign_total",
        "RTP packets dropped as from a foreign source (not the latched one), by leg.",
    ),
}


def _number(value: object) -> float | None:
    """A numeric status value (booleans are not numbers here), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


class ServiceCollector(Collector):
    """The service's families, read from ``ctx`` at each scrape."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        calls = CounterMetricFamily(
            "sipdialer_calls_total", "Finished calls by disposition.", labels=["disposition"]
        )
        for disposition, count in sorted(ctx.counters.by_disposition.items()):
            calls.add_metric([disposition], count)
        yield calls
        yield GaugeMetricFamily(
            "sipdialer_calls_active", "Calls not yet released.", value=ctx.calls.active_count()
        )
        yield GaugeMetricFamily(
            "sipdialer_calls_max_concurrent",
            "Active calls allowed ([calls]).",
            value=ctx.config.calls.max_concurrent,
        )
        st = ctx.registration()
        if st is not None:
            yield GaugeMetricFamily(
                "sipdialer_trunk_registered",
                "1 when registered with the trunk.",
                value=1 if st.state == RegState.REGISTERED else 0,
            )
        yield from self._rtp()
        yield from self._notifier()
        yield CounterMetricFamily(
            "sipdialer_recordings_deleted_total",
            "Recordings deleted by retention.",
            value=ctx.recordings_deleted(),
        )
        yield from ctx.counters.setup_seconds.collect()
        disk = recordings_disk(ctx.config.recording.directory)
        yield CounterMetricFamily(
            "sipdialer_recording_write_failures_total",
            "Recording writes (or creations) that failed: disk full, I/O errors, stalls.",
            value=disk.failures,
        )
        yield CounterMetricFamily(
            "sipdialer_recordings_partial_total",
            "Recordings cut short (or never made) by a write failure.",
            value=disk.partial_recordings,
        )
        workers = ctx.media_workers()
        if workers is not None:
            alive, restarts = workers
            yield GaugeMetricFamily(
                "sipdialer_media_workers", "Media worker processes alive.", value=alive
            )
            yield CounterMetricFamily(
                "sipdialer_media_worker_restarts_total",
                "Media worker processes started again after one died.",
                value=restarts,
            )

    def _rtp(self) -> Iterator[Metric]:
        families = {
            field: CounterMetricFamily(name, text, labels=["leg"])
            for field, (name, text) in _RTP_FAMILIES.items()
        }
        for (leg, field), value in sorted(self.ctx.rtp.totals(self.ctx.calls).items()):
            families[field].add_metric([leg], value)
        yield from families.values()

    def _notifier(self) -> Iterator[Metric]:
        status = notifier_status(self.ctx.notifier)
        if status is None:
            return
        ok = status.get("redis_ok")
        if isinstance(ok, bool):
            yield GaugeMetricFamily(
                "sipdialer_redis_up", "1 when the notifier reaches Redis.", value=1 if ok else 0
            )
        depth = _number(status.get("outbox_depth"))
        if depth is not None:
            yield GaugeMetricFamily(
                "sipdialer_notify_outbox_depth",
                "Notifications waiting in the disk outbox.",
                value=depth,
            )
        pushed = _number(status.get("pushed_total"))
        if pushed is not None:
            yield CounterMetricFamily(
                "sipdialer_notify_pushed_total", "Notifications pushed to Redis.", value=pushed
            )


def setup(app: web.Application) -> None:
    """The application's registry: the service's families, request latency, the process."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(app[CONTEXT]))
    app[HTTP_SECONDS] = Histogram(
        "sipdialer_http_request_duration_seconds",
        "Seconds to answer an API request, by route name and status class.",
        labelnames=("route", "status_class"),
        registry=registry,
    )
    ProcessCollector(registry=registry)
    app[REGISTRY] = registry


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
