"""The download planner (RFC 9110 conditionals and byte ranges), case by case."""

from __future__ import annotations

import pytest

from sipdialer.api.ranges import Plan, Validators, http_date, plan_download

SIZE = 1000
V = Validators.of(SIZE, 1_700_000_000_123_456_789)
LM = http_date(V.last_modified)
EARLIER = http_date(V.last_modified - 60)
LATER = http_date(V.last_modified + 60)


def test_validators() -> None:
    assert V.etag == f'"{1_700_000_000_123_456_789:x}-{SIZE:x}"'
    assert V.last_modified == 1_700_000_000
    assert LM == "Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=0-99"}, Plan(206, 0, 100, "bytes 0-99/1000")),
        ({"Range": "bytes=100-"}, Plan(206, 100, 900, "bytes 100-999/1000")),
        ({"Range": "bytes=-100"}, Plan(206, 900, 100, "bytes 900-999/1000")),
        ({"Range": "bytes=-5000"}, Plan(206, 0, SIZE, "bytes 0-999/1000")),
        ({"Range": "bytes=999-"}, Plan(206, 999, 1, "bytes 999-999/1000")),
        ({"Range": "bytes=0-5000"}, Plan(206, 0, SIZE, "bytes 0-999/1000")),
        ({"Range": "bytes= 0-9 "}, Plan(206, 0, 10, "bytes 0-9/1000")),
        ({"Range": "bytes=0-9,"}, Plan(206, 0, 10, "bytes 0-9/1000")),
        ({"Range": "bytes=0-9, 2000-3000"}, Plan(206, 0, 10, "bytes 0-9/1000")),
        ({"Range": "bytes=1000-"}, Plan(416, content_range="bytes */1000")),
        ({"Range": "bytes=1000-2000"}, Plan(416, content_range="bytes */1000")),
        ({"Range": "bytes=-0"}, Plan(416, content_range="bytes */1000")),
        ({"Range": "bytes=1000-,2000-"}, Plan(416, content_range="bytes */1000")),
        # ignored: the whole file
        ({"Range": "bytes=9-2"}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=0-1,5-6"}, Plan(200, 0, SIZE)),
        ({"Range": "items=0-9"}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=a-b"}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=-"}, Plan(200, 0, SIZE)),
        ({"Range": "bytes="}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=0-9;x"}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=٠-٩"}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=" + "9" * 40 + "-"}, Plan(200, 0, SIZE)),
        # conditionals
        ({"If-None-Match": V.etag}, Plan(304)),
        ({"If-None-Match": f"W/{V.etag}"}, Plan(304)),
        ({"If-None-Match": "*"}, Plan(304)),
        ({"If-None-Match": f'"a", {V.etag}'}, Plan(304)),
        ({"If-None-Match": '"a"'}, Plan(200, 0, SIZE)),
        ({"If-None-Match": "garbage"}, Plan(200, 0, SIZE)),
        ({"If-Modified-Since": LM}, Plan(304)),
        ({"If-Modified-Since": LATER}, Plan(304)),
        ({"If-Modified-Since": EARLIER}, Plan(200, 0, SIZE)),
        ({"If-Modified-Since": "yesterday"}, Plan(200, 0, SIZE)),
        ({"If-None-Match": '"a"', "If-Modified-Since": LM}, Plan(200, 0, SIZE)),
        ({"If-Match": V.etag}, Plan(200, 0, SIZE)),
        ({"If-Match": "*"}, Plan(200, 0, SIZE)),
        ({"If-Match": f"W/{V.etag}"}, Plan(412)),  # strong comparison
        ({"If-Match": '"a"'}, Plan(412)),
        ({"If-Unmodified-Since": EARLIER}, Plan(412)),
        ({"If-Unmodified-Since": LM}, Plan(200, 0, SIZE)),
        ({"If-Unmodified-Since": "nonsense"}, Plan(200, 0, SIZE)),
        ({"If-Match": V.etag, "If-Unmodified-Since": EARLIER}, Plan(200, 0, SIZE)),
        # If-Range
        ({"Range": "bytes=0-9", "If-Range": V.etag}, Plan(206, 0, 10, "bytes 0-9/1000")),
        ({"Range": "bytes=0-9", "If-Range": f"W/{V.etag}"}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=0-9", "If-Range": '"old"'}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=0-9", "If-Range": LM}, Plan(206, 0, 10, "bytes 0-9/1000")),
        ({"Range": "bytes=0-9", "If-Range": LATER}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=0-9", "If-Range": "junk"}, Plan(200, 0, SIZE)),
        ({"Range": "bytes=2000-", "If-Range": '"old"'}, Plan(200, 0, SIZE)),
    ],
)
def test_plan_get(headers: dict[str, str], expected: Plan) -> None:
    assert plan_download("GET", headers, SIZE, V) == expected


def test_head_ignores_range_but_not_conditionals() -> None:
    assert plan_download("HEAD", {"Range": "bytes=0-9"}, SIZE, V) == Plan(200, 0, SIZE)
    assert plan_download("HEAD", {"Range": "bytes=5000-"}, SIZE, V) == Plan(200, 0, SIZE)
    assert plan_download("HEAD", {"If-None-Match": V.etag}, SIZE, V) == Plan(304)


def test_empty_file() -> None:
    v = Validators.of(0, 1)
    assert plan_download("GET", {}, 0, v) == Plan(200, 0, 0)
    assert plan_download("GET", {"Range": "bytes=0-"}, 0, v).status == 416
    assert plan_download("GET", {"Range": "bytes=-5"}, 0, v).status == 416
