"""The bencode codec of bench/rtpengine_ng.py (rtpengine's ng protocol): wire forms,
round trips, and refusal of malformed input."""

from __future__ import annotations

import pytest

from bench.rtpengine_ng import bdecode, bencode, media_port, phone_sdp, self_test


def test_self_test_passes() -> None:
    self_test()


def test_wire_forms_of_the_protocols_example() -> None:
    assert bencode({"command": "ping"}) == b"d7:command4:pinge"
    assert bdecode(b"d6:result4:ponge") == {"result": "pong"}


def test_round_trip_keeps_types_and_bytes_that_are_not_utf8() -> None:
    value = {
        "replace": ["origin", "session-connection"],
        "n": -7,
        "sdp": phone_sdp("127.0.0.1", 17000, 1),
        "raw": b"\xc3(".decode("utf-8", "surrogateescape"),
        "nested": {"l": [0, [1, {"e": ""}]]},
    }
    assert bdecode(bencode(value)) == value


def test_keys_are_written_sorted_and_read_in_any_order() -> None:
    assert bencode({"b": 1, "a": "x"}) == b"d1:a1:x1:bi1ee"
    assert bdecode(b"d1:bi1e1:a1:xe") == {"a": "x", "b": 1}


@pytest.mark.parametrize(
    "bad", [b"", b"i03e", b"i-0e", b"ie", b"5:abc", b"l", b"di1ei2ee", b"d1:ae", b"i1ei2e"]
)
def test_malformed_input_is_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        bdecode(bad)


def test_media_port_reads_the_audio_line() -> None:
    assert media_port(phone_sdp("127.0.0.1", 40012, 3)) == 40012
