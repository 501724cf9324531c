"""The service's counters and their Prometheus text exposition (format 0.0.4).

Owns :class:`CallCounters` — a :class:`~sipdialer.cdr.CdrSink` placed in front of the real
sink that counts finished calls by disposition before passing each CDR on —,
:class:`RtpTotals` — packet counters of the media relay summed over every call, live and
finished — and :func:`render`, which turns :class:`Metric` families into the text
``GET /metrics`` serves. Pure apart from reading the relay's counters: no I/O.

Packet *loss* is not exported: the relay forwards packets without tracking RTP sequence
numbers, so what it can count is received, sent and dropped (malformed, from a foreign
source, of an unknown payload type, or with nowhere to go).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sipdialer.engine.cdr import Cdr, CdrSink

if TYPE_CHECKING:
    from sipdialer.engine.dialer import Dialer
    from sipdialer.rtp.relay import MediaLeg

__all__ = ["DISPOSITIONS", "CallCounters", "Metric", "RtpTotals", "render"]

DISPOSITIONS = ("ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION")


class CallCounters:
    """Counts CDRs by disposition, then hands each to ``inner`` (which may raise: the call
    engine guards its sink)."""

    def __init__(self, inner: CdrSink) -> None:
        self.inner = inner
        self.by_disposition: Counter[str] = Counter({d: 0 for d in DISPOSITIONS})

    def submit(self, cdr: Cdr) -> None:
        self.by_disposition[cdr.outcome.disposition] += 1
        self.inner.submit(cdr)


_RTP_FIELDS = ("packets_in", "packets_out", "packets_dropped", "bytes_in")
_LEGS = {"A": "agent", "B": "callee"}


class RtpTotals:
    """Relay counters summed over all calls: finished calls are folded into ``retired``
    once (by id) while the dialer still lists them as recent, live ones are added on read."""

    def __init__(self) -> None:
        self.retired: dict[tuple[str, str], int] = {
            (leg, f): 0 for leg in _LEGS.values() for f in _RTP_FIELDS
        }
        self._seen: set[str] = set()

    @staticmethod
    def _legs(runner: object) -> list[MediaLeg]:
        bridge = getattr(runner, "bridge", None)
        if bridge is None:
            return []
        return [bridge.a, bridge.b]

    def retire_ended(self, dialer: Dialer) -> None:
        """Fold every finished call's final counters in (call it at least every few seconds:
        the dialer keeps only the latest 1000 finished calls)."""
        recent = dialer.recent
        for call_id, runner in list(recent.items()):
            if call_id in self._seen:
                continue
            self._seen.add(call_id)
            for leg in self._legs(runner):
                name = _LEGS.get(leg.name, leg.name)
                for f in _RTP_FIELDS:
                    self.retired[(name, f)] = self.retired.get((name, f), 0) + getattr(leg, f)
        self._seen &= set(recent)

    def totals(self, dialer: Dialer) -> dict[tuple[str, str], int]:
        """``{(leg, field): count}`` over finished and live calls."""
        self.retire_ended(dialer)
        out = dict(self.retired)
        for runner in list(dialer.active.values()):
            for leg in self._legs(runner):
                name = _LEGS.get(leg.name, leg.name)
                for f in _RTP_FIELDS:
                    out[(name, f)] = out.get((name, f), 0) + getattr(leg, f)
        return out


@dataclass
class Metric:
    """One metric family: ``samples`` maps a label set (tuple of pairs) to a value."""

    name: str
    kind: str  # counter | gauge
    help: str
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    def add(self, value: float, **labels: str) -> Metric:
        self.samples[tuple(sorted(labels.items()))] = value
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return f"{{{inner}}}" if inner else ""


def render(metrics: Iterable[Metric]) -> str:
    """The Prometheus text format: HELP, TYPE, then one ``name{labels} value`` per sample."""
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {m.help.replace(chr(92), chr(92) * 2)}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples.items():
            lines.append(f"{m.name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def rtp_metrics(totals: Mapping[tuple[str, str], int]) -> list[Metric]:
    """The relay's counter families from :meth:`RtpTotals.totals`."""
    families = {
        "packets_in": Metric(
            "sipdialer_rtp_packets_received_total", "counter", "RTP packets received, by leg."
        ),
        "packets_out": Metric(
            "sipdialer_rtp_packets_sent_total", "counter", "RTP packets sent, by leg."
        ),
        "packets_dropped": Metric(
            "sipdialer_rtp_packets_dropped_total",
            "counter",
            "RTP packets dropped (malformed, foreign source, unknown payload type, "
            "nowhere to send), by the leg they arrived on or were meant for.",
        ),
        "bytes_in": Metric(
            "sipdialer_rtp_bytes_received_total", "counter", "RTP bytes received, by leg."
        ),
    }
    for (leg, f), value in sorted(totals.items()):
        families[f].add(value, leg=leg)
    return list(families.values())
