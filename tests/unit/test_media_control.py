"""The media workers' control channel (sipdialer.rtp.control): framing, every message's
round trip, every field's validation (the error names the field), SRTP keys kept out of
reprs and errors, and garbage of every kind raising ControlError and nothing else.
Also the pool's port slicing (sipdialer.rtp.pool.split_ports), which is pure."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipdialer.config import ConfigError, parse_config, usable_cpus
from sipdialer.rtp import control as c
from sipdialer.rtp.pool import split_ports

KEY30 = bytes(range(30))
LEG = c.LegStats(
    packets_in=1,
    bytes_in=172,
    packets_out=2,
    packets_dropped=3,
    packets_foreign=4,
    srtp_forged=5,
    srtp_replayed=6,
    idle=1.5,
    source=("192.0.2.1", 4000),
    remote=("192.0.2.1", 4000),
)
STATS = c.BridgeStats(7, 3, LEG, c.LegStats(), playing=True, recording_error="disk full")
RESULT = c.RecordingResult("/rec/x.wav", 8000, 1.0, False, False, 1, 2, 3, None)

REQUESTS: list[c.Request] = [
    c.OpenBridge(1, 7, "127.0.0.1"),
    c.SetRemote(7, "A", "192.0.2.1", 4000, c.CodecSpec("PCMU", 0, 101)),
    c.SetRemote(7, "B", "::1", 4002, c.CodecSpec("PCMA", 8, None)),
    c.Hold(7, "B", True),
    c.Connect(7),
    c.DefineTone("ringback", b"\x01\x00\xff\x7f"),
    c.PlayToA(7, "ringback"),
    c.PlayToA(7, None),
    c.StartRecording(2, 7, "/var/rec/abc.wav"),
    c.StopRecording(7),
    c.SetSrtp(3, 7, "A", c.SrtpParams("AES_CM_128_HMAC_SHA1_80", KEY30), None),
    c.SetSrtp(4, 7, "B", None, c.SrtpParams("AEAD_AES_256_GCM", bytes(44))),
    c.SetSrtp(None, 7, "B", c.SrtpParams("AEAD_AES_128_GCM", bytes(28)), None),
    c.CloseBridge(5, 7),
    c.Query(6, 7),
]

EVENTS: list[c.Event] = [
    c.Hello(1234, c.PROTOCOL_VERSION, 20000, 24999),
    c.Opened(1, 7, 20002, 20004),
    c.Done(2, 7),
    c.Failed(3, 7, "srtp", None, "unsupported"),
    c.Failed(None, None, "invalid", "codec.pt", "codec.pt: 200 is outside 0-127"),
    c.Closed(5, STATS, RESULT),
    c.Closed(None, STATS, None),
    c.Stats(None, (STATS, STATS)),
    c.Stats(6, ()),
]


def body(msg: c.Request | c.Event) -> bytes:
    return c.encode(msg)[4:]


def wire(msg: c.Request | c.Event) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(body(msg))
    return d


def dumps(d: object) -> bytes:
    return json.dumps(d).encode()


# ---- round trips and framing -------------------------------------------------------------


@pytest.mark.parametrize("msg", REQUESTS, ids=lambda m: type(m).__name__)
def test_request_round_trip(msg: c.Request) -> None:
    assert c.parse_request(body(msg)) == msg


@pytest.mark.parametrize("msg", EVENTS, ids=lambda m: type(m).__name__)
def test_event_round_trip(msg: c.Event) -> None:
    assert c.parse_event(body(msg)) == msg


def test_requests_are_not_events_and_back() -> None:
    with pytest.raises(c.ControlError) as e:
        c.parse_event(body(c.Connect(7)))
    assert e.value.field == "ev"
    with pytest.raises(c.ControlError) as e:
        c.parse_request(body(c.Done(1, 7)))
    assert e.value.field == "op"


def test_frames_split_anywhere() -> None:
    stream = b"".join(c.encode(m) for m in REQUESTS)
    reader = c.FrameReader()
    got: list[bytes] = []
    for i in range(len(stream)):  # one byte at a time
        got += reader.feed(stream[i : i + 1])
    assert [c.parse_request(b) for b in got] == REQUESTS
    assert reader.pending == 0


@given(st.lists(st.integers(min_value=1, max_value=50), max_size=40))
def test_frames_any_chunking(cuts: list[int]) -> None:
    stream = b"".join(c.encode(m) for m in EVENTS)
    reader = c.FrameReader()
    got: list[bytes] = []
    pos = 0
    for n in cuts:
        got += reader.feed(stream[pos : pos + n])
        pos += n
    got += reader.feed(stream[pos:])
    assert [c.parse_event(b) for b in got] == EVENTS


@pytest.mark.parametrize("length", [0, c.MAX_FRAME + 1, 2**32 - 1])
def test_frame_length_out_of_bounds(length: int) -> None:
    with pytest.raises(c.ControlError) as e:
        c.FrameReader().feed(struct.pack(">I", length) + b"{}")
    assert e.value.field == "frame"


def test_encode_refuses_an_oversize_frame() -> None:
    bridges = tuple(
        c.BridgeStats(i + 1, 0, LEG, LEG, recording_error="x" * 1000) for i in range(300)
    )
    with pytest.raises(c.ControlError) as e:
        c.encode(c.Stats(None, bridges))
    assert e.value.field == "frame"


def test_the_largest_tone_fits_a_frame() -> None:
    msg = c.DefineTone("big", b"\x00\x01" * c.MAX_TONE_SAMPLES)
    assert c.parse_request(body(msg)) == msg


@pytest.mark.parametrize(
    "payload", [b"", b"\xff\xfe", b"nope", b"[1, 2]", b'"op"', b"null", b"[" * 100_000]
)
def test_not_a_json_object(payload: bytes) -> None:
    with pytest.raises(c.ControlError) as e:
        c.parse_request(payload)
    assert e.value.field == "frame"


# ---- every field is checked and named -----------------------------------------------------


def _set(d: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """``d`` with the field at dotted ``path`` set (``...`` deletes it)."""
    out = json.loads(json.dumps(d))
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last: Any = int(keys[-1]) if isinstance(node, list) else keys[-1]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


OPEN = wire(REQUESTS[0])
REMOTE = wire(REQUESTS[1])
SRTP = wire(REQUESTS[10])
TONE = wire(REQUESTS[5])
START = wire(REQUESTS[8])

BAD_REQUESTS = [
    (OPEN, "req", 0, "req"),
    (OPEN, "req", True, "req"),
    (OPEN, "req", 1.0, "req"),
    (OPEN, "req", 2**53, "req"),
    (OPEN, "bridge", "7", "bridge"),
    (OPEN, "bridge", -1, "bridge"),
    (OPEN, "bridge", ..., "bridge"),
    (OPEN, "host", "", "host"),
    (OPEN, "host", "x" * 65, "host"),
    (OPEN, "host", "127.0.0.1\x00", "host"),
    (OPEN, "extra", 1, "extra"),
    (OPEN, "op", "opne", "op"),
    (OPEN, "op", 3, "op"),
    (REMOTE, "leg", "C", "leg"),
    (REMOTE, "leg", "a", "leg"),
    (REMOTE, "port", 65536, "port"),
    (REMOTE, "port", None, "port"),
    (REMOTE, "codec", "PCMU", "codec"),
    (REMOTE, "codec.name", "G729", "codec.name"),
    (REMOTE, "codec.pt", 128, "codec.pt"),
    (REMOTE, "codec.pt", False, "codec.pt"),
    (REMOTE, "codec.dtmf_pt", 0, "codec.dtmf_pt"),
    (REMOTE, "codec.dtmf_pt", ..., "codec.dtmf_pt"),
    (REMOTE, "codec.x", 1, "codec.x"),
    (wire(REQUESTS[3]), "on", 1, "on"),
    (TONE, "name", "ring back", "name"),
    (TONE, "samples", "!!!", "samples"),
    (TONE, "samples", base64.b64encode(b"\x00").decode(), "samples"),
    (TONE, "samples", base64.b64encode(bytes(2 * c.MAX_TONE_SAMPLES + 2)).decode(), "samples"),
    (wire(REQUESTS[6]), "tone", "", "tone"),
    (START, "path", "relative.wav", "path"),
    (START, "path", "/" + "x" * 5000, "path"),
    (SRTP, "inbound.suite", "NULL_CIPHER", "inbound.suite"),
    (SRTP, "inbound.key", base64.b64encode(bytes(29)).decode(), "inbound.key"),
    (SRTP, "inbound.key", "not base64!", "inbound.key"),
    (SRTP, "inbound.other", 1, "inbound.other"),
    (SRTP, "outbound", [], "outbound"),
    (wire(REQUESTS[12]), "req", ..., "req"),
]


@pytest.mark.parametrize(("good", "path", "value", "field"), BAD_REQUESTS)
def test_invalid_request_names_the_field(
    good: dict[str, Any], path: str, value: object, field: str
) -> None:
    with pytest.raises(c.ControlError) as e:
        c.parse_request(dumps(_set(good, path, value)))
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ")


CLOSED = wire(EVENTS[5])
STATS_EV = wire(EVENTS[7])

BAD_EVENTS = [
    (wire(EVENTS[0]), "high", 19999, "high"),
    (wire(EVENTS[0]), "pid", 0, "pid"),
    (wire(EVENTS[1]), "a_port", 0, "a_port"),
    (wire(EVENTS[3]), "kind", "oops", "kind"),
    (wire(EVENTS[3]), "error", "x" * 1001, "error"),
    (CLOSED, "stats.a", [1, 2], "stats.a"),
    (CLOSED, "stats.a.0", -1, "stats.a.packets_in"),
    (CLOSED, "stats.a.5", 1.0, "stats.a.srtp_forged"),
    (CLOSED, "stats.a.6", None, "stats.a.srtp_replayed"),
    (CLOSED, "stats.b.7", float("inf"), "stats.b.idle"),
    (CLOSED, "stats.b.7", -0.5, "stats.b.idle"),
    (CLOSED, "stats.a.8", ["h"], "stats.a.source"),
    (CLOSED, "stats.a.9", ["h", 70000], "stats.a.remote[1]"),
    (CLOSED, "stats.playing", "yes", "stats.playing"),
    (CLOSED, "recording.frames", 1.5, "recording.frames"),
    (CLOSED, "recording.partial", 0, "recording.partial"),
    (CLOSED, "recording.path", "x.wav", "recording.path"),
    (STATS_EV, "bridges", {}, "bridges"),
    (STATS_EV, "bridges.1.applied", "3", "bridges[1].applied"),
    (STATS_EV, "bridges.0.a.3", 2**63, "bridges[0].a.packets_dropped"),
    (STATS_EV, "bridges.1.bridge", 0, "bridges[1].bridge"),
]


@pytest.mark.parametrize(("good", "path", "value", "field"), BAD_EVENTS)
def test_invalid_event_names_the_field(
    good: dict[str, Any], path: str, value: object, field: str
) -> None:
    text = json.dumps(_set(good, path, value), allow_nan=True).encode()
    with pytest.raises(c.ControlError) as e:
        c.parse_event(text)
    assert e.value.field == field


def test_too_many_bridges_in_one_stats_frame() -> None:
    d = {"ev": "stats", "req": None, "bridges": [STATS.to_wire()] * (c.MAX_STATS_PER_FRAME + 1)}
    with pytest.raises(c.ControlError) as e:
        c.parse_event(dumps(d))
    assert e.value.field == "bridges"


def test_request_ids_of_an_invalid_request() -> None:
    bad = dumps(_set(OPEN, "host", 5))
    assert c.request_ids(bad) == (1, 7)
    assert c.request_ids(b"garbage") == (None, None)
    assert c.request_ids(dumps({"req": True, "bridge": 2**60})) == (None, None)


# ---- SRTP keys are secrets ----------------------------------------------------------------


def test_srtp_key_stays_out_of_repr_and_errors() -> None:
    secret = bytes(range(100, 130))
    msg = c.SetSrtp(3, 7, "A", c.SrtpParams("AES_CM_128_HMAC_SHA1_80", secret), None)
    b64 = base64.b64encode(secret).decode()
    assert secret.hex() not in repr(msg) and str(secret) not in repr(msg)
    assert b64 not in repr(msg)
    parsed = c.parse_request(body(msg))
    assert parsed == msg and b64 not in repr(parsed)
    # a wrong-length key: the error says so without echoing it
    short = base64.b64encode(secret[:29]).decode()
    with pytest.raises(c.ControlError) as e:
        c.parse_request(dumps(_set(wire(msg), "inbound.key", short)))
    assert short not in str(e.value)
    with pytest.raises(c.ControlError) as e:
        c.SrtpParams("AES_CM_128_HMAC_SHA1_80", secret[:10])
    assert secret[:10].hex() not in str(e.value)


def test_srtp_params_checks_suite_and_length() -> None:
    for suite, n in c.SRTP_KEY_LENGTHS.items():
        c.SrtpParams(suite, bytes(n))
        with pytest.raises(c.ControlError):
            c.SrtpParams(suite, bytes(n + 1))
    with pytest.raises(c.ControlError):
        c.SrtpParams("F8_128_HMAC_SHA1_80", bytes(30))


# ---- garbage ------------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=6)
    ),
    max_leaves=30,
)
_OPS = [wire(m)["op"] for m in REQUESTS]
_EVS = [wire(m)["ev"] for m in EVENTS]


def _only_control_errors(parse: Any, payload: bytes) -> None:
    try:
        parse(payload)
    except c.ControlError as exc:
        assert exc.field
        assert str(exc).startswith(exc.field)


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    _only_control_errors(c.parse_request, data)
    _only_control_errors(c.parse_event, data)
    reader = c.FrameReader()
    try:
        reader.feed(data)
    except c.ControlError as exc:
        assert exc.field == "frame"


@settings(max_examples=150)
@given(st.sampled_from(_OPS), st.dictionaries(st.text(max_size=12), _json, max_size=8))
def test_random_requests(op: str, fields: dict[str, Any]) -> None:
    _only_control_errors(c.parse_request, dumps({**fields, "op": op}))


@settings(max_examples=150)
@given(st.sampled_from(_EVS), st.dictionaries(st.text(max_size=12), _json, max_size=8))
def test_random_events(ev: str, fields: dict[str, Any]) -> None:
    _only_control_errors(c.parse_event, dumps({**fields, "ev": ev}))


def _paths(node: Any, prefix: str = "") -> list[str]:
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        p = f"{prefix}{k}"
        out.append(p)
        if isinstance(v, dict | list) and v:
            out += _paths(v, p + ".")
    return out


_GOOD = [wire(m) for m in [*REQUESTS, *EVENTS]]


@settings(max_examples=300)
@given(st.data())
def test_one_field_mutated(data: st.DataObject) -> None:
    """A valid message with one field replaced by any JSON value: it parses (to a valid
    message that encodes again) or fails with ControlError naming a field."""
    good = data.draw(st.sampled_from(_GOOD))
    path = data.draw(st.sampled_from(_paths(good)))
    value = data.draw(_json)
    mutated = dumps(_set(good, path, value))
    parse = c.parse_request if "op" in good else c.parse_event
    try:
        msg = parse(mutated)
    except c.ControlError as exc:
        assert exc.field
    else:
        assert parse(body(msg)) == msg


# ---- port slices --------------------------------------------------------------------------


def test_split_ports_disjoint_even_slices() -> None:
    slices = split_ports(20000, 29999, 3)
    assert len(slices) == 3
    evens = [set(range(lo + (lo & 1), hi + 1, 2)) for lo, hi in slices]
    assert sum(len(e) for e in evens) == 5000
    assert not (evens[0] & evens[1]) and not (evens[1] & evens[2])
    assert max(len(e) for e in evens) - min(len(e) for e in evens) <= 1
    assert slices[0][0] == 20000 and slices[-1][1] == 29999
    # odd bounds: the slices still cover every even port and stay in range
    odd = split_ports(20001, 20011, 2)
    assert odd == [(20002, 20007), (20008, 20011)]


def test_split_ports_refuses_too_small_a_range() -> None:
    with pytest.raises(ValueError, match="too few"):
        split_ports(20000, 20006, 3)
    with pytest.raises(ValueError):
        split_ports(20000, 29999, 0)


# ---- [media] workers ----------------------------------------------------------------------


def test_media_workers_config() -> None:
    # auto, the default: one worker per CPU this process may use
    assert parse_config("").media.workers == usable_cpus()
    assert parse_config("[media]\nworkers = auto\n").media.workers == usable_cpus()
    assert parse_config("[media]\nworkers = 2\n").media.workers == 2
    assert parse_config("[media]\nworkers = 0\n").media.workers == 0  # in-process relay
    # auto never asks for more workers than the port range can give two even ports each
    assert parse_config("[sip]\nrtp_ports = 20000-20003\n").media.workers == min(usable_cpus(), 1)


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "65", ""])
def test_media_workers_config_rejects(value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[media\] workers"):
        parse_config(f"[media]\nworkers = {value}\n")


def test_media_workers_need_ports() -> None:
    text = "[sip]\nrtp_ports = 20000-20007\n[media]\nworkers = {}\n"
    assert parse_config(text.format(2)).media.workers == 2  # 4 even ports: 2 each
    with pytest.raises(ConfigError, match=r"\[media\] workers: 3 workers"):
        parse_config(text.format(3))
    with pytest.raises(ConfigError, match=r"\[media\] x"):
        parse_config("[media]\nx = 1\n")


_TRICKY: list[Any] = [
    -1,
    0,
    1,
    2**63 - 1,
    2**63,
    0.0,
    -0.0,
    -1e-9,
    1.5,
    float("nan"),
    float("inf"),
    c._IDLE_MAX,
    c._IDLE_MAX * 1.01,
    True,
    False,
    None,
    "",
    "7",
    [],
    {},
]
_ADDRS: list[Any] = [
    ["h", 0],
    ["h", 65535],
    ["h", 65536],
    ["h", -1],
    ["h", True],
    ["h", 1.0],
    ["", 1],
    ["x" * 64, 1],
    ["x" * 65, 1],
    ["a\x00b", 1],
    [5, 1],
    ["h"],
    ["h", 1, 2],
    ("h", 1),
]
_VALID_LEG = [1, 2, 3, 4, 5, 6, 7, 0.5, ["h", 1], None]


@pytest.mark.parametrize("index", range(10))
def test_leg_stats_fast_path_agrees_with_the_checks(index: int) -> None:
    """The fast path accepts exactly what the field-by-field checks accept: each field of
    a valid leg replaced by each edge value."""

    def outcome(parse: Any, v: list[Any]) -> object:
        try:
            return parse(v, "a")
        except c.ControlError as exc:
            return exc.field

    for value in _TRICKY + _ADDRS:
        v = list(_VALID_LEG)
        v[index] = value
        assert outcome(c.LegStats.from_wire, v) == outcome(c.LegStats._slow, v), (index, value)
    for length in (9, 11):
        v = (_VALID_LEG * 2)[:length]
        assert outcome(c.LegStats.from_wire, v) == outcome(c.LegStats._slow, v)
