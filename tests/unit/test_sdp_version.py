"""Our ``o=`` version per leg (``sipdialer.sip.sdp.OurSdpVersion``, RFC 3264 §8): up by
one when what we send changes, the same when it does not, untouched by a refusal."""

from __future__ import annotations

from collections.abc import Callable

from sipdialer.sip.sdp import OurSdpVersion, answer_for, build_sdp, parse_sdp

PEER = build_sdp(address="192.0.2.5", port=50000, session_id=7, version=1, codecs=[("PCMU", 0)])
PEER_HOLD = build_sdp(
    address="192.0.2.5",
    port=50000,
    session_id=7,
    version=2,
    codecs=[("PCMU", 0)],
    direction="sendonly",
)
PEER_ONLY_G722 = build_sdp(
    address="192.0.2.5", port=50000, session_id=7, version=2, codecs=[("G722", 9)]
)


def ours(version: int) -> bytes:
    return build_sdp(
        address="192.0.2.1", port=40000, session_id=1, version=version, codecs=[("PCMU", 0)]
    )


def answer(peer: bytes) -> Callable[[int], bytes | None]:
    def at(version: int) -> bytes | None:
        return answer_for(
            parse_sdp(peer), address="192.0.2.1", port=40000, session_id=1, version=version
        )

    return at


def o_version(sdp: bytes | None) -> int:
    assert sdp is not None
    line = next(x for x in sdp.decode().splitlines() if x.startswith("o="))
    return int(line.split()[2])


def test_the_first_description_carries_the_first_version() -> None:
    assert o_version(OurSdpVersion().render(ours)) == 1
    assert o_version(OurSdpVersion(5).render(ours)) == 5


def test_the_version_goes_up_on_change_only_and_never_back() -> None:
    versions = OurSdpVersion()
    sent = [versions.render(ours)]  # our offer (PCMU + telephone-event)
    sent.append(versions.render(answer(PEER)))  # our answer to it is the same description
    sent.append(versions.render(answer(PEER_HOLD)))  # hold: a=recvonly, a new one
    sent.append(versions.render(answer(PEER_HOLD)))  # a session refresh: the same one
    sent.append(versions.render(ours))  # an offerless re-INVITE: our offer again
    sent.append(versions.render(ours))
    assert [o_version(s) for s in sent] == [1, 1, 2, 2, 3, 3]
    assert versions.version == 3


def test_a_refused_offer_leaves_the_version_alone() -> None:
    versions = OurSdpVersion()
    versions.render(ours)
    assert versions.render(answer(PEER_ONLY_G722)) is None  # 488: nothing sent
    assert versions.version == 1
    assert o_version(versions.render(ours)) == 1
