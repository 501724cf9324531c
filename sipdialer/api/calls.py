"""The call resources: creating a call (``POST /click2dial/calls`` and the deprecated
``GET /call.php``), reading one, listing them, and ending one (``DELETE``).

Status codes (decisions, also in the README):

* create: **201** with the call and ``Location``; **422** ``{"error": "invalid request",
  "fields": {...}}`` naming every bad field; **400** unreadable body (malformed JSON, a
  JSON body that is not an object, broken form); **415** another body type; **413** body
  over ``[http] max_body_bytes``; **429** with ``Retry-After`` when ``[calls]
  max_concurrent`` calls are active; **503** when no trunk is configured (the callee is
  always dialled through it). A call whose media could not be set up is still created
  (201) and is already ``ended``: its CDR says why.
* read: **200**; **404** for an unknown id and for anything that is not an id.
* delete: **202** with the call when this request started the hang-up (CANCEL or BYE is
  under way); **200** with the call when it had already ended (idempotent); **404** as
  for read.
* list: newest first, ``?call_ref=`` (exact), ``?state=active|ended``, ``?limit=``
  (1-1000, default 100); **422** for a bad filter. Finished calls are kept in memory (the
  latest 1000) and do not survive a restart; Redis has every CDR.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from sipdialer.api.context import CONTEXT, json_error
from sipdialer.api.input import FieldValues, MalformedRequest, query_fields, read_call_fields
from sipdialer.engine.call import CallState
from sipdialer.engine.cdr import iso_utc
from sipdialer.engine.dialer import CallRequest, CallRunner
from sipdialer.engine.validation import (
    CALL_ID,
    CALL_REF,
    CALL_REF_RULE,
    InvalidCallRequest,
    validate_call_request,
)

log = logging.getLogger("sipdialer.api")

__all__ = ["call_view", "create_call", "delete_call", "get_call", "legacy_create_call"]

#: Seconds a client is asked to wait when max_concurrent calls are active.
RETRY_AFTER = 5
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 1000
_LIMIT = re.compile(r"[0-9]{1,4}", re.ASCII)


def call_path(call_id: str) -> str:
    return f"/click2dial/calls/{call_id}"


def call_view(runner: CallRunner) -> dict[str, Any]:
    """The JSON of a call: the engine's snapshot, ISO timestamps and links."""
    snap = runner.snapshot()
    ref = runner.record.recording_ref
    links = {"self": call_path(runner.id)}
    if ref:
        links["recording"] = f"/click2dial/recordings/{ref}"
    timeline = [
        {"at": iso_utc(float(e["at"])), "state": e["state"]}  # type: ignore[arg-type]
        for e in snap.get("timeline", [])  # type: ignore[union-attr]
    ]
    return {
        "id": snap["id"],
        "call_ref": snap["call_ref"],
        "status": snap["state"],
        "state": snap["state"],
        "agent": snap["agent"],
        "callee": snap["callee"],
        "outbound_id": snap["outbound_id"],
        "created_at": iso_utc(runner.record.created_at),
        "timeline": timeline,
        "agent_sip_status": snap.get("agent_sip_status"),
        "callee_sip_status": snap.get("callee_sip_status"),
        "recording": ref,
        "cdr": snap.get("cdr"),
        "links": links,
    }


async def _place(request: web.Request, given: FieldValues) -> web.Response:
    try:
        params = validate_call_request(given)
    except InvalidCallRequest as exc:
        return json_error(422, "invalid request", fields=exc.fields)
    ctx = request.app[CONTEXT]
    if ctx.config.trunk.registrar is None:
        return json_error(503, "no trunk configured", detail="[trunk] registrar is empty")
    dialer = ctx.dialer
    limit = ctx.config.calls.max_concurrent
    if len(dialer.active) >= limit:
        return json_error(
            429,
            "too many calls",
            headers={"Retry-After": str(RETRY_AFTER)},
            detail=f"{limit} calls are active ([calls] max_concurrent)",
        )
    # no await between the check above and originate() registering the call
    runner = await dialer.originate(
        CallRequest(
            agent=params.agent,
            callee=params.callee,
            outbound_id=params.outbound_id,
            call_ref=params.call_ref,
        )
    )
    log.info(
        "event=api_call_created call=%s call_ref=%s route=%s",
        runner.id[:12],
        params.call_ref or "-",
        request.match_info.route.name,
    )
    return web.json_response(
        call_view(runner), status=201, headers={"Location": call_path(runner.id)}
    )


async def create_call(request: web.Request) -> web.Response:
    """``POST /click2dial/calls``: fields from the query string and/or the body."""
    try:
        given = await read_call_fields(request)
    except MalformedRequest as exc:
        return json_error(exc.status, exc.error, detail=exc.detail)
    return await _place(request, given)


async def legacy_create_call(request: web.Request) -> web.Response:
    """``GET /call.php``: the deprecated form, query string only, same rules and answers."""
    try:
        given = query_fields(request)
    except MalformedRequest as exc:
        return json_error(exc.status, exc.error, detail=exc.detail)
    return await _place(request, given)


def _runner(request: web.Request) -> CallRunner | None:
    call_id = request.match_info["id"]
    if not CALL_ID.fullmatch(call_id):
        return None
    return request.app[CONTEXT].dialer.get(call_id)


async def get_call(request: web.Request) -> web.Response:
    runner = _runner(request)
    if runner is None:
        return json_error(404, "no such call")
    return web.json_response(call_view(runner))


async def delete_call(request: web.Request) -> web.Response:
    runner = _runner(request)
    if runner is None:
        return json_error(404, "no such call")
    if runner.state is CallState.ENDED:
        return web.json_response(call_view(runner), status=200)
    runner.hangup()
    log.info("event=api_call_hangup call=%s", runner.id[:12])
    return web.json_response(call_view(runner), status=202)


def _one(values: list[str], name: str, errors: dict[str, str]) -> str | None:
    distinct = set(values)
    if len(distinct) > 1:
        errors[name] = "was given more than once with different values"
        return None
    return values[0] if values else None


async def list_calls(request: web.Request) -> web.Response:
    """``GET /click2dial/calls``: active and recent calls, newest first."""
    try:
        given = query_fields(request)
    except MalformedRequest as exc:
        return json_error(exc.status, exc.error, detail=exc.detail)
    errors: dict[str, str] = {}
    strings = {k: [v for v in vals if isinstance(v, str)] for k, vals in given.items()}
    call_ref = _one(strings.get("call_ref", []), "call_ref", errors)
    state = _one(strings.get("state", []), "state", errors)
    limit_text = _one(strings.get("limit", []), "limit", errors)
    if call_ref is not None and not CALL_REF.fullmatch(call_ref):
        errors["call_ref"] = CALL_REF_RULE
    if state is not None and state not in ("active", "ended"):
        errors["state"] = "must be active or ended"
    limit = LIST_LIMIT_DEFAULT
    if limit_text is not None:
        if _LIMIT.fullmatch(limit_text) and 1 <= int(limit_text) <= LIST_LIMIT_MAX:
            limit = int(limit_text)
        else:
            errors["limit"] = f"must be a whole number from 1 to {LIST_LIMIT_MAX}"
    if errors:
        return json_error(422, "invalid request", fields=errors)
    dialer = request.app[CONTEXT].dialer
    runners = {**dialer.recent, **dialer.active}
    selected = [
        r
        for r in runners.values()
        if (call_ref is None or r.request.call_ref == call_ref)
        and (
            state is None
            or (state == "ended") == (r.state is CallState.ENDED)  # active: any other state
        )
    ]
    selected.sort(key=lambda r: r.record.created_at, reverse=True)
    calls = [call_view(r) for r in selected[:limit]]
    return web.json_response({"calls": calls, "count": len(calls), "total": len(selected)})
