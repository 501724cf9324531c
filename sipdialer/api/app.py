"""The HTTP API (aiohttp): the application factory, its typed state, the middlewares that
every route shares (JSON errors, bearer-token auth), the access log and the server.

``make_app(context)`` builds the application from an :class:`ApiContext` — what the
handlers may see of the running service — and :class:`ApiServer` runs it on a TCP port.
The handlers live beside it, one module per concern: ``calls`` (creating, listing and
ending calls; ``input`` reads their fields, ``sipdialer.engine.request`` judges them),
``recordings``, ``extensions``, ``health``, ``metrics``; ``openapi`` holds the document
that describes every route. The handlers see the calls only through the
:class:`~sipdialer.engine.directory.CallDirectory` in the context.

Routes (all JSON unless noted):

======  ===================================  ==============================================
POST    /click2dial/calls                    create a call (JSON, form, multipart or query)
GET     /call.php                            the same, deprecated (query string only)
GET     /click2dial/calls                    active and recent calls (?call_ref= ?state=)
GET     /click2dial/calls/{id}               one call: state, timeline, CDR once ended
DELETE  /click2dial/calls/{id}               hang up / cancel
GET     /click2dial/recordings/{ref}         the WAV (HEAD, Range, ETag); audio/wav
GET     /healthz                             readiness (200 / 503); open without a token
GET     /metrics                             Prometheus text format (0.0.4)
GET     /openapi.json                        OpenAPI 3.1; open without a token
======  ===================================  ==============================================

Auth: with ``[http] api_tokens`` set, every route except ``/healthz`` and
``/openapi.json`` needs ``Authorization: Bearer <token>``; the two link-shaped routes (a
recording, ``/call.php``) also take ``?token=``. Tokens are compared with
:func:`hmac.compare_digest` against each configured one.

Every error is JSON ``{"error": "...", ...}``; the access log records the path without the
query string, so tokens given as ``?token=`` never reach a log. A request aiohttp cannot
parse (bad request line or header, bad Content-Length, a TLS hello on the HTTP port…) gets
its 400 and one ``event=http_malformed_request`` line at info — no traceback, at most a
few a second per client address (:class:`MalformedRequestLog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from sipdialer.api import calls as api_calls
from sipdialer.api import extensions as api_extensions
from sipdialer.api import health as api_health
from sipdialer.api import metrics as api_metrics
from sipdialer.api import openapi
from sipdialer.api import recordings as api_recordings
from sipdialer.api.context import CONTEXT, ApiContext, json_error
from sipdialer.logs import LogThrottle, quote_value

log = logging.getLogger("sipdialer.api")
access_log = logging.getLogger("sipdialer.http")

__all__ = ["CONTEXT", "ApiContext", "ApiServer", "json_error", "make_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes open without a token (load balancers, API tooling).
OPEN_ROUTES = frozenset({"healthz", "openapi"})
#: Routes that are links clients follow as-is, so the token may come as ``?token=``.
QUERY_TOKEN_ROUTES = frozenset({"recording", "legacy_call"})
#: How often the background housekeeping samples the notifier and folds in RTP counters.
HOUSEKEEPING_INTERVAL = 1.0


# ---- middlewares ----------------------------------------------------------------------------

_KEEP_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Content-Range")


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Times every request into the latency histogram, by route name and status class
    (outermost, so it sees the answers the other middlewares make). A request the client
    abandoned (the handler cancelled) has no status and is not counted."""
    start = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _observe(request, exc.status, start)
        raise
    except Exception:
        _observe(request, 500, start)
        raise
    _observe(request, response.status, start)
    return response


def _observe(request: web.Request, status: int, start: float) -> None:
    route = request.match_info.route.name or "unmatched"
    request.app[api_metrics.HTTP_SECONDS].labels(route, f"{status // 100}xx").observe(
        time.perf_counter() - start
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413, …) and crashes become JSON errors."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: exc.headers[k] for k in _KEEP_HEADERS if k in exc.headers}
        return json_error(exc.status, (exc.reason or "error").lower(), headers=headers)
    except Exception:
        log.exception(
            "event=api_error method=%s path=%s",
            quote_value(request.method),
            quote_value(request.rel_url.raw_path, limit=200),
        )
        return json_error(500, "internal error")


def _presented_token(request: web.Request, route: str | None) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    if route in QUERY_TOKEN_ROUTES:
        return request.rel_url.query.get("token") or None
    return None


def token_ok(presented: str, tokens: tuple[str, ...]) -> bool:
    """Constant-time comparison against every configured token."""
    given = presented.encode("utf-8", "surrogateescape")
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(given, token.encode("utf-8"))
    return ok


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    tokens = request.app[CONTEXT].config.http.api_tokens
    route = request.match_info.route.name
    if not tokens or route in OPEN_ROUTES:
        return await handler(request)
    presented = _presented_token(request, route)
    if presented is not None and token_ok(presented, tokens):
        return await handler(request)
    challenge = 'Bearer realm="sipdialer"'
    if presented is not None:
        challenge += ', error="invalid_token"'
    return json_error(401, "unauthorized", headers={"WWW-Authenticate": challenge})


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Deprecation headers on every answer of /call.php; JSON is never cached."""
    if request.path == "/call.php":  # also its 401/405, which match no route
        response.headers["Deprecation"] = "true"
        response.headers["Link"] = '</click2dial/calls>; rel="successor-version"'
    if response.content_type == "application/json" and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"


#: Pending connections the kernel queues for the API's listening socket (capped by
#: ``net.core.somaxconn``).
LISTEN_BACKLOG = 1024


class AccessLogger(AbstractAccessLogger):
    """One structured line per request; the path only (never the query string)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "event=http_request method=%s path=%s status=%d bytes=%d ms=%.1f remote=%s",
            quote_value(request.method),
            quote_value(request.rel_url.raw_path),
            response.status,
            response.body_length,
            time * 1000.0,
            request.remote or "-",
        )


class MalformedRequestLog(logging.LoggerAdapter[logging.Logger]):
    """The logger aiohttp's request handler reports errors to. A request its parser
    refused (:class:`~aiohttp.http_exceptions.HttpProcessingError`: anyone can send one,
    no token needed) becomes one ``event=http_malformed_request`` line at info, without a
    traceback, at most 5 a second per client address; every other error is logged as
    aiohttp logs it (with its traceback: that one is a bug)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.budget = LogThrottle(per_key=5, total=50)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if not isinstance(exc, HttpProcessingError):
            super().log(level, msg, *args, **kwargs)
            return
        remote = str(args[0]) if args else "-"
        suppressed = self.budget.admit(remote, time.monotonic())
        if suppressed is None:
            return
        log.info(
            "event=http_malformed_request remote=%s status=%d error=%s%s",
            quote_value(remote),
            exc.code,
            quote_value(exc.message, limit=200),
            f" suppressed={suppressed}" if suppressed else "",
        )


# ---- the application ------------------------------------------------------------------------


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    """Samples the notifier (for the Redis grace period) and folds finished calls' RTP
    counters in, every second, while the app runs."""
    ctx = app[CONTEXT]

    async def loop() -> None:
        while True:
            try:
                app[api_health.HEALTH].sample(ctx)
                ctx.rtp.retire_ended(ctx.calls)
            except Exception:
                log.exception("event=api_housekeeping_failed")
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    task = asyncio.get_running_loop().create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(context: ApiContext) -> web.Application:
    """The aiohttp application serving the API for ``context``."""
    app = web.Application(
        client_max_size=context.config.http.max_body_bytes,
        middlewares=[metrics_middleware, error_middleware, auth_middleware],
    )
    app[CONTEXT] = context
    api_health.setup(app)
    api_metrics.setup(app)
    api_recordings.setup(app)
    r = app.router
    r.add_post("/click2dial/calls", api_calls.create_call, name="calls")
    r.add_get("/click2dial/calls", api_calls.list_calls, name="calls_list", allow_head=False)
    r.add_get("/click2dial/calls/{id}", api_calls.get_call, name="call", allow_head=False)
    r.add_delete("/click2dial/calls/{id}", api_calls.delete_call, name="call_delete")
    # a GET that places a call: never answer HEAD with it
    r.add_get("/call.php", api_calls.legacy_create_call, name="legacy_call", allow_head=False)
    r.add_get("/click2dial/recordings/{ref}", api_recordings.get_recording, name="recording")
    r.add_get(
        "/click2dial/extensions",
        api_extensions.list_extensions,
        name="extensions",
        allow_head=False,
    )
    r.add_get("/healthz", api_health.healthz, name="healthz")
    r.add_get("/metrics", api_metrics.metrics, name="metrics", allow_head=False)
    r.add_get("/openapi.json", openapi.openapi_json, name="openapi", allow_head=False)
    app.on_response_prepare.append(_on_prepare)
    app.cleanup_ctx.append(_housekeeping)
    return app


class ApiServer:
    """Runs an application on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(
            self.app,
            access_log_class=AccessLogger,
            access_log=access_log,
            logger=MalformedRequestLog(logging.getLogger("aiohttp.server")),
            shutdown_timeout=5.0,
        )
        await runner.setup()
        try:
            # a burst of clients (a campaign's POSTs) must not overflow the accept queue:
            # aiohttp's default of 128 dropped SYNs at 50 set-ups/s (1 s, 3 s retries)
            site = web.TCPSite(runner, self.host, self.requested_port, backlog=LISTEN_BACKLOG)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("event=http_listening host=%s port=%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
