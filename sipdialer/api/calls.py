"""The call resources: creating a call (``POST /click2dial/calls`` and the deprecated
``GET /call.php``), reading one, listing them, and ending one (``DELETE``).

Status codes (decisions, also in the README):

* create: **201** with the call and ``Location``; **422** ``{"error": "invalid request",
  "fields": {...}}`` naming every bad field; **400** unreadable body (malformed JSON, a
  JSON body that is not an object, broken form); **415** another body type; **413** body
  over ``[http] max_body_bytes``; **429** with ``Retry-After`` when ``[calls]
  max_concurrent`` calls are active; **503** when no trunk is configured (the callee is
  always dialled through it), and with ``Retry-After`` while the notifier's disk writes
  lag (:attr:`~sipdialer.notify.notifier.Notifier.accepting_calls`: so many ended calls
  wait for the outbox that taking more would grow memory without bound). A call whose
  media could not be set up is still created (201) and is already ``ended``: its CDR
  says why.
* read: **200**; **404** for an unknown id and for anything that is not an id.
* delete: **202** with the call when this request started the hang-up (CANCEL or BYE is
  under way); **200** with the call when it had already ended (idempotent); **404** as
  for read.
* list: newest first, ``?call_ref=`` (exact), ``?state=active|ended``, ``?limit=``
  (1-1000, default 100); **422** for a bad filter. Finished calls are kept in memory (the
  latest 1000) and do not survive a restart; Redis has every CDR.

The handlers see the calls through the context's
:class:`~sipdialer.engine.directory.CallDirectory` only, as frozen
:class:`~sipdialer.engine.directory.CallView` snapshots.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from sipdialer.api.context import CONTEXT, json_error
from sipdialer.api.input import FieldValues, MalformedRequest, query_fields, read_call_fields
from sipdialer.engine.cdr import iso_utc
from sipdialer.engine.directory import CALL_ID, CallView
from sipdialer.engine.request import (
    CALL_REF,
    CONFLICT,
    FIELD_RULES,
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


def call_view(view: CallView) -> dict[str, Any]:
    """The JSON of a call: its view, ISO timestamps and links."""
    ref = view.recording_ref
    links = {"self": call_path(view.id)}
    if ref:
        links["recording"] = f"/click2dial/recordings/{ref}"
    return {
        "id": view.id,
        "call_ref": view.call_ref,
        "status": view.state,
        "state": view.state,
        "agent": view.agent,
        "callee": view.callee,
        "outbound_id": view.outbound_id,
        "created_at": iso_utc(view.created_at),
        "timeline": [{"at": iso_utc(e.at), "state": e.state} for e in view.timeline],
        "agent_sip_status": view.agent_sip_status,
        "callee_sip_status": view.callee_sip_status,
        "recording": ref,
        "cdr": dict(view.cdr) if view.cdr is not None else None,
        "links": links,
    }


async def _place(request: web.Request, given: FieldValues) -> web.Response:
    try:
        call_request = validate_call_request(given)
    except InvalidCallRequest as exc:
        return json_error(422, "invalid request", fields=exc.fields)
    ctx = request.app[CONTEXT]
    if ctx.config.trunk.registrar is None:
        return json_error(503, "no trunk configured", detail="[trunk] registrar is empty")
    if not getattr(ctx.notifier, "accepting_calls", True):  # its disk is not keeping up
        return json_error(
            503,
            "notifications backlog",
            headers={"Retry-After": str(RETRY_AFTER)},
            detail="the notifications outbox is not keeping up with the disk",
        )
    limit = ctx.config.calls.max_concurrent
    if ctx.calls.active_count() >= limit:
        return json_error(
            429,
            "too many calls",
            headers={"Retry-After": str(RETRY_AFTER)},
            detail=f"{limit} calls are active ([calls] max_concurrent)",
        )
    # no await between the check above and originate() registering the call
    view = await ctx.calls.originate(call_request)
    log.info(
        "event=api_call_created call=%s call_ref=%s route=%s",
        view.id[:12],
        call_request.call_ref or "-",
        request.match_info.route.name,
    )
    return web.json_response(call_view(view), status=201, headers={"Location": call_path(view.id)})


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


def _call_id(request: web.Request) -> str | None:
    """The id in the path, or None when it cannot be one."""
    call_id = request.match_info["id"]
    return call_id if CALL_ID.fullmatch(call_id) else None


async def get_call(request: web.Request) -> web.Response:
    call_id = _call_id(request)
    view = request.app[CONTEXT].calls.get(call_id) if call_id is not None else None
    if view is None:
        return json_error(404, "no such call")
    return web.json_response(call_view(view))


async def delete_call(request: web.Request) -> web.Response:
    call_id = _call_id(request)
    if call_id is None:
        return json_error(404, "no such call")
    calls = request.app[CONTEXT].calls
    started = calls.hangup(call_id)
    view = calls.get(call_id)
    if view is None:
        return json_error(404, "no such call")
    if started:
        log.info("event=api_call_hangup call=%s", call_id[:12])
    return web.json_response(call_view(view), status=202 if started else 200)


def _one(values: list[str], name: str, errors: dict[str, str]) -> str | None:
    distinct = set(values)
    if len(distinct) > 1:
        errors[name] = CONFLICT
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
        errors["call_ref"] = FIELD_RULES["call_ref"]
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
    directory = request.app[CONTEXT].calls
    views = {v.id: v for v in [*directory.recent(), *directory.active()]}
    selected = [
        v
        for v in views.values()
        if (call_ref is None or v.call_ref == call_ref)
        and (state is None or (state == "ended") == v.ended)  # active: any other state
    ]
    selected.sort(key=lambda v: v.created_at, reverse=True)
    calls = [call_view(v) for v in selected[:limit]]
    return web.json_response({"calls": calls, "count": len(calls), "total": len(selected)})
