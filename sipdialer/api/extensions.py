"""``GET /click2dial/extensions``: the configured extensions and their registered phones.

Owns only the listing; the bindings belong to :class:`~sipdialer.sip.registrar.Registrar`.
Passwords are never shown.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from sipdialer.api.context import CONTEXT


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def list_extensions(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    now = time.time()
    registrar = ctx.registrar
    out = []
    for ext in sorted(ctx.config.extensions):
        bindings = registrar.lookup(ext, now) if registrar is not None else []
        out.append(
            {
                "extension": ext,
                "registered": bool(bindings),
                "contacts": [
                    {
                        "contact": b.contact_uri,
                        "source": f"{b.source[0]}:{b.source[1]}",
                        "transport": b.transport,
                        "expires_in": b.expires_in(now),
                        "user_agent": b.user_agent,
                        "registered_at": _iso(b.registered_at),
                    }
                    for b in bindings
                ],
            }
        )
    return web.json_response({"extensions": out})
