"""The OpenAPI 3.1 document of the HTTP API, and ``GET /openapi.json``.

Written by hand, but for the value patterns, which are generated from the rules that judge
the values: the call fields' from :data:`sipdialer.engine.request.FIELD_PATTERNS`, the call
id's from :data:`sipdialer.engine.directory.CALL_ID` and the recording reference's from
:data:`sipdialer.rtp.recorder.RECORDING_REF`, each anchored as ``"^" + rule + "$"`` (in
ECMA-262, which JSON Schema uses, ``$`` without the ``m`` flag is the end of the input).

Kept in step with the router by ``tests/service/test_api.py``, which walks the
application's routes and checks each method and path is described here (and nothing else
is); ``tests/unit/test_openapi_patterns.py`` checks the patterns against the rules.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from sipdialer import __version__
from sipdialer.engine import directory, request
from sipdialer.rtp import recorder

__all__ = ["FIELD_PATTERNS", "document", "openapi_json"]


def _anchored(rule: str) -> str:
    """A rule matched against a whole value, as a JSON Schema ``pattern``."""
    return f"^{rule}$"


#: Each call field's ``pattern`` in the document.
FIELD_PATTERNS = {name: _anchored(rule) for name, rule in request.FIELD_PATTERNS.items()}
AGENT = FIELD_PATTERNS["agent"]
CALLEE = FIELD_PATTERNS["callee"]
OUTBOUND_ID = FIELD_PATTERNS["outbound_id"]
CALL_REF = FIELD_PATTERNS["call_ref"]
CALL_ID = _anchored(directory.CALL_ID.pattern)
RECORDING_REF = _anchored(recorder.RECORDING_REF.pattern)

_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **headers: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        out["headers"] = {
            name: {"$ref": f"#/components/headers/{h}"} for name, h in headers.items()
        }
    return out


def _error(description: str, **headers: str) -> dict[str, Any]:
    return _json(_ref("Error"), description, **headers)


_FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "agent": {
        "type": "string",
        "pattern": AGENT,
        "description": "Agent extension (3-4 digits) or the first number connected "
        "(any form valid for callee).",
        "examples": ["1000"],
    },
    "callee": {
        "type": "string",
        "pattern": CALLEE,
        "description": "Number to dial: national 0[1-9] + 8 digits, 27 + 9 digits, or "
        "international 00 + 11-14 digits.",
        "examples": ["0820001234"],
    },
    "outbound_id": {
        "type": "string",
        "pattern": OUTBOUND_ID,
        "description": "Caller ID presented to the callee.",
        "examples": ["0123456789"],
    },
    "call_ref": {
        "type": "string",
        "pattern": CALL_REF,
        "description": "The client's own reference, echoed back everywhere. Optional; an "
        "empty value means none.",
        "examples": ["AbC123"],
    },
}


def _field_params(*, required: bool) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "query",
            "required": required and name != "call_ref",
            "schema": schema,
        }
        for name, schema in _FIELD_SCHEMAS.items()
    ]


_CREATE_RESPONSES: dict[str, Any] = {
    "201": _json(_ref("Call"), "The call was created.", Location="Location"),
    "400": _error("The body cannot be read (malformed JSON, not a JSON object, broken form)."),
    "401": _error("A token is required.", **{"WWW-Authenticate": "WWW-Authenticate"}),
    "413": _error("The body is larger than [http] max_body_bytes."),
    "415": _error("The body is neither JSON nor a form."),
    "422": _json(_ref("ValidationError"), "A field is missing or invalid; no call placed."),
    "429": _error("[calls] max_concurrent calls are active.", **{"Retry-After": "Retry-After"}),
    "503": _error(
        "No trunk is configured; or (with Retry-After) the notifications outbox lags "
        "behind the disk, and new calls wait until it drains.",
        **{"Retry-After": "Retry-After"},
    ),
}

_CALL_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": CALL_ID},
    "description": "The call's id (32 lowercase hex digits).",
}
_REF_PARAM = {
    "name": "ref",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": RECORDING_REF},
    "description": "The recording reference (recording_url in notifications).",
}
_TOKEN_PARAM = {
    "name": "token",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "An API token, for links that cannot carry an Authorization header.",
}

_RECORDING_RESPONSES: dict[str, Any] = {
    "200": {
        "description": "The whole WAV (8 kHz, 16-bit, stereo: agent left, callee right).",
        "headers": {
            "ETag": {"$ref": "#/components/headers/ETag"},
            "Last-Modified": {"$ref": "#/components/headers/Last-Modified"},
            "Accept-Ranges": {"$ref": "#/components/headers/Accept-Ranges"},
            "Content-Length": {"$ref": "#/components/headers/Content-Length"},
        },
        "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
    },
    "206": {
        "description": "One byte range of the WAV.",
        "headers": {
            "Content-Range": {"$ref": "#/components/headers/Content-Range"},
            "ETag": {"$ref": "#/components/headers/ETag"},
            "Content-Length": {"$ref": "#/components/headers/Content-Length"},
        },
        "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
    },
    "304": {"description": "Not modified (If-None-Match / If-Modified-Since)."},
    "401": _error("A token is required.", **{"WWW-Authenticate": "WWW-Authenticate"}),
    "404": _error("No such recording (or not a recording reference)."),
    "412": _error("If-Match / If-Unmodified-Since failed."),
    "416": _error("The range is not satisfiable.", **{"Content-Range": "Content-Range"}),
}

_RANGE_HEADERS = [
    {"name": h, "in": "header", "required": False, "schema": {"type": "string"}}
    for h in ("Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match")
]

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "sipdialer",
        "version": __version__,
        "summary": "Click-to-dial: ring an agent, then a callee, bridge and record them.",
        "description": 'Every error is JSON {"error": ...}. With [http] api_tokens set, '
        "every route except /healthz and /openapi.json needs `Authorization: Bearer "
        "<token>`; recordings and /call.php also take `?token=`.",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/click2dial/calls": {
            "post": {
                "operationId": "createCall",
                "summary": "Create a call",
                "description": "Fields come from the JSON body, an urlencoded or multipart "
                "form, and/or the query string. A field given twice with different values "
                "is refused; unknown fields are ignored.",
                "parameters": _field_params(required=False),
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {"schema": _ref("CallCreate")},
                        "application/x-www-form-urlencoded": {"schema": _ref("CallCreate")},
                        "multipart/form-data": {"schema": _ref("CallCreate")},
                    },
                },
                "responses": _CREATE_RESPONSES,
            },
            "get": {
                "operationId": "listCalls",
                "summary": "Active and recent calls, newest first",
                "parameters": [
                    {
                        "name": "call_ref",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": CALL_REF},
                    },
                    {
                        "name": "state",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["active", "ended"]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {
                    "200": _json(_ref("CallList"), "The calls."),
                    "401": _error("A token is required."),
                    "422": _json(_ref("ValidationError"), "A filter is invalid."),
                },
            },
        },
        "/click2dial/calls/{id}": {
            "parameters": [_CALL_ID_PARAM],
            "get": {
                "operationId": "getCall",
                "summary": "One call: state, timeline, and its CDR once ended",
                "responses": {
                    "200": _json(_ref("Call"), "The call."),
                    "401": _error("A token is required."),
                    "404": _error("No such call (or not a call id)."),
                },
            },
            "delete": {
                "operationId": "hangupCall",
                "summary": "Hang up (or cancel) a call; idempotent",
                "responses": {
                    "200": _json(_ref("Call"), "The call had already ended."),
                    "202": _json(_ref("Call"), "Hang-up started (CANCEL or BYE under way)."),
                    "401": _error("A token is required."),
                    "404": _error("No such call (or not a call id)."),
                },
            },
        },
        "/call.php": {
            "get": {
                "operationId": "createCallLegacy",
                "deprecated": True,
                "summary": "Create a call (deprecated; use POST /click2dial/calls)",
                "description": "Same rules and answers as POST /click2dial/calls; every "
                'answer carries `Deprecation: true` and `Link: </click2dial/calls>; rel="'
                'successor-version"`.',
                "security": [{"bearer": []}, {"token": []}],
                "parameters": [*_field_params(required=True), _TOKEN_PARAM],
                "responses": {
                    k: v for k, v in _CREATE_RESPONSES.items() if k not in ("413", "415")
                },
            },
        },
        "/click2dial/recordings/{ref}": {
            "parameters": [_REF_PARAM, _TOKEN_PARAM],
            "get": {
                "operationId": "getRecording",
                "summary": "A call's recording (Range, If-Range, ETag supported)",
                "security": [{"bearer": []}, {"token": []}],
                "parameters": _RANGE_HEADERS,
                "responses": _RECORDING_RESPONSES,
            },
            "head": {
                "operationId": "headRecording",
                "summary": "The recording's headers (Range is ignored, as RFC 9110 says)",
                "security": [{"bearer": []}, {"token": []}],
                "parameters": _RANGE_HEADERS,
                "responses": {
                    k: {kk: vv for kk, vv in v.items() if kk != "content"}
                    for k, v in _RECORDING_RESPONSES.items()
                    if k != "206"
                },
            },
        },
        "/click2dial/extensions": {
            "get": {
                "operationId": "listExtensions",
                "summary": "Configured extensions and their registered phones",
                "responses": {
                    "200": _json(_ref("ExtensionList"), "Every configured extension."),
                    "401": _error("A token is required."),
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Readiness: trunk registration, Redis, active calls",
                "security": [],
                "responses": {
                    "200": _json(_ref("Health"), "Ready."),
                    "503": _json(_ref("Health"), "Not ready; `problems` says why."),
                },
            },
            "head": {
                "operationId": "healthHead",
                "summary": "Readiness as a status code only",
                "security": [],
                "responses": {
                    "200": {"description": "Ready."},
                    "503": {"description": "Not ready."},
                },
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format 0.0.4)",
                "responses": {
                    "200": {
                        "description": "The metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": _error("A token is required."),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            },
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "token": {"type": "apiKey", "in": "query", "name": "token"},
        },
        "headers": {
            "Location": {"schema": {"type": "string"}, "description": "/click2dial/calls/{id}"},
            "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."},
            "WWW-Authenticate": {"schema": {"type": "string"}},
            "ETag": {"schema": {"type": "string"}},
            "Last-Modified": {"schema": {"type": "string"}},
            "Accept-Ranges": {"schema": {"type": "string", "const": "bytes"}},
            "Content-Length": {"schema": {"type": "integer"}},
            "Content-Range": {"schema": {"type": "string"}},
        },
        "schemas": {
            "CallCreate": {
                "type": "object",
                "required": ["agent", "callee", "outbound_id"],
                "properties": _FIELD_SCHEMAS,
                "additionalProperties": True,
                "description": "Unknown fields are ignored.",
            },
            "TimelineEntry": {
                "type": "object",
                "required": ["at", "state"],
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "state": {"type": "string"},
                },
            },
            "Call": {
                "type": "object",
                "required": [
                    "id",
                    "call_ref",
                    "status",
                    "state",
                    "agent",
                    "callee",
                    "outbound_id",
                    "links",
                ],
                "properties": {
                    "id": {"type": "string", "pattern": CALL_ID},
                    "call_ref": _NULLABLE_STR,
                    "status": {
                        "type": "string",
                        "enum": [
                            "created",
                            "agent_ringing",
                            "callee_ringing",
                            "bridged",
                            "ended",
                        ],
                    },
                    "state": {"type": "string", "description": "Same as status."},
                    "agent": {"type": "string"},
                    "callee": {"type": "string"},
                    "outbound_id": {"type": "string"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "timeline": {"type": "array", "items": _ref("TimelineEntry")},
                    "agent_sip_status": _NULLABLE_INT,
                    "callee_sip_status": _NULLABLE_INT,
                    "recording": {
                        "type": ["string", "null"],
                        "description": "Recording reference, once the callee answered.",
                    },
                    "cdr": {
                        "type": ["object", "null"],
                        "description": "The call detail record (the payload pushed to "
                        "<prefix>:notifications:cdr), once the call has ended.",
                    },
                    "links": {
                        "type": "object",
                        "required": ["self"],
                        "properties": {
                            "self": {"type": "string"},
                            "recording": {"type": "string"},
                        },
                    },
                },
            },
            "CallList": {
                "type": "object",
                "required": ["calls", "count", "total"],
                "properties": {
                    "calls": {"type": "array", "items": _ref("Call")},
                    "count": {"type": "integer", "description": "Calls in this answer."},
                    "total": {"type": "integer", "description": "Calls matching, all told."},
                },
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
            },
            "ValidationError": {
                "type": "object",
                "required": ["error", "fields"],
                "properties": {
                    "error": {"type": "string", "const": "invalid request"},
                    "fields": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Each bad field and why.",
                    },
                },
            },
            "ExtensionList": {
                "type": "object",
                "required": ["extensions"],
                "properties": {
                    "extensions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["extension", "registered", "contacts"],
                            "properties": {
                                "extension": {"type": "string"},
                                "registered": {"type": "boolean"},
                                "contacts": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "contact": {"type": "string"},
                                            "source": {"type": "string"},
                                            "transport": {"type": "string"},
                                            "expires_in": {"type": "integer"},
                                            "user_agent": {"type": ["string", "null"]},
                                            "registered_at": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
            "Health": {
                "type": "object",
                "required": ["status", "ready", "problems", "calls"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "unavailable"]},
                    "ready": {"type": "boolean"},
                    "problems": {"type": "array", "items": {"type": "string"}},
                    "trunk": {"type": ["object", "null"]},
                    "notifier": {"type": ["object", "null"]},
                    "calls": {
                        "type": "object",
                        "properties": {
                            "active": {"type": "integer"},
                            "max_concurrent": {"type": "integer"},
                        },
                    },
                },
            },
        },
    },
}


def document() -> dict[str, Any]:
    """A copy of the OpenAPI document."""
    return copy.deepcopy(_DOCUMENT)


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(_DOCUMENT)
