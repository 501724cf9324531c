"""The pure registrar, driven with a fake clock and hand-made REGISTERs (the live tests in
test_registrar_live.py check the same against a real baresip phone and svwar)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from sipdialer.logs import _Formatter, quote_value
from sipdialer.sip.digest import build_authorization, parse_challenge
from sipdialer.sip.message import Request
from sipdialer.sip.registrar import Binding, Registrar, Reply

T0 = 1_700_000_000.0
PASSWORDS = {"1001": "secret-1001", "1002": "secret-1002"}
ADDR = ("192.0.2.10", 40000)


def make_registrar(**kw: object) -> Registrar:
    return Registrar(dict(PASSWORDS), realm="sipdialer", secret=b"k" * 32, **kw)  # type: ignore[arg-type]


def challenge_of(reply: Reply, algorithm: str = "SHA-256") -> str:
    values = [v for n, v in reply.headers if n == "WWW-Authenticate"]
    return next(v for v in values if f"algorithm={algorithm}" in v)


def render(reply: Reply) -> bytes:
    """The part of the wire response the registrar decides, with nonces (and the opaque
    values binding them to the source) masked."""
    lines = [f"SIP/2.0 {reply.status} {reply.reason}"]
    lines += [f"{n}: {v}" for n, v in reply.headers]
    text = re.sub(r'nonce="[^"]*"', 'nonce="…"', "\r\n".join(lines))
    return re.sub(r'opaque="[^"]*"', 'opaque="…"', text).encode()


class Phone:
    """A REGISTER client for one extension: fresh challenge, then credentials."""

    def __init__(
        self,
        registrar: Registrar,
        user: str = "1001",
        password: str | None = None,
        *,
        source: tuple[str, int] = ADDR,
        call_id: str = "call-1@192.0.2.10",
        contact: str = "<sip:1001@10.0.0.5:5062>",
        auth_user: str | None = None,
        algorithm: str = "SHA-256",
    ) -> None:
        self.registrar = registrar
        self.user = user
        self.password = password if password is not None else PASSWORDS.get(user, "x")
        self.auth_user = auth_user or user
        self.source = source
        self.call_id = call_id
        self.contact = contact
        self.algorithm = algorithm
        self.cseq = 0

    def request(
        self,
        contacts: Iterable[str] | None = None,
        *,
        expires: int | str | None = None,
        authorization: str | None = None,
        cseq: int | None = None,
    ) -> Request:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        headers = [
            ("Via", f"SIP/2.0/UDP {self.source[0]}:{self.source[1]};branch=z9hG4bK{cseq}x"),
            ("From", f"<sip:{self.user}@pbx.test>;tag=f{self.user}"),
            ("To", f"<sip:{self.user}@pbx.test>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} REGISTER"),
            ("User-Agent", "TestPhone/1.0"),
        ]
        for contact in [self.contact] if contacts is None else contacts:
            headers.append(("Contact", contact))
        if expires is not None:
            headers.append(("Expires", str(expires)))
        if authorization is not None:
            headers.append(("Authorization", authorization))
        return Request("REGISTER", "sip:pbx.test", headers)

    def send(self, request: Request, now: float) -> Reply:
        return self.registrar.handle(request, self.source, "UDP", now)

    def authorization(self, reply: Reply, uri: str = "sip:pbx.test", nc: int = 1) -> str:
        assert reply.status == 401, reply
        return build_authorization(
            parse_challenge(challenge_of(reply, self.algorithm)),
            method="REGISTER",
            uri=uri,
            username=self.auth_user,
            password=self.password,
            nc=nc,
        )

    def register(
        self,
        now: float = T0,
        contacts: Iterable[str] | None = None,
        *,
        expires: int | str | None = None,
        cseq: int | None = None,
    ) -> Reply:
        challenge = self.send(self.request(contacts, expires=expires), now)
        auth = self.authorization(challenge)
        request = self.request(contacts, expires=expires, authorization=auth, cseq=cseq)
        return self.send(request, now)


def contacts_of(reply: Reply) -> list[str]:
    return [v for n, v in reply.headers if n == "Contact"]


# ---- challenge, register, lookup ------------------------------------------------------------


def test_challenge_lists_sha256_then_md5_with_qop() -> None:
    reg = make_registrar()
    reply = Phone(reg).send(Phone(reg).request(), T0)
    assert (reply.status, reply.reason) == (401, "Unauthorized")
    values = [v for n, v in reply.headers if n == "WWW-Authenticate"]
    assert [parse_challenge(v).algorithm for v in values] == ["SHA-256", "MD5"]
    assert all(parse_challenge(v).qop == ("auth",) for v in values)
    assert all(parse_challenge(v).realm == "sipdialer" for v in values)
    assert reg.lookup("1001", T0) == []


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_register_then_lookup(algorithm: str) -> None:
    reg = make_registrar()
    phone = Phone(reg, algorithm=algorithm)
    reply = phone.register(T0)
    assert (reply.status, reply.reason) == (200, "OK")
    assert contacts_of(reply) == ["<sip:1001@10.0.0.5:5062>;expires=3600"]
    assert dict(reply.headers)["Date"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    [binding] = reg.lookup("1001", T0 + 1)
    assert binding.extension == "1001"
    assert binding.contact_uri == "sip:1001@10.0.0.5:5062"
    assert binding.target == ADDR  # the source address, not the Contact's host
    assert binding.transport == "UDP"
    assert binding.expires_at == T0 + 3600
    assert (binding.call_id, binding.cseq) == ("call-1@192.0.2.10", 2)
    assert binding.user_agent == "TestPhone/1.0"
    assert binding.registered_at == binding.refreshed_at == T0
    assert reg.lookup("1002", T0) == []
    assert reg.is_extension("1001") and reg.is_extension("1002")
    assert not reg.is_extension("1003")
    assert reg.bindings(T0) == [binding]


def test_register_over_tcp_keeps_the_transport() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    auth = phone.authorization(phone.send(phone.request(), T0))
    reply = reg.handle(phone.request(authorization=auth), ("192.0.2.10", 50123), "tcp", T0)
    assert reply.status == 200
    [binding] = reg.lookup("1001", T0)
    assert (binding.transport, binding.target) == ("TCP", ("192.0.2.10", 50123))


def test_query_without_contact_lists_bindings() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    phone.register(T0)
    reply = phone.register(T0 + 100, contacts=[])
    assert reply.status == 200
    assert contacts_of(reply) == ["<sip:1001@10.0.0.5:5062>;expires=3500"]


# ---- nonces -----------------------------------------------------------------------------------


def test_stale_nonce_gets_stale_challenge_and_is_no_failure() -> None:
    reg = make_registrar(nonce_ttl=30)
    phone = Phone(reg)
    auth = phone.authorization(phone.send(phone.request(), T0))
    reply = phone.send(phone.request(authorization=auth), T0 + 31)
    assert reply.status == 401
    assert all(parse_challenge(v).stale for n, v in reply.headers if n == "WWW-Authenticate")
    assert reg.stats["auth_failed"] == 0
    retry = phone.send(phone.request(authorization=phone.authorization(reply)), T0 + 31)
    assert retry.status == 200


def test_foreign_nonce_gets_stale_challenge() -> None:
    """A nonce we did not issue (e.g. from before a restart with a new secret)."""
    other = Registrar(dict(PASSWORDS), realm="sipdialer", secret=b"o" * 32)
    reg = make_registrar()
    phone = Phone(reg)
    auth = phone.authorization(Phone(other).send(phone.request(), T0))
    reply = phone.send(phone.request(authorization=auth), T0)
    assert reply.status == 401
    assert parse_challenge(challenge_of(reply)).stale
    assert reg.stats["auth_failed"] == 0


def test_replayed_credentials_fail() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    auth = phone.authorization(phone.send(phone.request(), T0))
    assert phone.send(phone.request(authorization=auth), T0).status == 200
    replay = phone.send(phone.request(authorization=auth), T0 + 1)
    assert replay.status == 401
    assert reg.stats["auth_failed"] == 1


def test_credentials_for_another_realm_are_ignored() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    foreign = 'Digest username="1001", realm="other", nonce="n", uri="sip:pbx.test", response="0"'
    reply = phone.send(phone.request(authorization=foreign), T0)
    assert reply.status == 401 and not parse_challenge(challenge_of(reply)).stale
    assert reg.stats["auth_failed"] == 0


# ---- who may register what ------------------------------------------------------------------


def test_unknown_extension_and_wrong_password_answer_identically() -> None:
    reg = make_registrar()
    wrong = Phone(reg, "1001", "not-the-password")
    unknown = Phone(reg, "1009", "whatever")
    # without credentials: the same challenge for a known and an unknown AOR
    first_wrong = wrong.send(wrong.request(), T0)
    first_unknown = unknown.send(unknown.request(), T0)
    assert render(first_wrong) == render(first_unknown)
    # with credentials: a fresh (non-stale) challenge for both, nothing else
    reply_wrong = wrong.send(wrong.request(authorization=wrong.authorization(first_wrong)), T0)
    reply_unknown = unknown.send(
        unknown.request(authorization=unknown.authorization(first_unknown)), T0
    )
    assert reply_wrong.status == 401
    assert render(reply_wrong) == render(reply_unknown)
    assert challenge_of(reply_wrong) != challenge_of(reply_unknown)  # only the nonce differs
    assert render(reply_wrong) == render(first_wrong)
    assert reg.bindings(T0) == []
    assert reg.stats["auth_failed"] == 2


def test_auth_failure_log_names_known_extensions_only(caplog: pytest.LogCaptureFixture) -> None:
    reg = make_registrar()
    caplog.set_level(logging.INFO, logger="sipdialer.registrar")
    for user, password in (("1001", "bad-pass-1"), ("7777", "bad-pass-2")):
        p = Phone(reg, user, password)
        p.send(p.request(authorization=p.authorization(p.send(p.request(), T0))), T0)
    lines = [r.getMessage() for r in caplog.records if "event=auth_failed" in r.getMessage()]
    assert len(lines) == 2
    assert "ext=1001" in lines[0] and "source=192.0.2.10 port=40000 transport=UDP" in lines[0]
    assert "ext=unknown" in lines[1] and "7777" not in lines[1]
    assert not any("bad-pass" in r.getMessage() for r in caplog.records)


def test_aor_must_be_the_authenticated_user() -> None:
    reg = make_registrar()
    for to_user in ("1002", "1009"):
        phone = Phone(reg, to_user, auth_user="1001", password=PASSWORDS["1001"])
        reply = phone.register(T0)
        assert (reply.status, reply.reason) == (403, "Forbidden")
    assert reg.bindings(T0) == []
    assert reg.stats["auth_failed"] == 0


# ---- expiry values --------------------------------------------------------------------------


def test_too_brief_interval_gets_423_with_min_expires() -> None:
    reg = make_registrar(min_expires=60)
    phone = Phone(reg)
    reply = phone.register(T0, expires=30)
    assert (reply.status, reply.reason) == (423, "Interval Too Brief")
    assert dict(reply.headers) == {"Min-Expires": "60"}
    # the contact's own expires parameter wins over the header
    reply = phone.register(T0, ["<sip:1001@10.0.0.5:5062>;expires=59"], expires=3600)
    assert reply.status == 423
    assert reg.bindings(T0) == []
    assert phone.register(T0, expires=60).status == 200


def test_long_interval_is_clamped_to_max() -> None:
    reg = make_registrar(max_expires=1800)
    phone = Phone(reg)
    reply = phone.register(T0, expires=100_000)
    assert contacts_of(reply) == ["<sip:1001@10.0.0.5:5062>;expires=1800"]
    assert reg.lookup("1001", T0)[0].expires_at == T0 + 1800
    reply = phone.register(T0, ["<sip:1001@10.0.0.5:5062>;expires=99999999999999"])
    assert contacts_of(reply) == ["<sip:1001@10.0.0.5:5062>;expires=1800"]


def test_expires_zero_removes_one_contact() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    a, b = "<sip:1001@10.0.0.5:5062>", "<sip:1001@10.0.0.5:5064>"
    phone.register(T0, [a, b])
    assert len(reg.lookup("1001", T0)) == 2
    reply = phone.register(T0 + 1, [f"{a};expires=0"])
    assert contacts_of(reply) == [f"{b};expires=3599"]
    reply = phone.register(T0 + 2, [b], expires=0)
    assert contacts_of(reply) == []
    assert reg.lookup("1001", T0 + 2) == []


def test_star_removes_all_contacts() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    other = Phone(reg, call_id="call-2", contact="<sip:1001@10.0.0.6:5060>")
    phone.register(T0)
    other.register(T0)
    assert len(reg.lookup("1001", T0)) == 2
    reply = phone.register(T0 + 1, ["*"], expires=0)
    assert reply.status == 200 and contacts_of(reply) == []
    assert reg.lookup("1001", T0 + 1) == []


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [(["*"], None), (["*"], 60), (["*", "<sip:1001@10.0.0.5:5062>"], 0)],
    ids=["no-expires", "expires-60", "mixed"],
)
def test_star_misuse_is_400(contacts: list[str], expires: int | None) -> None:
    reg = make_registrar()
    phone = Phone(reg)
    phone.register(T0)
    reply = phone.register(T0 + 1, contacts, expires=expires)
    assert reply.status == 400
    assert len(reg.lookup("1001", T0 + 1)) == 1


def test_bad_contact_is_400() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    for contact in ("<tel:+27820001234>", "<sip:1001@10.0.0.5:5062", '"unterminated <sip:x@y>'):
        assert phone.register(T0, [contact]).status == 400
    assert reg.bindings(T0) == []


# ---- several contacts ---------------------------------------------------------------------


def test_two_phones_one_extension() -> None:
    reg = make_registrar()
    desk = Phone(reg, call_id="desk", contact="<sip:1001@10.0.0.5:5062>")
    soft = Phone(
        reg, call_id="soft", contact="<sip:1001@10.0.0.9:5060>", source=("192.0.2.99", 5060)
    )
    desk.register(T0)
    reply = soft.register(T0 + 10)
    assert contacts_of(reply) == [
        "<sip:1001@10.0.0.9:5060>;expires=3600",
        "<sip:1001@10.0.0.5:5062>;expires=3590",
    ]
    assert [b.target for b in reg.lookup("1001", T0 + 10)] == [("192.0.2.99", 5060), ADDR]


def test_same_contact_refreshes_in_place() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    phone.register(T0)
    phone.register(T0 + 1000, ["<SIP:1001@10.0.0.5:5062>"])  # same URI, other spelling
    [binding] = reg.lookup("1001", T0 + 1000)
    assert binding.registered_at == T0
    assert binding.refreshed_at == T0 + 1000
    assert binding.expires_at == T0 + 4600
    assert binding.cseq == 4


def test_instance_id_replaces_a_binding_whose_port_changed() -> None:
    reg = make_registrar()
    instance = ';+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>";reg-id=1'
    phone = Phone(reg, contact=f"<sip:1001@10.0.0.5:5062;ob>{instance}")
    phone.register(T0)
    rebooted = Phone(reg, call_id="after-reboot", contact=f"<sip:1001@10.0.0.5:6000;ob>{instance}")
    reply = rebooted.register(T0 + 5)
    [binding] = reg.lookup("1001", T0 + 5)
    assert binding.contact_uri == "sip:1001@10.0.0.5:6000;ob"
    assert binding.instance == "<urn:uuid:00000000-0000-0000-0000-000000000001>"
    assert (binding.reg_id, binding.outbound) == ("1", True)
    assert contacts_of(reply) == [f"<sip:1001@10.0.0.5:6000;ob>;expires=3600{instance}"]


def test_a_new_instance_with_the_same_contact_is_the_same_device() -> None:
    """Issue 12.10: a phone re-registering with a new +sip.instance (and without one, and
    with one again) at the same Contact URI is one binding, so it gets one INVITE."""
    reg = make_registrar()
    first = ';+sip.instance="<urn:uuid:00000000-0000-0000-0000-00000000000a>"'
    second = ';+sip.instance="<urn:uuid:00000000-0000-0000-0000-00000000000b>"'
    phone = Phone(reg, contact=f"<sip:1001@10.0.0.5:5062>{first}")
    phone.register(T0)
    reborn = Phone(reg, call_id="reborn", contact=f"<sip:1001@10.0.0.5:5062>{second}")
    reply = reborn.register(T0 + 5)
    [binding] = reg.lookup("1001", T0 + 5)
    assert binding.instance == "<urn:uuid:00000000-0000-0000-0000-00000000000b>"
    assert contacts_of(reply) == [f"<sip:1001@10.0.0.5:5062>;expires=3600{second}"]
    assert reg.stats["unbound_replaced"] == 1
    plain = Phone(reg, call_id="plain", contact="<SIP:1001@10.0.0.5:5062>")  # no instance
    plain.register(T0 + 6)
    assert [b.instance for b in reg.lookup("1001", T0 + 6)] == [None]
    other = Phone(reg, call_id="other", contact=f"<sip:1001@10.0.0.6:5062>{first}")
    other.register(T0 + 7)  # another contact: another device
    assert len(reg.lookup("1001", T0 + 7)) == 2


def test_lookup_returns_one_binding_per_contact_even_from_an_old_store() -> None:
    reg = make_registrar()
    Phone(reg, contact='<sip:1001@10.0.0.5:5062>;+sip.instance="<urn:uuid:a>"').register(T0)
    [old] = reg.lookup("1001", T0)
    twin = dataclasses.replace(
        old, key="instance:<urn:uuid:b>;", instance="<urn:uuid:b>", refreshed_at=T0 + 1
    )
    reg.load({**reg.dump(), "bindings": [old.to_dict(), twin.to_dict()]}, T0 + 2)
    assert [b.instance for b in reg.lookup("1001", T0 + 2)] == ["<urn:uuid:b>"]


def test_max_contacts_drops_the_least_recently_refreshed() -> None:
    reg = make_registrar(max_contacts=2)
    phones = [
        Phone(reg, call_id=f"c{i}", contact=f"<sip:1001@10.0.0.{i}:5060>") for i in range(1, 4)
    ]
    phones[0].register(T0)
    phones[1].register(T0 + 1)
    phones[0].register(T0 + 2)  # refresh: now phone 1 is the oldest
    phones[2].register(T0 + 3)
    uris = [b.contact_uri for b in reg.lookup("1001", T0 + 3)]
    assert uris == ["sip:1001@10.0.0.3:5060", "sip:1001@10.0.0.1:5060"]
    assert reg.stats["unbound_max_contacts"] == 1


# ---- RFC 3261 §10.3 ordering ---------------------------------------------------------------


def test_out_of_order_cseq_is_refused_and_changes_nothing() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    assert phone.register(T0, cseq=10).status == 200
    before = reg.lookup("1001", T0)
    for cseq in (9, 10):
        reply = phone.register(T0 + 5, ["<sip:1001@10.0.0.5:5062>"], expires=0, cseq=cseq)
        assert (reply.status, reply.reason) == (400, "Invalid CSeq number")
    assert reg.lookup("1001", T0 + 5) == before
    # a new Call-ID (the phone rebooted) may start again from a low CSeq
    rebooted = Phone(reg, call_id="call-after-reboot")
    assert rebooted.register(T0 + 6).status == 200
    assert reg.lookup("1001", T0 + 6)[0].call_id == "call-after-reboot"


# ---- expiry ---------------------------------------------------------------------------------


def test_binding_lapses_after_its_expiry(caplog: pytest.LogCaptureFixture) -> None:
    reg = make_registrar()
    caplog.set_level(logging.INFO, logger="sipdialer.registrar")
    Phone(reg).register(T0, expires=60)
    assert reg.next_timer() is not None
    assert reg.lookup("1001", T0 + 59)
    assert reg.expire(T0 + 59) == []
    assert reg.lookup("1001", T0 + 60.5) == []  # gone for lookups at once
    generation = reg.generation
    [gone] = reg.expire(T0 + 61)
    assert gone.extension == "1001" and reg.generation > generation
    assert reg.dump()["bindings"] == []
    unbound = [r.getMessage() for r in caplog.records if "registrar_unbound" in r.getMessage()]
    assert unbound == [
        "event=registrar_unbound ext=1001 contact=sip:1001@10.0.0.5:5062 "
        "source=192.0.2.10:40000 reason=expired"
    ]
    bound = [r.getMessage() for r in caplog.records if "registrar_bound" in r.getMessage()]
    assert bound == [
        "event=registrar_bound ext=1001 contact=sip:1001@10.0.0.5:5062 "
        "source=192.0.2.10:40000 transport=UDP expires=60"
    ]


# ---- throttle -------------------------------------------------------------------------------


def fail_once(reg: Registrar, source: tuple[str, int], now: float, user: str = "1001") -> Reply:
    p = Phone(reg, user, "wrong", source=source)
    return p.send(p.request(authorization=p.authorization(p.send(p.request(), now))), now)


def test_throttle_after_ten_failures_then_cooldown(caplog: pytest.LogCaptureFixture) -> None:
    reg = make_registrar()
    caplog.set_level(logging.INFO, logger="sipdialer.registrar")
    attacker = ("198.51.100.7", 5060)
    for i in range(10):
        user = "1001" if i % 2 else "9999"  # known and unknown users count alike
        assert fail_once(reg, attacker, T0 + i, user).status == 401
    # blocked: everything from that IP (any port), even right credentials, gets 403
    for port in (5060, 5070):
        good = Phone(reg, source=(attacker[0], port))
        assert good.send(good.request(), T0 + 11) == Reply(403, "Forbidden")
        challenge = Phone(reg, source=("192.0.2.1", 1)).send(good.request(), T0 + 12)
        right = good.request(authorization=good.authorization(challenge))
        assert good.send(right, T0 + 12) == Reply(403, "Forbidden")
    # other IPs are unaffected
    assert Phone(reg).register(T0 + 14).status == 200
    throttled = [r for r in caplog.records if "registrar_throttled scope=source" in r.getMessage()]
    assert len(throttled) == 1 and "source=198.51.100.7" in throttled[0].getMessage()
    # the cool-down lifts 300 s after the tenth failure
    late = Phone(reg, source=attacker, call_id="later")
    assert late.send(late.request(), T0 + 9 + 299).status == 403
    assert late.register(T0 + 9 + 300).status == 200


def test_failures_spread_over_more_than_the_window_do_not_throttle() -> None:
    reg = make_registrar()
    source = ("198.51.100.8", 5060)
    # a new (unknown) name each time: the per-username back-off stays out of this test
    for i in range(9):
        fail_once(reg, source, T0 + i, user=f"90{i:02d}")
    for i in range(9):
        assert fail_once(reg, source, T0 + 61 + i, user=f"91{i:02d}").status == 401
    assert Phone(reg, source=source).register(T0 + 80).status == 200
    reg.expire(T0 + 10_000)
    assert reg._sources == {}  # idle throttle state is forgotten
    assert reg._usernames == {}


# ---- spoofing and rotating guessers (issue 11, point 4) -----------------------------------

ATTACKER = ("203.0.113.66", 5060)


def wrong_guess(
    reg: Registrar,
    challenge_from: tuple[str, int],
    sent_from: tuple[str, int],
    now: float,
    password: str = "guess",
    user: str = "1001",
) -> Reply:
    """A REGISTER with wrong credentials answering a challenge fetched at one address
    and sent from another (the second differs when a spoofer forges the phone's IP)."""
    fetch = Phone(reg, user, password, source=challenge_from, call_id=f"g{now}")
    auth = fetch.authorization(fetch.send(fetch.request(), now))
    forged = Phone(reg, user, password, source=sent_from, call_id=f"g{now}")
    return forged.send(forged.request(authorization=auth), now)


def test_spoofed_failures_lock_out_neither_the_phones_ip_nor_its_extension(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The attacker fetches challenges at its own address and sends wrong answers with the
    phone's IP forged as their source: none of them counts, and the phone still
    registers. (Before: ten of them gave the phone's IP 403 for five minutes.)"""
    reg = make_registrar()
    caplog.set_level(logging.INFO, logger="sipdialer.registrar")
    phone = Phone(reg)
    assert phone.register(T0).status == 200
    spoofed_from = (ADDR[0], 5999)
    for i in range(50):
        reply = wrong_guess(reg, ATTACKER, spoofed_from, T0 + 1 + i * 0.01)
        assert reply.status == 401 and parse_challenge(challenge_of(reply)).stale
    assert reg.stats["auth_failed"] == 0 and reg.stats["foreign_challenge"] == 50
    assert not any("registrar_throttled" in r.getMessage() for r in caplog.records)
    assert phone.register(T0 + 2).status == 200
    # a new phone of the same extension at a new address is not held up either
    moved = Phone(reg, source=("192.0.2.99", 5060), call_id="moved")
    assert moved.register(T0 + 2).status == 200


def test_challenge_from_another_port_of_the_same_ip_is_accepted() -> None:
    """Bound to the IP, not the port: a NAT may give the answer another port."""
    reg = make_registrar()
    phone = Phone(reg, source=(ADDR[0], 40000))
    auth = phone.authorization(phone.send(phone.request(), T0))
    assert reg.handle(phone.request(authorization=auth), (ADDR[0], 40001), "UDP", T0).status == 200


def test_credentials_without_the_opaque_are_never_counted() -> None:
    reg = make_registrar()
    phone = Phone(reg, password="wrong")
    auth = phone.authorization(phone.send(phone.request(), T0))
    stripped = re.sub(r', opaque="[^"]*"', "", auth)
    assert stripped != auth
    for i in range(20):
        assert phone.send(phone.request(authorization=stripped), T0 + i).status == 401
    malformed = 'Digest username="1001", realm="sipdialer", nonce="x"'
    for i in range(20):
        assert phone.send(phone.request(authorization=malformed), T0 + 20 + i).status == 401
    assert reg.stats["auth_failed"] == 0 and reg.stats["throttled"] == 0
    assert Phone(reg).register(T0 + 41).status == 200


def test_nonces_are_short_lived_by_default() -> None:
    reg = make_registrar()
    phone = Phone(reg)
    auth = phone.authorization(phone.send(phone.request(), T0))
    reply = phone.send(phone.request(authorization=auth), T0 + 31)
    assert reply.status == 401 and parse_challenge(challenge_of(reply)).stale


def test_rotating_guesser_gets_five_guesses_then_is_refused_unchecked() -> None:
    """25 source addresses, the right password at guess 150, all within 0.15 s: before,
    guess 150 registered (six guesses per address stay under the per-IP limit); now only
    five guesses are checked at all and the rest get 503 + Retry-After."""
    reg = make_registrar()
    addresses = [(f"198.51.100.{i}", 5060) for i in range(1, 26)]
    replies = []
    for i in range(150):
        source = addresses[i % 25]
        password = PASSWORDS["1001"] if i == 149 else f"guess-{i}"
        guesser = Phone(reg, password=password, source=source, call_id=f"rot-{i}")
        replies.append(guesser.register(T0 + i * 0.001))
    statuses = Counter(r.status for r in replies)
    assert statuses == {401: 5, 503: 145}, statuses
    assert replies[-1].status == 503
    assert reg.bindings(T0 + 1) == []
    assert reg.stats["auth_failed"] == 5 and reg.stats["backing_off"] == 145
    retry = dict(replies[-1].headers)["Retry-After"]
    assert retry == "1"


def test_guesser_that_obeys_retry_after_needs_ten_minutes_for_twenty_guesses() -> None:
    reg = make_registrar()
    addresses = [(f"198.51.100.{i}", 5060) for i in range(1, 26)]
    now, checked, sent = T0, 0, 0
    while checked < 20:
        source = addresses[sent % 25]
        guesser = Phone(reg, password=f"guess-{sent}", source=source, call_id=f"g-{sent}")
        reply = guesser.register(now)
        sent += 1
        if reply.status == 503:
            now += int(dict(reply.headers)["Retry-After"])
        else:
            assert reply.status == 401
            checked += 1
    # back-offs after failures 5..19: 1 + 2 + 4 + 8 + 16 + 32 + 9 * 60 s
    assert now - T0 >= 603
    assert reg.stats["throttled"] == 0  # no single address did it: the username did


def test_phone_at_its_own_address_registers_while_its_extension_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = make_registrar()
    caplog.set_level(logging.INFO, logger="sipdialer.registrar")
    phone = Phone(reg)
    assert phone.register(T0).status == 200
    for i in range(12):  # from several addresses, none of them throttled on its own
        wrong_guess(reg, (f"203.0.113.{i}", 5060), (f"203.0.113.{i}", 5060), T0 + 1 + i * 0.01)
    locked = [
        r.getMessage()
        for r in caplog.records
        if "registrar_throttled scope=extension" in r.getMessage()
    ]
    assert len(locked) == 1 and "ext=1001" in locked[0] and "backoff=1" in locked[0]
    # the phone's refresh from the address it registered from: accepted at once
    assert phone.register(T0 + 1.5).status == 200
    # but not a wrong password from there: that still counts (and is still checked)
    assert wrong_guess(reg, ADDR, ADDR, T0 + 1.6).status == 401
    # a phone of 1001 at a new address waits for the back-off, then registers
    elsewhere = Phone(reg, source=("192.0.2.77", 5060), call_id="elsewhere")
    refused = elsewhere.register(T0 + 1.7)
    assert refused.status == 503
    wait = int(dict(refused.headers)["Retry-After"])
    assert 1 <= wait <= 2
    assert elsewhere.register(T0 + 1.7 + wait).status == 200
    # the other extension was never held up
    assert (
        Phone(reg, "1002", source=("192.0.2.78", 5060), call_id="c2").register(T0 + 2).status == 200
    )


def test_backoff_doubles_up_to_its_cap_and_is_forgotten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = make_registrar(extension_failures=2, extension_backoff=1, extension_backoff_max=8)
    caplog.set_level(logging.INFO, logger="sipdialer.registrar")
    first = ("203.0.113.250", 1)
    assert wrong_guess(reg, first, first, T0).status == 401  # failure 1: no back-off yet
    now, waits = T0 + 1, []
    for i in range(6):
        source = (f"203.0.113.{i}", 1)
        assert wrong_guess(reg, source, source, now).status == 401  # checked, counted
        early = wrong_guess(reg, ("203.0.113.99", 1), ("203.0.113.99", 1), now + 0.001)
        assert early.status == 503  # refused unchecked while it backs off
        waits.append(int(dict(early.headers)["Retry-After"]))
        now += waits[-1]
    assert waits == [1, 2, 4, 8, 8, 8]
    lines = [r.getMessage() for r in caplog.records if "scope=extension" in r.getMessage()]
    backoffs = [value for line in lines for value in re.findall(r"backoff=(\S+)", line)]
    assert backoffs == ["1", "2", "4", "8", "8", "8"]
    reg.expire(now + 901)
    assert reg._usernames == {}


def test_unknown_names_back_off_like_extensions() -> None:
    """No enumeration through the back-off: 503 for an unknown name exactly as for 1001."""
    reg = make_registrar()
    replies = {}
    for user in ("1001", "1009"):
        for i in range(6):
            source = (f"203.0.113.{i}", 5060)
            replies[user] = wrong_guess(reg, source, source, T0 + i * 0.01, user=user)
    assert replies["1001"] == replies["1009"]
    assert replies["1001"].status == 503


def test_bindings_loaded_from_the_store_make_their_ip_trusted() -> None:
    reg = make_registrar()
    Phone(reg).register(T0)
    restored = make_registrar()
    restored.load(reg.dump(), T0 + 10)
    assert restored.phone_ips("1001", T0 + 10) == {ADDR[0]}
    for i in range(6):
        source = (f"203.0.113.{i}", 5060)
        wrong_guess(restored, source, source, T0 + 11 + i * 0.01)
    assert Phone(restored, call_id="after-restart").register(T0 + 11.5).status == 200


# ---- keep-alive -----------------------------------------------------------------------------


def test_keepalives_for_udp_bindings_and_unreachable_drop() -> None:
    reg = make_registrar(keepalive_interval=25, keepalive_max_failures=2)
    udp = Phone(reg)
    udp.register(T0)
    tcp = Phone(reg, "1002", call_id="tcp", source=("192.0.2.20", 41000))
    auth = tcp.authorization(tcp.send(tcp.request(), T0))
    reg.handle(tcp.request(authorization=auth), tcp.source, "TCP", T0)
    assert reg.keepalive_due(T0 + 24) == []
    [due] = reg.keepalive_due(T0 + 25)
    assert due.extension == "1001"
    assert reg.keepalive_due(T0 + 60) == []  # one outstanding at a time
    assert reg.keepalive_result(due, True, T0 + 26) is None
    [due] = reg.keepalive_due(T0 + 50)
    assert reg.keepalive_result(due, False, T0 + 82) is None
    [due] = reg.keepalive_due(T0 + 82)
    assert reg.keepalive_result(due, False, T0 + 114) == due
    assert reg.lookup("1001", T0 + 114) == []
    assert reg.stats["unbound_unreachable"] == 1
    assert [b.extension for b in reg.bindings(T0 + 114)] == ["1002"]


def test_register_resets_keepalive_failures() -> None:
    reg = make_registrar(keepalive_interval=25, keepalive_max_failures=2)
    phone = Phone(reg)
    phone.register(T0)
    [due] = reg.keepalive_due(T0 + 25)
    reg.keepalive_result(due, False, T0 + 57)
    phone.register(T0 + 58)
    [due] = reg.keepalive_due(T0 + 60)
    assert reg.keepalive_result(due, False, T0 + 92) is None
    assert reg.lookup("1001", T0 + 92)


# ---- persistence --------------------------------------------------------------------------


def test_dump_load_round_trip_drops_expired() -> None:
    reg = make_registrar()
    Phone(reg).register(T0, expires=3600)
    Phone(reg, "1002", call_id="c2", contact="<sip:1002@10.0.0.7>").register(T0, expires=120)
    data = json.loads(json.dumps(reg.dump()))

    later = make_registrar()
    assert later.load(data, T0 + 60) == 2
    assert [b.to_dict() for b in later.bindings(T0 + 60)] == [
        b.to_dict() for b in reg.bindings(T0 + 60)
    ]
    restored = make_registrar()
    assert restored.load(data, T0 + 121) == 1
    [binding] = restored.bindings(T0 + 121)
    assert binding == reg.lookup("1001", T0)[0]
    assert isinstance(binding, Binding) and binding.target == ADDR
    # a restored binding keeps its Call-ID/CSeq: an old REGISTER is still out of order
    phone = Phone(restored)
    assert phone.register(T0 + 122, cseq=1).status == 400
    # keep-alives resume for restored UDP bindings
    assert restored.keepalive_due(T0 + 121 + 25)


def test_load_skips_removed_extensions_and_bad_entries() -> None:
    reg = make_registrar()
    Phone(reg).register(T0)
    Phone(reg, "1002", call_id="c2").register(T0)
    data = reg.dump()
    data["bindings"].append({"extension": "1001", "source": "nonsense"})
    fewer = Registrar({"1001": "secret-1001"}, realm="sipdialer", secret=b"k" * 32)
    assert fewer.load(data, T0) == 1
    assert [b.extension for b in fewer.bindings(T0)] == ["1001"]
    with pytest.raises(ValueError):
        fewer.load({"version": 99, "bindings": []}, T0)


# ---- fail2ban ---------------------------------------------------------------------------------


def readme_failregex() -> re.Pattern[str]:
    """The failregex of the fail2ban filter in the README, as fail2ban applies it: to the
    line after the date, with ``<ADDR>`` an IPv4 or IPv6 address."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    (failregex,) = re.findall(r"^failregex = (.*)$", readme, flags=re.M)
    return re.compile(failregex.replace("<ADDR>", r"(?P<addr>[0-9A-Fa-f:.]+)"))


def without_date(line: str) -> str:
    date = re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line)
    assert date is not None, line
    return line[date.end() :]


def test_readme_fail2ban_filter_matches_auth_failures_and_nothing_forged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    reg = make_registrar()
    for source in (("198.51.100.7", 5060), ("2001:db8::7", 5062)):
        wrong_guess(reg, source, source, T0)
    wrong_guess(reg, ("198.51.100.8", 5060), ("198.51.100.8", 5060), T0, user="9999")
    forged = "x logger=sipdialer.registrar event=auth_failed source=6.6.6.6 port=1 y"
    logging.getLogger("sipdialer.sip").info(
        "event=sip_invite_refused source=192.0.2.1 port=5060 from=%s", quote_value(forged)
    )
    logging.getLogger("sipdialer.sip").info("event=x from=%s", "a\n" + forged)  # unquoted
    failregex = readme_failregex()
    lines = [without_date(_Formatter().format(r)) for r in caplog.records]
    hits = [m.group("addr") for line in lines if (m := failregex.match(line))]
    assert hits == ["198.51.100.7", "2001:db8::7", "198.51.100.8"]


def test_per_extension_algorithms_challenge_and_refuse_a_downgrade() -> None:
    registrar = make_registrar(algorithms=("MD5",), extension_algorithms={"1001": ("SHA-256",)})
    strict, plain = Phone(registrar, "1001"), Phone(registrar, "1002", algorithm="MD5")
    challenge = strict.send(strict.request(), T0)
    offered = [v for n, v in challenge.headers if n == "WWW-Authenticate"]
    assert len(offered) == 1 and "algorithm=SHA-256" in offered[0]
    other = plain.send(plain.request(), T0)
    offered = [v for n, v in other.headers if n == "WWW-Authenticate"]
    assert len(offered) == 1 and "algorithm=MD5" in offered[0]
    # 1001 answering its SHA-256 challenge with an MD5 digest is refused (no downgrade)
    md5 = dataclasses.replace(parse_challenge(challenge_of(challenge, "SHA-256")), algorithm="MD5")
    auth = build_authorization(
        md5, method="REGISTER", uri="sip:pbx.test", username="1001", password=PASSWORDS["1001"]
    )
    assert strict.send(strict.request(authorization=auth), T0).status == 401
    assert strict.register(T0 + 1).status == 200  # the SHA-256 answer registers
    assert plain.register(T0 + 1).status == 200  # and the MD5-only extension with MD5
