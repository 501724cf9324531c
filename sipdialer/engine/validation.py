"""The rules for a call request (SPEC §2), in one place: what ``agent``, ``callee``,
``outbound_id`` and ``call_ref`` may be, and the error text for each broken rule.

Pure: it gets every value given for each field (from whichever sources the HTTP layer
read: query string, JSON, form) and returns a :class:`CallParams` or raises
:class:`InvalidCallRequest` naming *every* bad field. Nothing else in the service decides
whether a number is acceptable, and nothing a client sends reaches SIP or a file name
without passing here.

Every pattern is ASCII-only (``[0-9]``, never ``\\d``, which also matches e.g. Arabic-Indic
or full-width digits) and applied with :func:`re.fullmatch` (``$`` would accept a trailing
newline). Values are never trimmed: `` 1000`` is refused, not repaired.

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
from sipdialer.rtp.recorder import RECORDING_REF

__all__ = [
    "CALL_FIELDS",
    "CALL_ID",
    "CALL_REF",
    "RECORDING_REF",
    "CallParams",
    "InvalidCallRequest",
    "validate_call_request",
]

_A = re.ASCII

NATIONAL = re.compile(r"0[1-9][0-9]{8}", _A)  # 10 digits, 0 then not 0
COUNTRY = re.compile(r"27[0-9]{9}", _A)  # 11 digits, South Africa without the +
INTERNATIONAL = re.compile(r"00[0-9]{11,14}", _A)  # 13-16 digits
EXTENSION = re.compile(r"[0-9]{3,4}", _A)
CALL_REF = re.compile(r"[A-Za-z0-9._~:-]{1,128}", _A)
#: The id the service gives a call (``uuid4().hex``).
CALL_ID = re.compile(r"[0-9a-f]{32}", _A)

CALL_FIELDS = ("agent", "callee", "outbound_id", "call_ref")

CALLEE_RULE = (
    "must be a national number (0 then 1-9, 10 digits), 27 followed by 9 digits "
    "(11 digits) or an international number (00 then 11-14 digits: 13-16 digits)"
)
AGENT_RULE = (
    "must be a 3-4 digit extension, or a number valid for callee: national (0 then 1-9, "
    "10 digits), 27 followed by 9 digits, or international (00 then 11-14 digits)"
)
OUTBOUND_RULE = "must be a national number (0 then 1-9, 10 digits) or 27 followed by 9 digits"
CALL_REF_RULE = "must be 1-128 characters of A-Z a-z 0-9 . _ ~ : -"
REQUIRED = "is required"
NOT_A_STRING = "must be a string"
CONFLICT = "was given more than once with different values"


def is_callee(value: str) -> bool:
    return any(p.fullmatch(value) for p in (NATIONAL, COUNTRY, INTERNATIONAL))


def is_agent(value: str) -> bool:
    return EXTENSION.fullmatch(value) is not None or is_callee(value)


def is_outbound_id(value: str) -> bool:
    return NATIONAL.fullmatch(value) is not None or COUNTRY.fullmatch(value) is not None


_RULES = {
    "agent": (is_agent, AGENT_RULE),
    "callee": (is_callee, CALLEE_RULE),
    "outbound_id": (is_outbound_id, OUTBOUND_RULE),
    "call_ref": (lambda v: CALL_REF.fullmatch(v) is not None, CALL_REF_RULE),
}


@dataclass(frozen=True)
class CallParams:
    """A valid call request."""

    agent: str
    callee: str
    outbound_id: str
    call_ref: str | None = None


class InvalidCallRequest(EngineError, ValueError):
    """The request is refused; :attr:`fields` maps each bad field to why."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k} {v}" for k, v in fields.items()))
        self.fields = fields


def _single(name: str, given: Sequence[object]) -> tuple[str | None, str | None]:
    """(value, error) of one field from all the values given for it."""
    values = [v for v in given if v is not None]
    if name == "call_ref":
        values = [v for v in values if v != ""]
    if not values:
        return None, None
    if any(not isinstance(v, str) for v in values):
        return None, NOT_A_STRING
    if len(set(values)) > 1:
        return None, CONFLICT
    value = values[0]
    assert isinstance(value, str)
    check, rule = _RULES[name]
    if not check(value):
        return None, rule
    return value, None


def validate_call_request(given: Mapping[str, Sequence[object]]) -> CallParams:
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
    return CallParams(
        agent=values["agent"] or "",
        callee=values["callee"] or "",
        outbound_id=values["outbound_id"] or "",
        call_ref=values["call_ref"],
    )
