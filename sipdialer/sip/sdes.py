"""Media security of one leg: SDES-SRTP offer/answer (RFC 4568 over RFC 3264) under a policy.

Owns the decisions, not the syntax (:mod:`sipdialer.sip.sdp_crypto`) nor the cipher
(:mod:`sipdialer.rtp.srtp`): what we offer on a leg, what an answer means for its media,
how we answer a peer's offer (re-INVITE, UPDATE), for a leg whose policy is

* ``no`` — plain RTP only: we offer ``RTP/AVP`` without ``a=crypto``; an answer in
  ``RTP/SAVP`` is unusable; a peer's ``RTP/SAVP`` offer gets 488; ``a=crypto`` lines in a
  plain ``RTP/AVP`` offer or answer are ignored.
* ``optional`` — encrypt whenever the far end agrees: a best-effort offer (``RTP/AVP`` with
  ``a=crypto`` lines, as Asterisk and baresip make them); an answer holding one of our tags
  with a usable key turns SRTP on, a plain answer keeps RTP. A callee that insists on
  ``RTP/SAVP`` refuses such an offer with 488; :meth:`SdesLeg.fallback_offer` is then the
  same keys offered as ``RTP/SAVP`` (the leg sends it once).
* ``required`` — ``RTP/SAVP`` with ``a=crypto`` only; an answer without a usable key of
  ours is unusable (the call ends, cause 88), a peer's offer without one gets 488.

Keys: ours are fresh per leg (one master key per suite, from the ``random_bytes`` given,
``secrets.token_bytes`` in the service) and kept for the leg's life, so a re-INVITE answered
with the same suite keeps the sender's rollover counter; the peer's key is whatever its
latest offer or answer carried (the relay starts a new receiving context when it changes).
We offer every suite of :data:`OFFER_SUITES`, one tag each, in that order; an answer's line
is matched by tag (RFC 4568 §5.1.2), then by suite (some phones renumber). Answering, we take
the offerer's first usable line. Pure: no IO, no clock; keys never reach ``repr``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from sipdialer.sip.sdp_crypto import SUITES, CryptoAttribute, CryptoKey, new_key_salt

__all__ = [
    "OFFER_SUITES",
    "SECURE_PROTOS",
    "MediaKeys",
    "SdesLeg",
    "SdesOutcome",
    "SrtpPolicy",
]

#: The suites we offer, in our order of preference (RFC 4568 §6.2, RFC 7714 §12).
OFFER_SUITES: tuple[str, ...] = (
    "AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32",
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
)
PLAIN_PROTOS = ("RTP/AVP", "RTP/AVPF")
SECURE_PROTOS = ("RTP/SAVP", "RTP/SAVPF")


class SrtpPolicy(StrEnum):
    """Whether a leg's media is encrypted (config: ``srtp = no|optional|required``)."""

    NO = "no"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True, slots=True)
class MediaKeys:
    """What the relay needs for an encrypted leg: the suite, the key the peer sends with,
    and ours (what we send with)."""

    suite: str
    inbound: bytes = field(repr=False)
    outbound: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SdesOutcome:
    """The meaning of an answer (or of the offer we answered) for the leg's media."""

    keys: MediaKeys | None
    """The keys to encrypt with, or None: plain RTP."""
    problem: str | None = None
    """Why the answer cannot be used (the media must not flow), or None."""


class SdesLeg:
    """The SDES state of one leg: our keys, our last offer, the keys in force."""

    __slots__ = ("_offered_proto", "_ours", "_random", "keys", "policy")

    def __init__(self, policy: SrtpPolicy, random_bytes: Callable[[int], bytes]) -> None:
        self.policy = policy
        self._random = random_bytes
        self._ours: dict[str, bytes] = {}
        self._offered_proto = "RTP/SAVP" if policy is SrtpPolicy.REQUIRED else "RTP/AVP"
        self.keys: MediaKeys | None = None
        """The keys in force (None: plain RTP), from the latest offer/answer exchange."""

    def __repr__(self) -> str:
        suite = self.keys.suite if self.keys is not None else "plain"
        return f"<SdesLeg policy={self.policy} {suite}>"

    def _our_key(self, suite: str) -> bytes:
        key = self._ours.get(suite)
        if key is None:
            key = self._ours[suite] = new_key_salt(suite, self._random)
        return key

    def _our_lines(self) -> tuple[CryptoAttribute, ...]:
        return tuple(
            CryptoAttribute(tag, suite, (CryptoKey(self._our_key(suite)),))
            for tag, suite in enumerate(OFFER_SUITES, start=1)
        )

    # -- we offer --------------------------------------------------------------------------

    def offer(self) -> tuple[str, tuple[CryptoAttribute, ...]]:
        """The transport and ``a=crypto`` lines of our offer (the first INVITE's, or a
        later one: the same keys, in the transport of the offer last made)."""
        if self.policy is SrtpPolicy.NO:
            return "RTP/AVP", ()
        return self._offered_proto, self._our_lines()

    def fallback_offer(self) -> tuple[str, tuple[CryptoAttribute, ...]] | None:
        """The ``RTP/SAVP`` offer to make once after a 488 to our best-effort one (policy
        ``optional``), or None when there is none to make. Later offers use it too."""
        if self.policy is not SrtpPolicy.OPTIONAL or self._offered_proto == "RTP/SAVP":
            return None
        self._offered_proto = "RTP/SAVP"
        return self.offer()

    def take_answer(self, proto: str, crypto: tuple[CryptoAttribute, ...]) -> SdesOutcome:
        """What the answer to our offer (its transport and ``a=crypto`` lines) means; the
        keys in force follow it unless it is unusable."""
        secure = proto.upper() in SECURE_PROTOS
        if self.policy is SrtpPolicy.NO:
            if secure:
                return SdesOutcome(None, f"the answer is {proto} to our plain RTP/AVP offer")
            return self._in_force(None)
        line = self._matching(crypto)
        if line is not None:
            return self._in_force(MediaKeys(line.suite, line.key_salt, self._our_key(line.suite)))
        if secure:
            return SdesOutcome(None, f"the {proto} answer holds no usable a=crypto of ours")
        if self.policy is SrtpPolicy.REQUIRED or self._offered_proto in SECURE_PROTOS:
            return SdesOutcome(None, f"the answer refused SRTP ({proto} without a=crypto)")
        return self._in_force(None)

    def _matching(self, crypto: tuple[CryptoAttribute, ...]) -> CryptoAttribute | None:
        offered = dict(enumerate(OFFER_SUITES, start=1))
        usable = [c for c in crypto if c.usable]
        for c in usable:
            if offered.get(c.tag) == c.suite:
                return c
        for c in usable:
            if c.suite in OFFER_SUITES:
                return c
        return None

    # -- the peer offers -------------------------------------------------------------------

    def answer(
        self, proto: str, crypto: tuple[CryptoAttribute, ...]
    ) -> tuple[SdesOutcome, CryptoAttribute | None]:
        """Our answer to a peer's offer: its outcome (a problem → 488, the session stays
        as it was) and the ``a=crypto`` line our answer carries (None: none). Changes
        nothing: :meth:`adopt` the outcome's keys once the answer is sent."""
        secure = proto.upper() in SECURE_PROTOS
        if self.policy is SrtpPolicy.NO:
            if secure:
                return SdesOutcome(None, f"{proto} offered on a leg without SRTP"), None
            return SdesOutcome(None), None
        line = next((c for c in crypto if c.usable and c.suite in SUITES), None)
        if line is None:
            if secure or self.policy is SrtpPolicy.REQUIRED:
                return SdesOutcome(None, f"the {proto} offer holds no usable a=crypto"), None
            return SdesOutcome(None), None
        ours = CryptoAttribute(line.tag, line.suite, (CryptoKey(self._our_key(line.suite)),))
        keys = MediaKeys(line.suite, line.key_salt, ours.key_salt)
        return SdesOutcome(keys), ours

    def adopt(self, keys: MediaKeys | None) -> None:
        """Put ``keys`` in force (those of an answer we sent)."""
        self.keys = keys

    def _in_force(self, keys: MediaKeys | None) -> SdesOutcome:
        self.keys = keys
        return SdesOutcome(keys)
