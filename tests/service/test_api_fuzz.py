"""Schemathesis against the API's own OpenAPI document: for every operation, generated
requests (valid and invalid by the schema) to a live service on a real port must never
get a 5xx. Bounded: at most 30 examples per operation.

The service runs in a thread of its own (schemathesis' calls are synchronous); its trunk
answers nothing and ``t1`` is tiny, so the calls the fuzzer creates fail fast at the SIP
level, and ``max_concurrent`` is low so that 429 is exercised too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import uvloop
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from sipdialer.api.openapi import document
from tests.fixtures.api_service import api_service
from tests.service.test_api import write_wav

schema = schemathesis.openapi.from_dict(document())

#: A recording that exists, so that Range and the conditional headers meet a real file:
#: a second schema pins the reference to it.
REF = "fuzzRecording0123456789"


def _pinned_recording_document() -> dict[str, Any]:
    doc = document()
    for param in doc["paths"]["/click2dial/recordings/{ref}"]["parameters"]:
        if param["name"] == "ref":
            param["schema"] = {"type": "string", "enum": [REF]}
    return doc


recording_schema = schemathesis.openapi.from_dict(_pinned_recording_document()).include(
    path_regex="recordings"
)


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    loop = uvloop.new_event_loop()  # the loop sipdialer serve runs
    thread = threading.Thread(target=loop.run_forever, name="api-fuzz", daemon=True)
    thread.start()
    lab_cm = api_service(
        tmp_path_factory.mktemp("fuzz"),
        "[calls]\nmax_concurrent = 5\n",
        sip_extra="t1 = 0.01",
        http_extra="max_body_bytes = 4096",
    )
    try:
        lab = asyncio.run_coroutine_threadsafe(lab_cm.__aenter__(), loop).result(15)
        write_wav(lab.recordings / f"{REF}.wav")
        try:
            yield lab.base
        finally:
            asyncio.run_coroutine_threadsafe(lab_cm.__aexit__(None, None, None), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


BOUNDED = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@schema.parametrize()
@BOUNDED
def test_no_server_errors(case: schemathesis.Case, live_url: str) -> None:
    response = case.call(base_url=live_url, timeout=10)
    case.validate_response(response, checks=[not_a_server_error])


@recording_schema.parametrize()
@BOUNDED
def test_no_server_errors_on_a_real_recording(case: schemathesis.Case, live_url: str) -> None:
    response = case.call(base_url=live_url, timeout=10)
    case.validate_response(response, checks=[not_a_server_error])
