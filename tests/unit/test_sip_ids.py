"""Random SIP identifiers (``sipdialer.sip.ids``): the right length and alphabet, every
byte of the pool handed out once, a fresh pool after a fork (a child never repeats its
parent's identifiers)."""

from __future__ import annotations

import os
import re

import pytest

from sipdialer.sip import ids


def test_token_hex_has_the_length_and_alphabet_of_secrets_token_hex() -> None:
    for n in (4, 6, 12, 16):
        value = ids.token_hex(n)
        assert re.fullmatch(rf"[0-9a-f]{{{2 * n}}}", value)


def test_no_identifier_repeats_across_many_pool_refills() -> None:
    values = [ids.token_hex(12) for _ in range(20_000)]  # ~60 refills of the pool
    assert len(set(values)) == len(values)


def test_consecutive_takes_do_not_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool hands out each byte once: with a counting generator, the bytes served are
    exactly the bytes drawn, in order, with none served twice."""
    drawn: list[bytes] = []
    counter = iter(range(10**9))

    def fake_urandom(n: int) -> bytes:
        chunk = bytes(next(counter) % 256 for _ in range(n))
        drawn.append(chunk)
        return chunk

    monkeypatch.setattr(os, "urandom", fake_urandom)
    pool = ids._Pool()
    served = b"".join(pool.take(12) for _ in range(1000))  # 12,000 bytes: 3 draws + part
    # a draw's tail too short for the next take is skipped, never served again
    per_draw = ids._POOL_SIZE // 12 * 12
    expected = b"".join(chunk[:per_draw] for chunk in drawn)[: len(served)]
    assert served == expected
    assert len(drawn) == 3


def test_a_large_request_is_its_own_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = os.urandom

    def counting_urandom(n: int) -> bytes:
        sizes.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counting_urandom)
    pool = ids._Pool()
    assert len(pool.take(ids._POOL_SIZE)) == ids._POOL_SIZE
    assert sizes == [ids._POOL_SIZE]


def test_a_forked_child_does_not_repeat_the_parents_identifiers() -> None:
    ids.token_hex(12)  # the pool is filled
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next identifier, to the parent
        try:
            os.write(write_end, ids.token_hex(12).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    parent = ids.token_hex(12)
    assert len(child) == 24
    assert child != parent
