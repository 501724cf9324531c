"""The notifier without Redis: its status before start, and the CDR schema against the payload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sipdialer.config import RedisConfig
from sipdialer.engine.causes import END_REASONS, Ending, classify
from sipdialer.engine.cdr import CallRecord, Cdr, build_cdr
from sipdialer.notify.notifier import Notifier

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


CDR_SCHEMA = json.loads((SCHEMAS / "cdr.schema.json").read_text())


C2D_SCHEMA = json.loads((SCHEMAS / "c2d.schema.json").read_text())


T0 = 1_764_186_601.123


def validate(document: Any, schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(document)


def make_cdr(n: int, *, bridged: bool = True) -> Cdr:
    t = T0 + n * 100
    record = CallRecord(
        id=f"call-{n:03d}",
        call_ref=f"r{n}",
        agent="1000",
        callee="0820001234",
        outbound_id="0123456789",
        created_at=t,
        agent_dialed_at=t + 0.01,
        agent_answered_at=t + 1.0,
        agent_status=200,
        callee_dialed_at=t + 1.1,
        callee_ringing_at=t + 1.5,
        callee_answered_at=t + 3.0 if bridged else None,
        callee_status=200 if bridged else 486,
        bridged_at=t + 3.01 if bridged else None,
        ended_at=t + 20.0,
        recording_ref=f"Rec{n:03d}abcdefghijklmnopq" if bridged else None,
        sip_call_ids={"agent": f"a{n}@127.0.0.1", "callee": f"b{n}@127.0.0.1"},
    )
    ending = (
        Ending(kind="bye", leg="callee", bridged=True)
        if bridged
        else Ending(kind="rejected", leg="callee", status=486)
    )
    return build_cdr(record, classify(ending), public_url="https://dialer.example.com")


async def test_status_keys_before_start(tmp_path: Path) -> None:
    notifier = Notifier(RedisConfig(url="redis://127.0.0.1:1/0"), tmp_path / "outbox")
    status = notifier.status()
    assert {"redis_ok", "outbox_depth", "last_error", "pushed_total", "last_push_at"} <= set(status)
    assert status["redis_ok"] is False and status["outbox_depth"] == 0
    assert status["last_push_at"] is None and status["running"] is False
    await notifier.stop()  # stopping what never started is harmless


def test_schema_payload_fields_are_exactly_the_cdr_payload() -> None:
    payload = make_cdr(1).cdr_payload()
    schema = CDR_SCHEMA["$defs"]["payload"]
    assert set(schema["properties"]) == set(payload)
    assert set(schema["required"]) == set(payload)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["end_reason"]["enum"] == list(END_REASONS)
    legacy = C2D_SCHEMA["properties"]["notifications"]["items"]
    assert set(legacy["required"]) == set(make_cdr(1).c2d_document()["notifications"][0])
    # a new field is a schema change
    with pytest.raises(jsonschema.ValidationError):
        validate({"type": "cdr", "payload": {**payload, "surprise": 1}}, CDR_SCHEMA)
