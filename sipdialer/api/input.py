"""Reading the fields of a call request from wherever the client put them: the query
string, a JSON object, an urlencoded form or a multipart form.

Returns every value given for each name (``{"agent": ["1000"], ...}``), without judging
them — :mod:`sipdialer.engine.request` does that — so that a field given twice, or in both the
query string and the body, is seen as such. What cannot be read at all is a
:class:`MalformedRequest` (400, or 415 for a body type we do not take); a body over
``[http] max_body_bytes`` is aiohttp's 413.

Decisions (also in the README):

* A POST may carry fields in its query string *and* its body; both are read.
* An empty body counts as no body, whatever its Content-Type.
* Bodies must be UTF-8 (JSON per RFC 8259; forms: the charset parameter is not honoured).
* JSON must be one object; anything else (array, string, …) is a 400, as is invalid JSON.
* Multipart file parts are not plain values: a file part named like a call field is
  reported for that field ("must be a string").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from sipdialer.errors import SipdialerError

__all__ = ["FieldValues", "MalformedRequest", "query_fields", "read_call_fields"]

FieldValues = dict[str, list[object]]

#: More fields than this in one query string or form is no call request.
MAX_FIELDS = 64


class MalformedRequest(SipdialerError):
    """The request cannot be read; ``status`` is 400 or 415."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail


class _FilePart:
    """Stands for a multipart file part: a value that is not a string."""


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs, repeated keys kept."""


def _collect(pairs: Iterable[tuple[str, object]], into: FieldValues | None = None) -> FieldValues:
    out: FieldValues = into if into is not None else {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return out


def _parse_urlencoded(text: str, where: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError:
        raise MalformedRequest(
            400, "malformed request", f"the {where} is not valid UTF-8 once decoded"
        ) from None
    except ValueError:
        raise MalformedRequest(
            400, "malformed request", f"the {where} has more than {MAX_FIELDS} fields"
        ) from None


def query_fields(request: web.BaseRequest) -> FieldValues:
    """Every value of every name in the query string (``+`` is a space, ``%XX`` decoded)."""
    return _collect(_parse_urlencoded(request.rel_url.raw_query_string, "query string"))


def _merge(a: FieldValues, b: FieldValues) -> FieldValues:
    for key, values in b.items():
        a.setdefault(key, []).extend(values)
    return a


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def _json_fields(body: bytes) -> FieldValues:
    try:
        text = body.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_Pairs)
    except UnicodeDecodeError:
        raise MalformedRequest(400, "malformed JSON", "the body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise MalformedRequest(400, "malformed JSON", f"the body is not JSON: {exc}") from None
    if not isinstance(doc, _Pairs):
        raise MalformedRequest(400, "malformed JSON", "the body must be a JSON object")
    return _collect((key, _plain(value)) for key, value in doc)


def _plain(value: object) -> object:
    """JSON values as validation sees them: nested objects stay non-strings."""
    if isinstance(value, _Pairs):
        return dict(value)
    return value


async def _multipart_fields(request: web.Request) -> FieldValues:
    try:
        form = await request.post()
    except web.HTTPException:
        raise
    except Exception as exc:  # aiohttp raises assorted errors for broken multipart bodies
        raise MalformedRequest(
            400, "malformed form", f"the multipart body cannot be read: {exc}"
        ) from None
    out: FieldValues = {}
    for key, value in form.items():
        if isinstance(value, web.FileField):
            value.file.close()
            out.setdefault(key, []).append(_FilePart())
        elif isinstance(value, str):
            out.setdefault(key, []).append(value)
        else:  # a part with a non-text Content-Type arrives as bytes
            try:
                out.setdefault(key, []).append(bytes(value).decode("utf-8"))
            except UnicodeDecodeError:
                out.setdefault(key, []).append(_FilePart())
    return out


async def read_call_fields(request: web.Request) -> FieldValues:
    """The fields of a ``POST /click2dial/calls``: query string plus body."""
    given = query_fields(request)
    if not request.body_exists:
        return given
    content_type = request.content_type.lower()
    if content_type == "multipart/form-data":
        return _merge(given, await _multipart_fields(request))
    body = await request.read()  # 413 beyond client_max_size
    if not body:
        return given
    if _is_json(content_type):
        return _merge(given, _json_fields(body))
    if content_type == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedRequest(400, "malformed form", "the body is not UTF-8") from None
        return _merge(given, _collect(_parse_urlencoded(text, "form body")))
    raise MalformedRequest(
        415,
        "unsupported media type",
        "send application/json, application/x-www-form-urlencoded or multipart/form-data",
    )
