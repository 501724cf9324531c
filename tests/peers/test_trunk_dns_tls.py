"""Reaching a trunk the way a provider gives it: a DNS name with NAPTR/SRV records whose
first target is dead (dnsmasq as the DNS server), and SIP over TLS with a verified
certificate (Kamailio with tls.so). The service runs in-process on uvloop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import soundfile

from sipdialer.config import parse_config
from sipdialer.engine.cdr import MemorySink
from sipdialer.engine.request import CallRequest
from sipdialer.service import Service
from sipdialer.sip.registration import RegState
from tests.fixtures import ports
from tests.fixtures.baresip import BaresipPhone
from tests.fixtures.dnsmasq import Address, DnsmasqServer, Naptr, Srv, Zone
from tests.fixtures.kamailio import KamailioTrunk
from tests.fixtures.lab import ended, peak_hz, wait_for, wait_state

AGENT, CALLEE, OUTBOUND = "1000", "0820001234", "0123456789"


def service_config(tmp_path: Path, trunk_lines: str, sip_extra: str = "") -> str:
    sip = ports.free_port("both")
    rtp = ports.free_port_range(100, "udp")
    return (
        f"[trunk]\n{trunk_lines}domain = trunk.test\nusername = dialer\npassword = s3cret\n"
        f"[sip]\nlisten = 127.0.0.1:{sip}\nrtp_ports = {rtp}-{rtp + 99}\n{sip_extra}"
        f"[recording]\ndirectory = {tmp_path / 'recordings'}\n"
    )


def zone(first: tuple[str, int], second: tuple[str, int] | None, ttl: int = 2) -> Zone:
    """NAPTR trunk.test -> _sip._udp.trunk.test -> SRV ``first`` (priority 10), ``second``
    (priority 20); each target name has an A record."""
    records: list[Address | Srv | Naptr] = [
        Naptr("trunk.test", 10, 10, "S", "SIP+D2U", replacement="_sip._udp.trunk.test"),
        Srv("_sip._udp.trunk.test", first[0], first[1], priority=10),
        Address(first[0], "127.0.0.1"),
    ]
    if second is not None:
        records += [
            Srv("_sip._udp.trunk.test", second[0], second[1], priority=20),
            Address(second[0], "127.0.0.1"),
        ]
    return Zone(tuple(records), ttl=ttl)


async def test_srv_failover_registers_at_the_second_target_calls_through_it_and_follows_dns(
    tmp_path: Path,
    kamailio_trunk: Callable[..., KamailioTrunk],
    make_phone: Callable[..., BaresipPhone],
    dns_server: Callable[..., DnsmasqServer],
) -> None:
    trunk = kamailio_trunk(qop=True, min_expires=5)
    agent = make_phone("agent", AGENT, trunk, tone_hz=440)
    make_phone("callee", CALLEE, trunk, tone_hz=1000)
    # the priority-10 target holds a UDP port that never answers (timeout, not ICMP)
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dns = dns_server(zone(("dead.trunk.test", dead_port), ("sip.trunk.test", trunk.port)))
    config = parse_config(
        service_config(
            tmp_path,
            "registrar = trunk.test\nexpires = 6\n",
            # T1 = 50 ms: a REGISTER nobody answers times out after 64 x T1 = 3.2 s
            f"nameservers = {dns.host}:{dns.port}\nt1 = 0.05\n",
        )
    )
    service = Service(config, sink=MemorySink(), serve_http=False)
    await service.start()
    try:
        registration = service.registration
        assert registration is not None
        await wait_for(lambda: registration.client.state is RegState.REGISTERED, 15, "register")
        assert registration.dest is not None
        assert (registration.dest.host, registration.dest.port) == ("127.0.0.1", trunk.port)
        assert registration.dest.name == "trunk.test"  # the configured name, not the SRV one
        assert any("dialer" in c or "127.0.0.1" in c for c in trunk.lookup("dialer"))
        assert dead.recv(65535).startswith(b"REGISTER sip:trunk.test SIP/2.0")  # tried first

        # a call goes where the registration found an answer
        assert service.dialer is not None
        runner = await service.dialer.originate(
            CallRequest(agent=AGENT, callee=CALLEE, outbound_id=OUTBOUND, call_ref="srv")
        )
        await wait_state(runner, "bridged", 15)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(agent.ctrl, "hangup")
        payload = (await ended(runner)).cdr_payload()
        assert (payload["disposition"], payload["end_code"]) == ("ANSWERED", 16)

        # the records change: the only target is now a second trunk. After the TTL (2 s),
        # the next refresh (expires 6 s) follows them
        trunk2 = kamailio_trunk(qop=True, min_expires=5)
        dns.restart(zone(("other.trunk.test", trunk2.port), None))
        await wait_for(lambda: trunk2.lookup("dialer") != [], 20, "re-register at trunk2")
        assert registration.dest is not None and registration.dest.port == trunk2.port
    finally:
        await service.stop()
        dead.close()


async def test_a_name_that_does_not_resolve_backs_off_and_the_service_stays_up(
    tmp_path: Path, dns_server: Callable[..., DnsmasqServer]
) -> None:
    dns = dns_server(Zone((Address("trunk.test", "127.0.0.1"),)))
    config = parse_config(
        service_config(
            tmp_path, "registrar = nothere.trunk.test\n", f"nameservers = {dns.host}:{dns.port}\n"
        )
    )
    service = Service(config, sink=MemorySink(), serve_http=False)
    await service.start()
    try:
        registration = service.registration
        assert registration is not None
        await wait_for(lambda: registration.client.state is RegState.FAILED, 10, "back-off")
        status = registration.client.status()
        assert status.last_failure is not None and "nothere.trunk.test" in status.last_failure
        assert status.next_attempt_at is not None
    finally:
        await service.stop()


def tls_config(tmp_path: Path, trunk: KamailioTrunk, ca_file: Path) -> str:
    # "localhost": a name (the certificate's SAN lists it), resolved by the system resolver
    return service_config(
        tmp_path,
        f"registrar = localhost:{trunk.tls_port}\ntransport = tls\nca_file = {ca_file}\n",
    )


async def test_tls_registration_bridged_call_and_bye_from_the_trunk(
    tmp_path: Path,
    kamailio_trunk: Callable[..., KamailioTrunk],
    make_phone: Callable[..., BaresipPhone],
) -> None:
    trunk = kamailio_trunk(qop=True, tls=True)
    agent = make_phone("agent", AGENT, trunk, tone_hz=440)
    callee = make_phone("callee", CALLEE, trunk, tone_hz=1000)
    service = Service(
        parse_config(tls_config(tmp_path, trunk, trunk.ca_file)),
        sink=MemorySink(),
        serve_http=False,
    )
    await service.start()
    try:
        registration = service.registration
        assert registration is not None
        await wait_for(lambda: registration.client.state is RegState.REGISTERED, 10, "register")
        bindings = trunk.bindings("dialer")
        assert bindings and all(b.socket.startswith("tls:") for b in bindings), bindings

        assert service.dialer is not None
        runner = await service.dialer.originate(
            CallRequest(agent=AGENT, callee=CALLEE, outbound_id=OUTBOUND, call_ref="tls")
        )
        t_bridged = await wait_state(runner, "bridged", 15)
        await asyncio.sleep(3.0)
        t_hangup = asyncio.get_running_loop().time()
        await asyncio.to_thread(callee.ctrl, "hangup")  # the BYE comes over our TLS flow
        payload = (await ended(runner)).cdr_payload()
        outcome = (payload["disposition"], payload["end_code"], payload["end_reason"])
        assert outcome == ("ANSWERED", 16, "callee_hungup")
        await asyncio.to_thread(agent.wait_event, "CALL_CLOSED", 5)
        # every SIP message to the trunk went over TLS: the only flow we hold is TLS
        assert service.transport.has_flow("TLS", ("127.0.0.1", trunk.tls_port))
        assert not service.transport.has_flow("TCP", ("127.0.0.1", trunk.port))

        wav = Path(service.config.recording.directory) / f"{payload['recording_url']}.wav"
        data, rate = soundfile.read(wav, dtype="int16")
        assert rate == 8000 and data.shape[1] == 2
        assert abs(len(data) / 8000 - (t_hangup - t_bridged)) <= 1.0
        middle = data[len(data) // 4 : 3 * len(data) // 4].astype(float)
        assert abs(peak_hz(middle[:, 0]) - 440) < 15
        assert abs(peak_hz(middle[:, 1]) - 1000) < 15
    finally:
        await service.stop()


async def test_tls_with_the_wrong_ca_registers_nothing_and_the_service_stays_up(
    tmp_path: Path, kamailio_trunk: Callable[..., KamailioTrunk], caplog: object
) -> None:
    trunk = kamailio_trunk(qop=True, tls=True)
    service = Service(
        parse_config(tls_config(tmp_path, trunk, trunk.unrelated_ca_file())),
        sink=MemorySink(),
        serve_http=False,
    )
    await service.start()
    try:
        registration = service.registration
        assert registration is not None
        await wait_for(lambda: registration.client.state is RegState.FAILED, 10, "failure")
        assert registration.client.status().next_attempt_at is not None  # backing off
        assert trunk.lookup("dialer") == []
        assert "event=tls_verify_failed" in caplog.text  # type: ignore[attr-defined]
        # still a working SIP element: an OPTIONS over UDP is answered
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.settimeout(5)
            probe.bind(("127.0.0.1", 0))
            here = probe.getsockname()
            probe.sendto(
                (
                    f"OPTIONS sip:127.0.0.1:{service.transport.port} SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP {here[0]}:{here[1]};branch=z9hG4bKwrongca\r\n"
                    "Max-Forwards: 70\r\nTo: <sip:x@127.0.0.1>\r\n"
                    "From: <sip:p@127.0.0.1>;tag=1\r\nCall-ID: wrong-ca\r\n"
                    "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
                ).encode(),
                ("127.0.0.1", service.transport.port),
            )
            answer = await asyncio.to_thread(probe.recv, 65535)
        assert answer.startswith(b"SIP/2.0 200")
    finally:
        await service.stop()
