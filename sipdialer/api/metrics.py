"""``GET /metrics``: the service's numbers in the Prometheus text format (0.0.4).

Families (all prefixed ``sipdialer_``):

==================================  =======  ==============================================
calls_total{disposition}            counter  finished calls by disposition (since start)
calls_active                        gauge    calls not yet released
calls_max_concurrent                gauge    ``[calls] max_concurrent``
trunk_registered                    gauge    1 registered, 0 not (only when registering)
rtp_packets_received_total{leg}     counter  relay counters, agent / callee leg, summed
rtp_packets_sent_total{leg}         counter  over every call since start
rtp_packets_dropped_total{leg}      counter
rtp_bytes_received_total{leg}       counter
redis_up                            gauge    the notifier's ``redis_ok`` (when it reports)
notify_outbox_depth                 gauge    notifications waiting on disk
notify_pushed_total                 counter  notifications Redis has taken
recordings_deleted_total            counter  recordings removed by retention
==================================  =======  ==============================================
"""

from __future__ import annotations

from aiohttp import web

from sipdialer.api.context import CONTEXT, ApiContext
from sipdialer.api.counters import Metric, render, rtp_metrics
from sipdialer.api.health import notifier_status
from sipdialer.sip.registration import RegState

__all__ = ["collect", "metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def collect(ctx: ApiContext) -> list[Metric]:
    """Every metric family, read now."""
    dialer = ctx.dialer
    calls = Metric("sipdialer_calls_total", "counter", "Finished calls by disposition.")
    for disposition, count in sorted(ctx.counters.by_disposition.items()):
        calls.add(count, disposition=disposition)
    out = [
        calls,
        Metric("sipdialer_calls_active", "gauge", "Calls not yet released.").add(
            len(dialer.active)
        ),
        Metric("sipdialer_calls_max_concurrent", "gauge", "Active calls allowed ([calls]).").add(
            ctx.config.calls.max_concurrent
        ),
    ]
    st = ctx.registration()
    if st is not None:
        out.append(
            Metric("sipdialer_trunk_registered", "gauge", "1 when registered with the trunk.").add(
                1 if st.state == RegState.REGISTERED else 0
            )
        )
    out.extend(rtp_metrics(ctx.rtp.totals(dialer)))
    notifier = notifier_status(ctx.notifier)
    if notifier is not None:
        ok = notifier.get("redis_ok")
        if isinstance(ok, bool):
            out.append(
                Metric("sipdialer_redis_up", "gauge", "1 when the notifier reaches Redis.").add(
                    1 if ok else 0
                )
            )
        depth = notifier.get("outbox_depth")
        if isinstance(depth, (int, float)) and not isinstance(depth, bool):
            out.append(
                Metric(
                    "sipdialer_notify_outbox_depth",
                    "gauge",
                    "Notifications waiting in the disk outbox.",
                ).add(depth)
            )
        pushed = notifier.get("pushed_total")
        if isinstance(pushed, (int, float)) and not isinstance(pushed, bool):
            out.append(
                Metric(
                    "sipdialer_notify_pushed_total", "counter", "Notifications pushed to Redis."
                ).add(pushed)
            )
    out.append(
        Metric(
            "sipdialer_recordings_deleted_total", "counter", "Recordings deleted by retention."
        ).add(ctx.recordings_deleted())
    )
    return out


async def metrics(request: web.Request) -> web.Response:
    body = render(collect(request.app[CONTEXT])).encode("utf-8")
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
