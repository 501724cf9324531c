"""The call-request rules (SPEC §2) applied directly, row by row, without HTTP."""

from __future__ import annotations

import pytest

from sipdialer.engine.validation import (
    CONFLICT,
    NOT_A_STRING,
    REQUIRED,
    CallParams,
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
    assert validate_call_request({**base, "unknown": ["x"]}) == CallParams(**VALID)
    with pytest.raises(InvalidCallRequest) as info:
        validate_call_request({**base, "outbound_id": [None]})
    assert info.value.fields == {"outbound_id": REQUIRED}
