"""The notifier without Redis: its status before start, and the CDR schema against the payload."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from sipdialer.config import RedisConfig
from sipdialer.engine.causes import END_REASONS
from sipdialer.notify.notifier import Notifier
from tests.fixtures.cdr_samples import C2D_SCHEMA, CDR_SCHEMA, make_cdr, validate


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
