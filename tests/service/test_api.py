"""The HTTP API on a real service and real sockets: the call resources, limits, auth,
recordings (HEAD, Range, ETag, traversal), health, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import soundfile

from sipdialer.api.counters import DISPOSITIONS
from sipdialer.api.openapi import document
from sipdialer.rtp.recorder import Recorder, new_recording_ref
from sipdialer.sip.message import Headers, Request, Response, parse_message
from tests.fixtures import ports
from tests.fixtures.api_service import VALID, ApiLab, StatusSink, api_service, raw_request

TOKEN = "t0ken-0123456789abcdef"


async def create(lab: ApiLab, **fields: str) -> dict[str, Any]:
    async with lab.client.post("/click2dial/calls", json={**VALID, **fields}) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return body


# ---- calls -----------------------------------------------------------------------------------


async def test_create_get_list_delete(tmp_path: Path) -> None:
    async with api_service(tmp_path) as lab:
        c = lab.client
        created = await create(lab, call_ref="crm-42")
        call_id = created["id"]
        assert re.fullmatch(r"[0-9a-f]{32}", call_id)
        assert created["status"] in ("created", "agent_ringing")
        assert created["links"]["self"] == f"/click2dial/calls/{call_id}"
        assert (created["agent"], created["callee"], created["outbound_id"]) == (
            "1000",
            "0820001234",
            "0123456789",
        )
        other = await create(lab, call_ref="crm-43")

        async with c.get(f"/click2dial/calls/{call_id}") as resp:
            assert resp.status == 200
            one = await resp.json()
        assert one["id"] == call_id and one["call_ref"] == "crm-42" and one["cdr"] is None
        assert one["timeline"] and one["timeline"][0]["at"].endswith("Z")

        async with c.get("/click2dial/calls", params={"call_ref": "crm-42"}) as resp:
            listed = await resp.json()
        assert [x["id"] for x in listed["calls"]] == [call_id]
        async with c.get("/click2dial/calls") as resp:
            everything = await resp.json()
        assert [x["id"] for x in everything["calls"]] == [other["id"], call_id]  # newest first
        async with c.get("/click2dial/calls", params={"state": "active"}) as resp:
            assert len((await resp.json())["calls"]) == 2

        async with c.delete(f"/click2dial/calls/{call_id}") as resp:
            assert resp.status == 202
            hung = await resp.json()
        assert hung["state"] == "ended"
        async with c.delete(f"/click2dial/calls/{call_id}") as resp:
            assert resp.status == 200  # idempotent
            again = await resp.json()
        cdr = again["cdr"]
        assert cdr["end_reason"] == "api_hangup" and cdr["ended_by"] == "api"
        assert cdr["disposition"] == "NO ANSWER" and cdr["call_ref"] == "crm-42"
        # the notified CDR follows within CallRunner.SETTLE (the cancelled INVITE's final)
        await lab.sink.wait_async(call_id, timeout=5)
        assert lab.sink.cdrs and lab.sink.cdrs[0].call_id == call_id

        async with c.get("/click2dial/calls", params={"state": "ended"}) as resp:
            assert [x["id"] for x in (await resp.json())["calls"]] == [call_id]
        async with c.get("/click2dial/calls", params={"limit": "1"}) as resp:
            limited = await resp.json()
        assert limited["count"] == 1 and limited["total"] == 2


@pytest.mark.parametrize(
    "target",
    [
        "/click2dial/calls/" + "0" * 32,  # well-formed, unknown
        "/click2dial/calls/nope",
        "/click2dial/calls/" + "A" * 32,  # upper-case hex: not an id we give
        "/click2dial/calls/" + "0" * 33,
        "/click2dial/calls/..%2F..%2Fetc%2Fpasswd",
        "/click2dial/calls/%00",
    ],
)
async def test_unknown_or_malformed_call_ids(tmp_path: Path, target: str) -> None:
    async with api_service(tmp_path) as lab:
        for method in ("GET", "DELETE"):
            assert await raw_request(lab.port, target, method) == 404


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("state=done", "state"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=%D9%A1", "limit"),  # Arabic-Indic one
        ("call_ref=a%20b", "call_ref"),
        ("state=active&state=ended", "state"),
    ],
)
async def test_list_filters_are_validated(tmp_path: Path, query: str, field: str) -> None:
    async with api_service(tmp_path) as lab, lab.client.get(f"/click2dial/calls?{query}") as r:
        body = await r.json()
        assert r.status == 422 and list(body["fields"]) == [field]


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'"agent"', "application/json", 400),
        (b"null", "application/json", 400),
        (b"\xff\xfe{}", "application/json", 400),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400),
        (b"agent=%ff", "application/x-www-form-urlencoded", 400),
        (b"agent=1000", "text/plain", 415),
        (b"agent=1000", "application/xml", 415),
        (b"--x\r\nbroken", "multipart/form-data; boundary=x", 400),
    ],
)
async def test_unreadable_bodies(
    tmp_path: Path, data: bytes, content_type: str, status: int
) -> None:
    async with (
        api_service(tmp_path) as lab,
        lab.client.post(
            "/click2dial/calls", data=data, headers={"Content-Type": content_type}
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == status, body
        assert body["error"]
        assert not lab.service.dialer.active  # type: ignore[union-attr]


async def test_empty_body_means_query_string_only(tmp_path: Path) -> None:
    async with api_service(tmp_path) as lab:
        query = "&".join(f"{k}={v}" for k, v in VALID.items())
        async with lab.client.post(
            f"/click2dial/calls?{query}", data=b"", headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 201


async def test_body_too_large(tmp_path: Path) -> None:
    async with api_service(tmp_path, http_extra="max_body_bytes = 1024") as lab:
        big = {**VALID, "padding": "x" * 2000}
        async with lab.client.post("/click2dial/calls", json=big) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]
        async with lab.client.post("/click2dial/calls", data=big) as resp:
            assert resp.status == 413
        async with lab.client.post("/click2dial/calls", json=VALID) as resp:
            assert resp.status == 201


async def test_max_concurrent(tmp_path: Path) -> None:
    async with api_service(tmp_path, "[calls]\nmax_concurrent = 2\n") as lab:
        first = await create(lab)
        await create(lab)
        async with lab.client.post("/click2dial/calls", json=VALID) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) > 0
        query = "&".join(f"{k}={v}" for k, v in VALID.items())
        async with lab.client.get(f"/call.php?{query}") as resp:
            assert resp.status == 429
        assert len(lab.service.dialer.active) == 2  # type: ignore[union-attr]
        # hanging up frees a slot once the call is released
        await lab.client.delete(first["links"]["self"])
        deadline = time.monotonic() + 5
        while len(lab.service.dialer.active) >= 2:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await create(lab)


async def test_no_trunk_is_503_and_not_ready(tmp_path: Path) -> None:
    async with api_service(tmp_path, trunk=None) as lab:
        async with lab.client.post("/click2dial/calls", json=VALID) as resp:
            assert resp.status == 503
        async with lab.client.get("/healthz") as resp:
            assert resp.status == 503
            assert "no trunk configured" in (await resp.json())["problems"]


class _BackloggedSink(StatusSink):
    """A notifier whose disk writes lag: it accepts no new calls."""

    accepting_calls = False


async def test_a_notifier_backlog_refuses_new_calls_with_503(tmp_path: Path) -> None:
    sink = _BackloggedSink()
    async with api_service(tmp_path, sink=sink) as lab:
        async with lab.client.post("/click2dial/calls", json=VALID) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"]
            assert (await resp.json())["error"] == "notifications backlog"
        assert len(lab.service.dialer.active) == 0  # type: ignore[union-attr]
        sink.accepting_calls = True  # the backlog drained
        async with lab.client.post("/click2dial/calls", json=VALID) as resp:
            assert resp.status == 201


async def test_legacy_route_headers_and_no_head(tmp_path: Path) -> None:
    async with api_service(tmp_path) as lab:
        query = "&".join(f"{k}={v}" for k, v in VALID.items())
        async with lab.client.get(f"/call.php?{query}&call_ref=legacy") as resp:
            assert resp.status == 201
            body = await resp.json()
            assert resp.headers["Deprecation"] == "true"
            assert resp.headers["Link"] == '</click2dial/calls>; rel="successor-version"'
            assert resp.headers["Location"] == body["links"]["self"]
            assert body["call_ref"] == "legacy"
        async with lab.client.head(f"/call.php?{query}") as resp:
            assert resp.status == 405  # a HEAD must never place a call
        async with lab.client.post(f"/call.php?{query}") as resp:
            assert resp.status == 405
            assert resp.headers["Deprecation"] == "true"
        assert len(lab.service.dialer.active) == 1  # type: ignore[union-attr]


async def test_errors_are_json(tmp_path: Path) -> None:
    async with api_service(tmp_path) as lab:
        async with lab.client.get("/nowhere") as resp:
            assert resp.status == 404 and (await resp.json())["error"]
        async with lab.client.put("/click2dial/calls") as resp:
            assert resp.status == 405
            assert "POST" in resp.headers["Allow"]
            assert (await resp.json())["error"]


# ---- auth ------------------------------------------------------------------------------------


async def test_auth(tmp_path: Path) -> None:
    ref = new_recording_ref()
    tokens = f"api_tokens = other-token-000000, {TOKEN}"
    async with api_service(tmp_path, http_extra=tokens) as lab:
        write_wav(lab.recordings / f"{ref}.wav")
        c = lab.client
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for method, path in [
            ("GET", "/click2dial/calls"),
            ("POST", "/click2dial/calls"),
            ("GET", "/click2dial/calls/" + "0" * 32),
            ("DELETE", "/click2dial/calls/" + "0" * 32),
            ("GET", "/call.php"),
            ("GET", f"/click2dial/recordings/{ref}"),
            ("HEAD", f"/click2dial/recordings/{ref}"),
            ("GET", "/metrics"),
            ("GET", "/nowhere"),
        ]:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": f"Bearer {TOKEN}x"},
                {"Authorization": "Bearer"},
                {"Authorization": "Bearer é"},
            ):
                async with c.request(method, path, headers=headers) as resp:
                    assert resp.status == 401, (method, path, headers)
                    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with c.get("/click2dial/calls", headers=bearer) as resp:
            assert resp.status == 200
        async with c.get(
            "/click2dial/calls", headers={"Authorization": "bearer other-token-000000"}
        ) as r:
            assert r.status == 200
        async with c.get("/metrics", headers=bearer) as resp:
            assert resp.status == 200
        async with c.post("/click2dial/calls", json=VALID, headers=bearer) as resp:
            assert resp.status == 201
        # ?token= works for recording links and the legacy GET, nowhere else
        async with c.get(f"/click2dial/recordings/{ref}", params={"token": TOKEN}) as resp:
            assert resp.status == 200
        async with c.get(f"/click2dial/recordings/{ref}", params={"token": "nope"}) as resp:
            assert resp.status == 401
        async with c.get("/call.php", params={**VALID, "token": TOKEN}) as resp:
            assert resp.status == 201
        async with c.get("/click2dial/calls", params={"token": TOKEN}) as resp:
            assert resp.status == 401
        # health and the document are open
        async with c.get("/healthz") as resp:
            assert resp.status == 200
        async with c.get("/openapi.json") as resp:
            assert resp.status == 200


# ---- recordings ------------------------------------------------------------------------------


def write_wav(path: Path, seconds: float = 1.0) -> bytes:
    """A real recording made by the recorder: stereo, 8 kHz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = Recorder(path, now=0.0)
    t = 0.0
    while t < seconds:
        t += 0.02
        rec.feed_a(bytes(range(160)), "PCMU", t)
        rec.feed_b(bytes(range(160, 0, -1)), "PCMA", t)
    rec.close(now=seconds)
    return path.read_bytes()


RecLab = tuple[ApiLab, str, bytes]


@pytest.fixture
async def rec_lab(tmp_path: Path) -> AsyncIterator[RecLab]:
    async with api_service(tmp_path) as lab:
        ref = new_recording_ref()
        data = write_wav(lab.recordings / f"{ref}.wav")
        yield lab, ref, data


async def test_recording_get_and_head(rec_lab: RecLab) -> None:
    lab, ref, data = rec_lab
    url = f"/click2dial/recordings/{ref}"
    async with lab.client.get(url) as resp:
        body = await resp.read()
        assert resp.status == 200
        assert body == data
        assert resp.headers["Content-Type"] == "audio/wav"
        assert int(resp.headers["Content-Length"]) == len(data)
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert resp.headers["ETag"].startswith('"')
        assert resp.headers["Last-Modified"].endswith("GMT")
        etag = resp.headers["ETag"]
    path = lab.recordings / "check.wav"
    path.write_bytes(body)
    samples, rate = soundfile.read(path)
    assert rate == 8000 and samples.shape[1] == 2
    async with lab.client.head(url) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) == len(data)
        assert resp.headers["ETag"] == etag
        assert resp.headers["Accept-Ranges"] == "bytes"
        assert await resp.read() == b""
    # HEAD ignores Range (RFC 9110 §14.2)
    async with lab.client.head(url, headers={"Range": "bytes=0-9"}) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, None),
        ("bytes=-100", -100, None),
        ("bytes=0-0", 0, 0),
        ("bytes=10-99999999", 10, None),
        ("bytes=-99999999", 0, None),
        ("BYTES=5-9", 5, 9),
    ],
)
async def test_recording_ranges(
    rec_lab: RecLab, range_header: str, start: int, end: int | None
) -> None:
    lab, ref, data = rec_lab
    size = len(data)
    first = start if start >= 0 else size + start
    last = size - 1 if end is None else end
    async with lab.client.get(
        f"/click2dial/recordings/{ref}", headers={"Range": range_header}
    ) as resp:
        body = await resp.read()
        assert resp.status == 206
        assert body == data[first : last + 1]
        assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert int(resp.headers["Content-Length"]) == last - first + 1


async def test_recording_unsatisfiable_and_ignored_ranges(rec_lab: RecLab) -> None:
    lab, ref, data = rec_lab
    url = f"/click2dial/recordings/{ref}"
    for bad in (f"bytes={len(data)}-", "bytes=99999999-", "bytes=-0"):
        async with lab.client.get(url, headers={"Range": bad}) as resp:
            assert resp.status == 416, bad
            assert resp.headers["Content-Range"] == f"bytes */{len(data)}"
    for ignored in ("bytes=9-2", "items=0-9", "bytes=0-1,5-6", "bytes=abc", "bytes="):
        async with lab.client.get(url, headers={"Range": ignored}) as resp:
            assert resp.status == 200, ignored
            assert await resp.read() == data


async def test_recording_conditionals(rec_lab: RecLab) -> None:
    lab, ref, data = rec_lab
    url = f"/click2dial/recordings/{ref}"
    async with lab.client.get(url) as resp:
        etag, modified = resp.headers["ETag"], resp.headers["Last-Modified"]
    async with lab.client.get(url, headers={"If-None-Match": etag}) as resp:
        assert resp.status == 304 and await resp.read() == b""
        assert resp.headers["ETag"] == etag
    async with lab.client.get(url, headers={"If-None-Match": f'"x", W/{etag}'}) as resp:
        assert resp.status == 304
    async with lab.client.get(url, headers={"If-None-Match": '"other"'}) as resp:
        assert resp.status == 200
    async with lab.client.get(url, headers={"If-Modified-Since": modified}) as resp:
        assert resp.status == 304
    async with lab.client.get(url, headers={"If-Match": '"other"'}) as resp:
        assert resp.status == 412
    # If-Range: a matching ETag keeps the range, a stale one gets the whole file
    async with lab.client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}) as resp:
        assert resp.status == 206 and await resp.read() == data[:10]
    async with lab.client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"old"'}) as resp:
        assert resp.status == 200 and await resp.read() == data
    async with lab.client.get(url, headers={"Range": "bytes=0-9", "If-Range": modified}) as resp:
        assert resp.status == 206


@pytest.mark.parametrize(
    "target",
    [
        "/click2dial/recordings/unknownrefunknownref12",
        "/click2dial/recordings/..%2F..%2Fetc%2Fpasswd",
        "/click2dial/recordings/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/click2dial/recordings/%2e%2e",
        "/click2dial/recordings/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/click2dial/recordings/../../etc/passwd",
        "/click2dial/recordings/%2Fetc%2Fpasswd",
        "/click2dial/recordings//etc/passwd",
        "/click2dial/recordings/abc/def",
        "/click2dial/recordings/abcdefghijklmnopqrstuv/..",
        "/click2dial/recordings/abcdefghijklmnopqrstuv.wav",
        "/click2dial/recordings/abcdefghijklmnopqrstuv%00",
        "/click2dial/recordings/abcdefghijklmnopqrstuv%0d%0a",
        "/click2dial/recordings/%E2%80%AEabcdefghijklmnopqrstu",
        "/click2dial/recordings/" + "a" * 65,
        "/click2dial/recordings/C:%5Cwindows",
        "/click2dial/recordings/%252e%252e%252fetc%252fpasswd",
    ],
)
async def test_recording_not_found_and_traversal(rec_lab: RecLab, target: str) -> None:
    lab, _, _ = rec_lab
    assert await raw_request(lab.port, target) == 404


async def test_recording_symlink_and_non_file_refused(rec_lab: RecLab) -> None:
    lab, _, _ = rec_lab
    link = new_recording_ref()
    os.symlink("/etc/passwd", lab.recordings / f"{link}.wav")
    directory = new_recording_ref()
    (lab.recordings / f"{directory}.wav").mkdir()
    outside = lab.recordings.parent / "outside"
    outside.mkdir()
    escaped = new_recording_ref()
    write_wav(outside / f"{escaped}.wav")
    os.symlink(outside / f"{escaped}.wav", lab.recordings / f"{escaped}.wav")
    for ref in (link, directory, escaped):
        async with lab.client.get(f"/click2dial/recordings/{ref}") as resp:
            assert resp.status == 404, ref


# ---- health ----------------------------------------------------------------------------------


async def test_health_follows_the_notifier(tmp_path: Path) -> None:
    sink = StatusSink()
    extra = "[redis]\nhealth_grace = 0.3\n"
    async with api_service(tmp_path, extra, sink=sink) as lab:
        async with lab.client.get("/healthz") as resp:
            doc = await resp.json()
            assert resp.status == 200 and doc["ready"] is True
        assert doc["notifier"]["redis_ok"] is True and doc["notifier"]["outbox_depth"] == 0
        assert doc["calls"] == {"active": 0, "max_concurrent": 100}
        sink.state.update(redis_ok=False, last_error="connection refused", outbox_depth=3)
        async with lab.client.get("/healthz") as resp:
            assert resp.status == 200  # within the grace period
        await asyncio.sleep(0.5)
        async with lab.client.get("/healthz") as resp:
            doc = await resp.json()
            assert resp.status == 503
        assert doc["ready"] is False and doc["status"] == "unavailable"
        assert any("redis" in p for p in doc["problems"])
        assert doc["notifier"]["last_error"] == "connection refused"
        assert doc["notifier"]["outbox_depth"] == 3
        async with lab.client.head("/healthz") as resp:
            assert resp.status == 503
        sink.state.update(redis_ok=True, last_error=None, outbox_depth=0)
        async with lab.client.get("/healthz") as resp:
            assert resp.status == 200


class BrokenStatusSink(StatusSink):
    def status(self) -> dict[str, Any]:
        raise RuntimeError("boom")


async def test_health_survives_a_broken_notifier_status(tmp_path: Path) -> None:
    async with api_service(tmp_path, "[redis]\nhealth_grace = 0\n", sink=BrokenStatusSink()) as lab:
        async with lab.client.get("/healthz") as resp:
            doc = await resp.json()
        assert resp.status == 503 and "status() failed" in doc["notifier"]["error"]
        async with lab.client.get("/metrics") as resp:
            assert resp.status == 200


class Registrar(asyncio.DatagramProtocol):
    """A trunk that answers REGISTER with 200 once told to (and ignores it until then)."""

    def __init__(self) -> None:
        self.answering = False
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = parse_message(data)
        if not isinstance(msg, Request) or not self.answering or self.transport is None:
            return
        h = msg.headers
        headers = Headers([("Via", v) for v in h.get_all("Via")])
        headers.add("From", h.get("From") or "")
        headers.add("To", (h.get("To") or "") + ";tag=reg1")
        headers.add("Call-ID", h.get("Call-ID") or "")
        headers.add("CSeq", h.get("CSeq") or "")
        headers.add("Contact", (h.get("Contact") or "") + ";expires=60")
        self.transport.sendto(bytes(Response(200, "OK", headers)), addr)


async def test_health_follows_the_trunk_registration(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    port = ports.free_port("udp")
    registrar = Registrar()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: registrar, local_addr=("127.0.0.1", port)
    )
    trunk = (
        f"[trunk]\nregistrar = 127.0.0.1:{port}\ndomain = trunk.test\nusername = dialer\n"
        "password = pw\nexpires = 60\n"
    )
    try:
        async with api_service(tmp_path, sip_extra="t1 = 0.01", trunk=trunk) as lab:
            async with lab.client.get("/healthz") as resp:
                doc = await resp.json()
                assert resp.status == 503, doc
            assert doc["trunk"]["state"] in ("registering", "failed")
            assert any("trunk not registered" in p for p in doc["problems"])
            async with lab.client.get("/metrics") as resp:
                assert "sipdialer_trunk_registered 0" in await resp.text()
            registrar.answering = True
            deadline = time.monotonic() + 40
            while True:
                async with lab.client.get("/healthz") as resp:
                    doc = await resp.json()
                    if resp.status == 200:
                        break
                assert time.monotonic() < deadline, doc
                await asyncio.sleep(0.1)
            assert doc["trunk"]["state"] == "registered" and doc["trunk"]["registered"] is True
            assert 0 < doc["trunk"]["expires_in"] <= 60
            async with lab.client.get("/metrics") as resp:
                assert "sipdialer_trunk_registered 1" in await resp.text()
    finally:
        transport.close()
        ports.release([port])


# ---- metrics ---------------------------------------------------------------------------------

SAMPLE = re.compile(
    r'[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? '
    r"(-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|NaN|[+-]Inf)"
)


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+", line), line
            continue
        assert SAMPLE.fullmatch(line), line
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


async def test_metrics(tmp_path: Path) -> None:
    sink = StatusSink()
    sink.state.update(outbox_depth=4, pushed_total=17)
    async with api_service(tmp_path, sink=sink) as lab:
        created = await create(lab)
        async with lab.client.get("/click2dial/calls/" + "0" * 32) as resp:
            assert resp.status == 404
        async with lab.client.get("/no/such/route") as resp:
            assert resp.status == 404
        async with lab.client.get("/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            m = parse_metrics(await resp.text())
        # API latency by route name and status class (this scrape is not in it yet)
        latency = "sipdialer_http_request_duration_seconds"
        assert m[f'{latency}_count{{route="calls",status_class="2xx"}}'] == 1
        assert m[f'{latency}_count{{route="call",status_class="4xx"}}'] == 1
        assert m[f'{latency}_count{{route="unmatched",status_class="4xx"}}'] == 1
        assert m[f'{latency}_bucket{{le="+Inf",route="calls",status_class="2xx"}}'] == 1
        assert not any(k.startswith(f'{latency}_count{{route="metrics"') for k in m)
        # call set-up time (no call has been bridged) and the process collector
        assert m["sipdialer_call_setup_seconds_count"] == 0
        assert m['sipdialer_call_setup_seconds_bucket{le="+Inf"}'] == 0
        assert m["process_resident_memory_bytes"] > 0
        assert m["process_open_fds"] > 0
        assert m["sipdialer_calls_active"] == 1
        for d in DISPOSITIONS:
            assert m[f'sipdialer_calls_total{{disposition="{d}"}}'] == 0
        assert m["sipdialer_redis_up"] == 1
        assert m["sipdialer_notify_outbox_depth"] == 4
        assert m["sipdialer_notify_pushed_total"] == 17
        assert 'sipdialer_rtp_packets_received_total{leg="agent"}' in m
        assert "sipdialer_trunk_registered" not in m  # register = no
        await lab.client.delete(created["links"]["self"])
        deadline = time.monotonic() + 5
        while lab.service.dialer.active:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        async with lab.client.get("/metrics") as resp:
            m = parse_metrics(await resp.text())
        assert m['sipdialer_calls_total{disposition="NO ANSWER"}'] == 1
        assert m["sipdialer_calls_active"] == 0
        assert m["sipdialer_call_setup_seconds_count"] == 0  # never bridged
        assert m[f'{latency}_count{{route="metrics",status_class="2xx"}}'] == 1
        assert m[f'{latency}_count{{route="call_delete",status_class="2xx"}}'] == 1


# ---- the OpenAPI document --------------------------------------------------------------------


def _openapi_path(canonical: str) -> str:
    return canonical  # aiohttp's {name} placeholders are OpenAPI's


async def test_openapi_describes_every_route(tmp_path: Path) -> None:
    async with api_service(tmp_path) as lab:
        async with lab.client.get("/openapi.json") as resp:
            served = await resp.json()
        assert served == document()
        assert served["openapi"].startswith("3.1")
        app = lab.service.http.app  # type: ignore[union-attr]
        routed: set[tuple[str, str]] = set()
        for route in app.router.routes():
            path = _openapi_path(route.resource.canonical)  # type: ignore[union-attr]
            routed.add((route.method.lower(), path))
        documented = {
            (method, path)
            for path, item in served["paths"].items()
            for method in item
            if method in ("get", "head", "post", "put", "delete", "patch", "options")
        }
        assert routed == documented
        for method, path in documented:
            op = served["paths"][path][method]
            assert op["responses"], (method, path)
            assert op.get("operationId"), (method, path)
