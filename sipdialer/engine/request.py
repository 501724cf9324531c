"""The one call request (SPEC §2) and its rules: what ``agent``, ``callee``,
``outbound_id`` and ``call_ref`` may be, the error text for each broken rule, and the
frozen :class:`CallRequest` that the API builds and the dialer consumes.

Every rule is one regular expression, :data:`FIELD_PATTERNS`, written once here: the
checks below compile it, and the OpenAPI document (``sipdialer.api.openapi``) publishes it
as ``"^" + pattern + "$"``. A :class:`CallRequest` checks its fields against the same
rules when it is built, so one that exists is valid, wherever it came from.

:func:`validate_call_request` gets every value given for each field (from whichever
sources the HTTP layer read: query string, JSON, form) and returns a :class:`CallRequest`
or raises :class:`InvalidCallRequest` naming *every* bad field. Nothing else in the
service decides whether a number is acceptable, and nothing a client sends reaches SIP or
a file name without passing here.

Every pattern is ASCII-only (``[0-9]``, never ``\\d``, which also matches e.g.
Arabic-Indic or full-width digits) and applied with :func:`re.fullmatch` (``$`` would
accept a trailing newline). Values are never trimmed: `` 1000`` is refused, not repaired.

Decisions (also in the README):

* A field given more than once (twice in the query string, in the query string *and* the
  body, or a JSON object with a repeated key) is accepted when every value is the same and
  refused otherwise.
* Fields other than the four are ignored (integrations often add their own parameters).
* ``call_ref`` is optional; an empty string (``call_ref=`` in a query string) or JSON
  ``null`` means "none". JSON ``null`` for another field means "missing".
* JSON values must be strings: ``"agent": 1000`` is refused ("must be a string"), as a
  number would lose a leading zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sipdialer.engine.errors import EngineError

__all__ = [
    "CALL_FIELDS",
    "CALL_REF",
    "CONFLICT",
    "FIELD_PATTERNS",
    "FIELD_RULES",
    "NOT_A_STRING",
    "REQUIRED",
    "CallRequest",
    "InvalidCallRequest",
    "field_error",
    "validate_call_request",
]

# ---- the number forms (SPEC §2) -------------------------------------------------------------

NATIONAL = "0[1-9][0-9]{8}"  # 10 digits, 0 then not 0
COUNTRY = "27[0-9]{9}"  # 11 digits, South Africa without the +
INTERNATIONAL = "00[0-9]{11,14}"  # 13-16 digits
EXTENSION = "[0-9]{3,4}"


def _either(*forms: str) -> str:
    return "(" + "|".join(forms) + ")"


#: Each field's rule as a regular expression, matched against the whole value (ASCII).
FIELD_PATTERNS: Mapping[str, str] = {
    "agent": _either(EXTENSION, NATIONAL, COUNTRY, INTERNATIONAL),
    "callee": _either(NATIONAL, COUNTRY, INTERNATIONAL),
    "outbound_id": _either(NATIONAL, COUNTRY),
    "call_ref": "[A-Za-z0-9._~:-]{1,128}",
}

#: The fields of a call request, in the order errors name them.
CALL_FIELDS = tuple(FIELD_PATTERNS)

_COMPILED = {name: re.compile(pattern, re.ASCII) for name, pattern in FIELD_PATTERNS.items()}

#: ``call_ref``'s rule, compiled (the API filters the call list by it).
CALL_REF = _COMPILED["call_ref"]

# ---- the error texts ------------------------------------------------------------------------

#: Why a value breaks each field's rule.
FIELD_RULES: Mapping[str, str] = {
    "agent": "must be a 3-4 digit extension, or a number valid for callee: national (0 then "
    "1-9, 10 digits), 27 followed by 9 digits, or international (00 then 11-14 digits)",
    "callee": "must be a national number (0 then 1-9, 10 digits), 27 followed by 9 digits "
    "(11 digits) or an international number (00 then 11-14 digits: 13-16 digits)",
    "outbound_id": "must be a national number (0 then 1-9, 10 digits) or 27 followed by 9 digits",
    "call_ref": "must be 1-128 characters of A-Z a-z 0-9 . _ ~ : -",
}
REQUIRED = "is required"
NOT_A_STRING = "must be a string"
CONFLICT = "was given more than once with different values"


def field_error(name: str, value: str) -> str | None:
    """Why ``value`` is no valid ``name`` (one of :data:`CALL_FIELDS`), or None."""
    if _COMPILED[name].fullmatch(value) is None:
        return FIELD_RULES[name]
    return None


class InvalidCallRequest(EngineError, ValueError):
    """The request is refused; :attr:`fields` maps each bad field to why."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k} {v}" for k, v in fields.items()))
        self.fields = fields


@dataclass(frozen=True)
class CallRequest:
    """A valid call request: building one with a value that breaks a rule raises
    :class:`InvalidCallRequest` naming every bad field."""

    agent: str
    callee: str
    outbound_id: str
    call_ref: str | None = None

    def __post_init__(self) -> None:
        errors: dict[str, str] = {}
        for name in CALL_FIELDS:
            value = getattr(self, name)
            if value is None and name == "call_ref":
                continue
            error = field_error(name, value) if isinstance(value, str) else NOT_A_STRING
            if error is not None:
                errors[name] = error
        if errors:
            raise InvalidCallRequest(errors)


def _single(name: str, given: Sequence[object]) -> tuple[str | None, str | None]:
    """(value, error) of one field from all the values given for it."""
    values = [v for v in given if v is not None]
    if name == "call_ref":
        values = [v for v in values if v != ""]
    if not values:
        return None, None
    strings = [v for v in values if isinstance(v, str)]
    if len(strings) != len(values):
        return None, NOT_A_STRING
    if len(set(strings)) > 1:
        return None, CONFLICT
    value = strings[0]
    error = field_error(name, value)
    return (None, error) if error is not None else (value, None)


def validate_call_request(given: Mapping[str, Sequence[object]]) -> CallRequest:
    """Check the values given for each field; unknown keys in ``given`` are ignored.

    ``given`` maps a field name to every value the client sent for it, in any source
    (strings from a query string or form; any JSON value from a JSON body).
    """
    errors: dict[str, str] = {}
    values: dict[str, str | None] = {}
    for name in CALL_FIELDS:
        value, error = _single(name, given.get(name, ()))
        if error is None and value is None and name != "call_ref":
            error = REQUIRED
        if error is not None:
            errors[name] = error
        values[name] = value
    if errors:
        raise InvalidCallRequest(errors)
    return CallRequest(
        agent=values["agent"] or "",
        callee=values["callee"] or "",
        outbound_id=values["outbound_id"] or "",
        call_ref=values["call_ref"],
    )
