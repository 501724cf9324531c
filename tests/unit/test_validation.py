"""The call-request rules (SPEC §2) applied directly, row by row, without HTTP."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest

from sipdialer.engine.request import (
    CONFLICT,
    FIELD_RULES,
    NOT_A_STRING,
    REQUIRED,
    CallRequest,
    InvalidCallRequest,
    validate_call_request,
)
from tests.fixtures.api_service import VALID
from tests.fixtures.number_cases import (
    CASES,
    case_id,
)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_rules(case: tuple[str, str, bool]) -> None:
    name, value, ok = case
    given = {k: [v] for k, v in VALID.items()}
    given[name] = [value]
    if ok or (name == "call_ref" and value == ""):
        params = validate_call_request(given)
        assert getattr(params, name) == value
    else:
        with pytest.raises(InvalidCallRequest) as info:
            validate_call_request(given)
        assert list(info.value.fields) == [name]


def test_rules_every_bad_field_named_and_missing() -> None:
    with pytest.raises(InvalidCallRequest) as info:
        validate_call_request({"agent": ["10"], "call_ref": ["a b"]})
    assert set(info.value.fields) == {"agent", "callee", "outbound_id", "call_ref"}
    assert info.value.fields["callee"] == REQUIRED
    assert info.value.fields["outbound_id"] == REQUIRED


def test_rules_duplicates_types_and_empty_call_ref() -> None:
    base = {k: [v] for k, v in VALID.items()}
    assert validate_call_request({**base, "agent": ["1000", "1000"]}).agent == "1000"
    with pytest.raises(InvalidCallRequest) as info:
        validate_call_request({**base, "agent": ["1000", "1001"]})
    assert info.value.fields == {"agent": CONFLICT}
    with pytest.raises(InvalidCallRequest) as info:
        validate_call_request({**base, "callee": [820001234]})
    assert info.value.fields == {"callee": NOT_A_STRING}
    assert validate_call_request({**base, "call_ref": [""]}).call_ref is None
    assert validate_call_request({**base, "call_ref": [None]}).call_ref is None
    assert validate_call_request({**base, "unknown": ["x"]}) == CallRequest(**VALID)
    with pytest.raises(InvalidCallRequest) as info:
        validate_call_request({**base, "outbound_id": [None]})
    assert info.value.fields == {"outbound_id": REQUIRED}


def test_call_request_holds_only_valid_values() -> None:
    request = CallRequest(**VALID, call_ref="AbC123")
    assert (request.agent, request.call_ref) == ("1000", "AbC123")
    with pytest.raises(FrozenInstanceError):
        request.agent = "1001"  # type: ignore[misc]  # the point: it is frozen
    # built directly (as the engine's own callers do), it applies the same rules
    with pytest.raises(InvalidCallRequest) as info:
        CallRequest(agent="10", callee="0820001234\n", outbound_id="0123456789", call_ref="a b")
    assert info.value.fields == {
        "agent": FIELD_RULES["agent"],
        "callee": FIELD_RULES["callee"],
        "call_ref": FIELD_RULES["call_ref"],
    }
    with pytest.raises(InvalidCallRequest) as info:
        CallRequest(agent="1000", callee="+27123456789", outbound_id="0012345678901")
    assert set(info.value.fields) == {"callee", "outbound_id"}
    assert isinstance(info.value, ValueError)  # what the dialer's own check raised before


def test_rule_texts_are_the_errors() -> None:
    given = {k: [v] for k, v in VALID.items()}
    for name in FIELD_RULES:
        with pytest.raises(InvalidCallRequest) as info:
            validate_call_request({**given, name: ["x y"]})
        assert info.value.fields == {name: FIELD_RULES[name]}
