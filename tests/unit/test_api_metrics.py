"""What ``/metrics`` exposes, without a server: the call and RTP counters read through a
:class:`CallDirectory` of frozen views, the set-up time histogram fed by the CDRs, and one
registry per application (several in one process), in the Prometheus text format."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sipdialer.api.app import make_app
from sipdialer.api.context import ApiContext
from sipdialer.api.counters import SETUP_BUCKETS, CallCounters, RtpTotals
from sipdialer.api.metrics import CONTENT_TYPE, REGISTRY
from sipdialer.config import parse_config
from sipdialer.engine.causes import Ending, classify
from sipdialer.engine.cdr import CallRecord, Cdr, MemorySink, build_cdr
from sipdialer.engine.directory import CallView, LegRtp
from sipdialer.engine.request import CallRequest

T0 = 1_764_186_601.0


def view(call_id: str, *, ended: bool, agent_in: int, callee_in: int) -> CallView:
    return CallView(
        id=call_id,
        call_ref=None,
        agent="1000",
        callee="0820001234",
        outbound_id="0123456789",
        state="ended" if ended else "bridged",
        ended=ended,
        timeline=(),
        created_at=T0,
        agent_answered_at=None,
        bridged_at=None,
        ended_at=None,
        agent_sip_status=None,
        callee_sip_status=None,
        recording_ref=None,
        cdr=None,
        rtp=(
            LegRtp("agent", packets_in=agent_in, packets_out=1, packets_dropped=0, bytes_in=160),
            LegRtp("callee", packets_in=callee_in, packets_out=2, packets_dropped=3, bytes_in=0),
        ),
    )


class FakeDirectory:
    """A CallDirectory with calls the test moves about."""

    def __init__(self) -> None:
        self.live: dict[str, CallView] = {}
        self.done: dict[str, CallView] = {}

    def get(self, call_id: str) -> CallView | None:
        return self.live.get(call_id) or self.done.get(call_id)

    def active(self) -> Sequence[CallView]:
        return list(self.live.values())

    def recent(self) -> Sequence[CallView]:
        return list(self.done.values())

    def active_count(self) -> int:
        return len(self.live)

    async def originate(self, request: CallRequest) -> CallView:
        raise AssertionError("not placed here")

    def hangup(self, call_id: str) -> bool:
        return False


def test_rtp_totals_count_each_finished_call_once() -> None:
    calls = FakeDirectory()
    totals = RtpTotals()
    calls.live["a"] = view("a", ended=False, agent_in=10, callee_in=20)
    calls.done["b"] = view("b", ended=True, agent_in=100, callee_in=200)
    first = totals.totals(calls)
    assert first[("agent", "packets_in")] == 110 and first[("callee", "packets_in")] == 220
    assert first[("callee", "packets_dropped")] == 6 and first[("agent", "bytes_in")] == 320
    # "a" ends with more packets; "b" has dropped out of the recent list by now
    del calls.live["a"], calls.done["b"]
    calls.done["a"] = view("a", ended=True, agent_in=15, callee_in=25)
    totals.retire_ended(calls)
    totals.retire_ended(calls)  # a second pass folds nothing twice
    assert totals.totals(calls)[("agent", "packets_in")] == 115
    assert totals.totals(calls)[("callee", "packets_in")] == 225


def answered_cdr(setup: float) -> Cdr:
    record = CallRecord(
        id="c1",
        call_ref=None,
        agent="1000",
        callee="0820001234",
        outbound_id="0123456789",
        created_at=T0,
        bridged_at=T0 + setup,
        ended_at=T0 + setup + 30,
    )
    return build_cdr(
        record, classify(Ending(kind="bye", leg="callee", bridged=True)), public_url="http://x"
    )


def test_call_counters_observe_setup_time_of_bridged_calls() -> None:
    sink = MemorySink()
    counters = CallCounters(sink)
    answered = answered_cdr(9.12)
    counters.submit(answered)
    busy = build_cdr(
        CallRecord("c2", None, "1000", "0820001234", "0123456789", created_at=T0, ended_at=T0 + 4),
        classify(Ending(kind="rejected", leg="callee", status=486)),
        public_url="http://x",
    )
    counters.submit(busy)
    assert counters.by_disposition["ANSWERED"] == 1 and counters.by_disposition["BUSY"] == 1
    assert len(sink.cdrs) == 2
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in counters.setup_seconds.collect()
        for s in family.samples
    }
    assert samples[("sipdialer_call_setup_seconds_count", None)] == 1  # the busy call: none
    assert abs(samples[("sipdialer_call_setup_seconds_sum", None)] - 9.12) < 1e-6
    assert samples[("sipdialer_call_setup_seconds_bucket", "7.5")] == 0
    assert samples[("sipdialer_call_setup_seconds_bucket", "10.0")] == 1
    assert 10.0 in SETUP_BUCKETS


def context(calls: FakeDirectory, max_concurrent: int) -> ApiContext:
    config = parse_config(f"[calls]\nmax_concurrent = {max_concurrent}\n")
    return ApiContext(
        config=config, calls=calls, counters=CallCounters(MemorySink()), notifier=object(),
        registration=lambda: None,
    )  # fmt: skip


def scrape(ctx: ApiContext) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    app = make_app(ctx)
    text = generate_latest(app[REGISTRY]).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_each_application_has_its_own_registry() -> None:
    one, two = FakeDirectory(), FakeDirectory()
    one.live["a"] = view("a", ended=False, agent_in=7, callee_in=9)
    ctx_one, ctx_two = context(one, 5), context(two, 9)
    ctx_one.counters.submit(answered_cdr(2.0))
    first, second = scrape(ctx_one), scrape(ctx_two)
    assert first["sipdialer_calls_active"] == {(): 1} and second["sipdialer_calls_active"] == {
        (): 0
    }
    assert first["sipdialer_calls_max_concurrent"] == {(): 5}
    assert second["sipdialer_calls_max_concurrent"] == {(): 9}
    assert first["sipdialer_calls_total"][(("disposition", "ANSWERED"),)] == 1
    assert second["sipdialer_calls_total"][(("disposition", "ANSWERED"),)] == 0
    assert set(second["sipdialer_calls_total"]) == {
        (("disposition", d),) for d in ("ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION")
    }
    assert first["sipdialer_rtp_packets_received_total"] == {
        (("leg", "agent"),): 7,
        (("leg", "callee"),): 9,
    }
    assert first["sipdialer_call_setup_seconds_count"] == {(): 1}
    assert second["sipdialer_call_setup_seconds_count"] == {(): 0}
    assert first["sipdialer_recordings_deleted_total"] == {(): 0}
    assert first["process_resident_memory_bytes"][()] > 0
    assert "sipdialer_trunk_registered" not in first  # registration() gives None
    assert "sipdialer_redis_up" not in first  # a notifier without status()
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_views_are_frozen() -> None:
    v = view("a", ended=False, agent_in=1, callee_in=1)
    with pytest.raises(FrozenInstanceError):
        v.state = "ended"  # type: ignore[misc]  # the point: a view cannot be changed
    with pytest.raises(FrozenInstanceError):
        v.rtp[0].packets_in = 2  # type: ignore[misc]  # nor its counters


def test_the_api_sees_the_calls_only_through_the_directory() -> None:
    api = Path(__file__).resolve().parents[2] / "sipdialer" / "api"
    for path in sorted(api.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "sipdialer.engine.dialer", path.name
                names = {alias.name for alias in node.names}
                assert not names & {"Dialer", "CallRunner", "dialer"}, path.name
            elif isinstance(node, ast.Import):
                assert all(a.name != "sipdialer.engine.dialer" for a in node.names), path.name
            elif isinstance(node, ast.Attribute):
                assert node.attr not in ("dialer", "runner"), f"{path.name}:{node.lineno}"
