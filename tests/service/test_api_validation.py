"""SPEC §2, rule by rule, through the real HTTP API: every field, valid and invalid values
(boundaries, CR/LF, path pieces, non-ASCII digits, spaces), sent four ways — POST with a
JSON body, an urlencoded form, the query string, and the deprecated GET /call.php (plus
multipart for a sample) — and checked against the pure rules too.

A valid request must get 201 (the call then waits for a trunk that never answers and is
hung up by the test); an invalid one 422 naming the field, and no call placed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote, urlencode

import aiohttp
import pytest
import pytest_asyncio

from sipdialer.engine.request import (
    NOT_A_STRING,
    REQUIRED,
    validate_call_request,
)
from tests.fixtures.api_service import VALID, ApiLab, api_service
from tests.fixtures.number_cases import (
    CASES,
    ROUTES,
    case_id,
)

module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ApiLab]:
    async with api_service(
        tmp_path_factory.mktemp("validation"), "[calls]\nmax_concurrent = 100000\n"
    ) as lab:
        yield lab


async def send(lab: ApiLab, route: str, fields: dict[str, str]) -> aiohttp.ClientResponse:
    c = lab.client
    if route == "json":
        return await c.post("/click2dial/calls", json=fields)
    if route == "form":
        return await c.post("/click2dial/calls", data=fields)
    if route == "multipart":
        form = aiohttp.FormData(default_to_multipart=True)
        for k, v in fields.items():
            form.add_field(k, v)
        return await c.post("/click2dial/calls", data=form)
    query = urlencode(fields, quote_via=quote)
    path = "/click2dial/calls" if route == "query" else "/call.php"
    method = "POST" if route == "query" else "GET"
    return await c.request(method, f"{path}?{query}")


async def expect_created(lab: ApiLab, resp: aiohttp.ClientResponse, fields: dict[str, str]) -> None:
    body = await resp.json()
    assert resp.status == 201, body
    for name in ("agent", "callee", "outbound_id"):
        assert body[name] == fields[name]
    assert body["call_ref"] == (fields.get("call_ref") or None)
    assert resp.headers["Location"] == f"/click2dial/calls/{body['id']}"
    async with lab.client.delete(resp.headers["Location"]) as gone:
        assert gone.status in (200, 202)


def placed(lab: ApiLab) -> int:
    """Calls the dialer has ever seen (a finished call moves from active to recent)."""
    dialer = lab.service.dialer
    assert dialer is not None
    return len(dialer.active) + len(dialer.recent)


async def expect_refused(resp: aiohttp.ClientResponse, name: str) -> None:
    body = await resp.json()
    assert resp.status == 422, body
    assert body["error"] == "invalid request"
    assert list(body["fields"]) == [name], body
    assert isinstance(body["fields"][name], str) and body["fields"][name]


@module_loop
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
async def test_field_rules_over_http(lab: ApiLab, route: str, case: tuple[str, str, bool]) -> None:
    name, value, ok = case
    fields = {**VALID, name: value}
    placed_before = placed(lab)
    resp = await send(lab, route, fields)
    if ok or (name == "call_ref" and value == ""):
        await expect_created(lab, resp, fields)
    else:
        await expect_refused(resp, name)
        assert placed(lab) == placed_before
    if route == "legacy":
        assert resp.headers["Deprecation"] == "true"
        assert resp.headers["Link"] == '</click2dial/calls>; rel="successor-version"'


@module_loop
@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        ("agent", "1000", True),
        ("agent", "1000\n", False),
        ("callee", "０８２０００１２３４", False),
        ("call_ref", "x" * 128, True),
        ("call_ref", "x" * 129, False),
        ("outbound_id", "0012345678901", False),
    ],
)
async def test_multipart(lab: ApiLab, name: str, value: str, ok: bool) -> None:
    fields = {**VALID, name: value}
    resp = await send(lab, "multipart", fields)
    if ok:
        await expect_created(lab, resp, fields)
    else:
        await expect_refused(resp, name)


@module_loop
@pytest.mark.parametrize("route", ["/click2dial/calls", "/call.php"])
@pytest.mark.parametrize(
    ("raw", "bad"),
    [
        ("agent=1000%0d%0a", "agent"),
        ("agent=1000%0A", "agent"),
        ("agent=%2E%2E%2F1000", "agent"),
        ("agent=1000%00", "agent"),
        ("agent=%EF%BC%91%EF%BC%90%EF%BC%90%EF%BC%90", "agent"),  # full-width 1000
        ("agent=+1000", "agent"),  # + is a space in a query string
        ("agent=1000&agent=1001", "agent"),
        ("call_ref=a%0d%0aX:%20y&agent=1000", "call_ref"),
        ("call_ref=a%2Fb&agent=1000", "call_ref"),
    ],
)
async def test_raw_query_strings(lab: ApiLab, route: str, raw: str, bad: str) -> None:
    rest = "&".join(f"{k}={v}" for k, v in VALID.items() if k != "agent")
    method = "POST" if route == "/click2dial/calls" else "GET"
    resp = await lab.client.request(method, f"{route}?{rest}&{raw}")
    await expect_refused(resp, bad)


@module_loop
@pytest.mark.parametrize("route", ["/click2dial/calls", "/call.php"])
async def test_raw_query_same_value_twice_and_extras(lab: ApiLab, route: str) -> None:
    query = urlencode({**VALID, "extra": "ignored", "token": "x"}) + "&agent=1000"
    method = "POST" if route == "/click2dial/calls" else "GET"
    resp = await lab.client.request(method, f"{route}?{query}")
    await expect_created(lab, resp, VALID)


@module_loop
@pytest.mark.parametrize("route", ["/click2dial/calls", "/call.php"])
async def test_everything_missing_names_every_field(lab: ApiLab, route: str) -> None:
    method = "POST" if route == "/click2dial/calls" else "GET"
    resp = await lab.client.request(method, f"{route}?call_ref=a%20b")
    body = await resp.json()
    assert resp.status == 422
    assert body["fields"] == {
        "agent": REQUIRED,
        "callee": REQUIRED,
        "outbound_id": REQUIRED,
        "call_ref": body["fields"]["call_ref"],
    }
    assert "1-128" in body["fields"]["call_ref"]


@module_loop
@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({**VALID, "agent": 1000}, {"agent": NOT_A_STRING}),
        ({**VALID, "callee": 820001234}, {"callee": NOT_A_STRING}),
        ({**VALID, "agent": ["1000"]}, {"agent": NOT_A_STRING}),
        ({**VALID, "agent": {"x": "1000"}}, {"agent": NOT_A_STRING}),
        ({**VALID, "call_ref": True}, {"call_ref": NOT_A_STRING}),
        ({**VALID, "outbound_id": None}, {"outbound_id": REQUIRED}),
        ({"call_ref": 5}, None),
    ],
)
async def test_json_value_types(lab: ApiLab, body: dict[str, object], fields: object) -> None:
    async with lab.client.post("/click2dial/calls", json=body) as resp:
        doc = await resp.json()
    assert resp.status == 422
    if fields is not None:
        assert doc["fields"] == fields
    else:
        assert set(doc["fields"]) == {"agent", "callee", "outbound_id", "call_ref"}


@module_loop
async def test_json_null_call_ref_and_unknown_fields(lab: ApiLab) -> None:
    resp = await lab.client.post(
        "/click2dial/calls", json={**VALID, "call_ref": None, "campaign": {"id": 7}}
    )
    await expect_created(lab, resp, VALID)


@module_loop
@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ('{"agent": "1000", "agent": "1001", "callee": "0820001234", '
         '"outbound_id": "0123456789"}', 422),
        ('{"agent": "1000", "agent": "1000", "callee": "0820001234", '
         '"outbound_id": "0123456789"}', 201),
        ('{"agent": "1000\\n", "callee": "0820001234", "outbound_id": "0123456789"}', 422),
        ('{"agent": "1\\u0030\\u0030\\u0030", "callee": "0820001234", '
         '"outbound_id": "0123456789"}', 201),
        ('{"agent": "1\\u0660\\u0660\\u0660", "callee": "0820001234", '
         '"outbound_id": "0123456789"}', 422),
    ],
)  # fmt: skip
async def test_raw_json(lab: ApiLab, raw: str, status: int) -> None:
    resp = await lab.client.post(
        "/click2dial/calls", data=raw, headers={"Content-Type": "application/json"}
    )
    if status == 201:
        await expect_created(lab, resp, VALID)
    else:
        await expect_refused(resp, "agent")


@module_loop
async def test_query_and_body_must_agree(lab: ApiLab) -> None:
    resp = await lab.client.post("/click2dial/calls?callee=0820001235", json=VALID)
    await expect_refused(resp, "callee")
    resp = await lab.client.post("/click2dial/calls?callee=0820001234", json=VALID)
    await expect_created(lab, resp, VALID)
    only_query = {k: v for k, v in VALID.items() if k != "agent"}
    resp = await lab.client.post("/click2dial/calls?agent=1000", data=only_query)
    await expect_created(lab, resp, VALID)


@module_loop
async def test_multipart_file_part_is_no_value(lab: ApiLab) -> None:
    form = aiohttp.FormData()
    form.add_field("agent", "1000")
    form.add_field("outbound_id", "0123456789")
    form.add_field("callee", b"0820001234", filename="callee.txt")
    async with lab.client.post("/click2dial/calls", data=form) as resp:
        body = await resp.json()
    assert resp.status == 422
    assert body["fields"] == {"callee": NOT_A_STRING}


@module_loop
async def test_nothing_unvalidated_reaches_the_dialer(lab: ApiLab) -> None:
    """After all of the above, every call the dialer ever saw has valid fields."""
    dialer = lab.service.dialer
    assert dialer is not None
    for runner in [*dialer.active.values(), *dialer.recent.values()]:
        r = runner.request
        params = validate_call_request(
            {
                "agent": [r.agent],
                "callee": [r.callee],
                "outbound_id": [r.outbound_id],
                "call_ref": [r.call_ref],
            }
        )
        assert params.agent == r.agent
