"""The OpenAPI document's value patterns are the rules themselves: each call field's
``pattern`` is ``"^" + rule + "$"`` and judges every example of
``tests/fixtures/number_cases.py`` as :func:`validate_call_request` does."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sipdialer.api.openapi import document
from sipdialer.engine.directory import CALL_ID
from sipdialer.engine.request import (
    CALL_FIELDS,
    FIELD_PATTERNS,
    InvalidCallRequest,
    validate_call_request,
)
from sipdialer.rtp.recorder import RECORDING_REF
from tests.fixtures.api_service import VALID
from tests.fixtures.number_cases import CASES, case_id


def _field_patterns() -> dict[str, set[str]]:
    """Every pattern the document gives each call field, wherever it appears."""
    doc = document()
    found: dict[str, set[str]] = {name: set() for name in CALL_FIELDS}
    for name, body in doc["components"]["schemas"]["CallCreate"]["properties"].items():
        found[name].add(body["pattern"])
    for item in doc["paths"].values():
        params = list(item.get("parameters", []))  # the path's own, then each operation's
        for op in item.values():
            if isinstance(op, dict):
                params.extend(op.get("parameters", []))
        for param in params:
            if param.get("in") == "query" and param["name"] in found:
                found[param["name"]].add(param["schema"]["pattern"])
    return found


def ecma_search(pattern: str, value: str) -> bool:
    """``pattern`` as ECMA-262 (JSON Schema's dialect) applies it: without the ``m`` flag,
    ``^`` and ``$`` are the ends of the input, where Python's ``$`` also matches before a
    final newline; the patterns use nothing else that differs."""
    assert pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith("\\$")
    return re.search(r"\A" + pattern[1:-1] + r"\Z", value) is not None


@pytest.mark.parametrize("name", CALL_FIELDS)
def test_each_field_pattern_is_the_anchored_rule(name: str) -> None:
    patterns = _field_patterns()[name]
    assert patterns == {"^" + FIELD_PATTERNS[name] + "$"}


def _path_param_patterns(doc: dict[str, Any], path: str, name: str) -> set[str]:
    item = doc["paths"][path]
    params = list(item.get("parameters", []))
    for op in item.values():
        if isinstance(op, dict):
            params.extend(op.get("parameters", []))
    return {p["schema"]["pattern"] for p in params if p["in"] == "path" and p["name"] == name}


def test_ids_are_the_engine_patterns() -> None:
    doc = document()
    call_id = {"^" + CALL_ID.pattern + "$"}
    assert _path_param_patterns(doc, "/click2dial/calls/{id}", "id") == call_id
    recording = {"^" + RECORDING_REF.pattern + "$"}
    assert _path_param_patterns(doc, "/click2dial/recordings/{ref}", "ref") == recording


def _accepted(name: str, value: str) -> bool:
    given: dict[str, list[object]] = {k: [v] for k, v in VALID.items()}
    given[name] = [value]
    try:
        validate_call_request(given)
    except InvalidCallRequest as exc:
        assert list(exc.fields) == [name]
        return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_openapi_and_the_rules_agree(case: tuple[str, str, bool]) -> None:
    name, value, _ = case
    (pattern,) = _field_patterns()[name]
    by_rules = _accepted(name, value)
    if name == "call_ref" and value == "":
        assert by_rules  # "" means no call_ref; the pattern itself refuses it
        return
    assert ecma_search(pattern, value) == by_rules


def test_ecma_search_anchors_at_the_very_end() -> None:
    assert ecma_search("^[0-9]{3}$", "123")
    assert not ecma_search("^[0-9]{3}$", "123\n")  # Python's $ alone would take it
    assert re.search("^[0-9]{3}$", "123\n") is not None
