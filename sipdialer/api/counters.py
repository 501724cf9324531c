"""The service's call and media counters, kept between scrapes of ``GET /metrics``.

Owns :class:`CallCounters` — a :class:`~sipdialer.engine.cdr.CdrSink` placed in front of
the real sink that counts finished calls by disposition and observes each bridged call's
set-up time (originate → bridged, from the CDR's timestamps) before passing each CDR on —
and :class:`RtpTotals` — packet counters of the media relay summed over every call, live
and finished, read from the :class:`~sipdialer.engine.directory.CallDirectory`'s views.
``sipdialer.api.metrics`` turns them into Prometheus families. No I/O.

Packet *loss* is not exported: the relay forwards packets without tracking RTP sequence
numbers, so what it can count is received, sent and dropped (malformed, from a foreign
source, of an unknown payload type, or with nowhere to go), and of the dropped ones those
from a foreign source (the latch refused them: RTP sprayed at the relay's ports).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from prometheus_client import Histogram

from sipdialer.engine.cdr import Cdr, CdrSink
from sipdialer.engine.directory import CallDirectory, LegRtp

__all__ = ["DISPOSITIONS", "RTP_FIELDS", "SETUP_BUCKETS", "CallCounters", "RtpTotals"]

DISPOSITIONS = ("ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION")

#: Seconds from originate to bridged: the agent's ring time plus the callee's.
SETUP_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)


class CallCounters:
    """Counts CDRs by disposition and observes set-up times, then hands each CDR to
    ``inner`` (which may raise: the call engine guards its sink).

    :attr:`setup_seconds` is registered with no registry: each API application's
    collector exposes it (several applications may share one service's counters)."""

    def __init__(self, inner: CdrSink) -> None:
        self.inner = inner
        self.by_disposition: Counter[str] = Counter({d: 0 for d in DISPOSITIONS})
        self.setup_seconds = Histogram(
            "sipdialer_call_setup_seconds",
            "Seconds from placing a call to both parties connected, for bridged calls.",
            buckets=SETUP_BUCKETS,
            registry=None,
        )

    def submit(self, cdr: Cdr, on_durable: Callable[[], None] | None = None) -> None:
        self.by_disposition[cdr.outcome.disposition] += 1
        record = cdr.record
        if record.bridged_at is not None:
            self.setup_seconds.observe(max(record.bridged_at - record.created_at, 0.0))
        self.inner.submit(cdr, on_durable)


#: The relay counters of one leg that are summed, by name.
RTP_FIELDS = ("packets_in", "packets_out", "packets_dropped", "bytes_in", "packets_foreign")
_LEGS = ("agent", "callee")


def _counts(leg: LegRtp) -> dict[str, int]:
    return {
        "packets_in": leg.packets_in,
        "packets_out": leg.packets_out,
        "packets_dropped": leg.packets_dropped,
        "bytes_in": leg.bytes_in,
        "packets_foreign": leg.packets_foreign,
    }


class RtpTotals:
    """Relay counters summed over all calls: finished calls are folded into ``retired``
    once (by id) while the directory still lists them as recent, live ones are added on
    read."""

    def __init__(self) -> None:
        self.retired: dict[tuple[str, str], int] = {
            (leg, f): 0 for leg in _LEGS for f in RTP_FIELDS
        }
        self._seen: set[str] = set()

    def retire_ended(self, calls: CallDirectory) -> None:
        """Fold every finished call's final counters in (call it at least every few seconds:
        the directory keeps only the latest finished calls)."""
        recent = calls.recent()
        for view in recent:
            if view.id in self._seen:
                continue
            self._seen.add(view.id)
            for leg in view.rtp:
                for name, count in _counts(leg).items():
                    key = (leg.leg, name)
                    self.retired[key] = self.retired.get(key, 0) + count
        self._seen &= {view.id for view in recent}

    def totals(self, calls: CallDirectory) -> dict[tuple[str, str], int]:
        """``{(leg, field): count}`` over finished and live calls."""
        self.retire_ended(calls)
        out = dict(self.retired)
        for view in calls.active():
            for leg in view.rtp:
                for name, count in _counts(leg).items():
                    key = (leg.leg, name)
                    out[key] = out.get(key, 0) + count
        return out
