"""SRTP and SRTCP for one direction of one leg (RFC 3711), over libsrtp via pylibsrtp.

Owns the mapping from an SDES crypto-suite name (``sipdialer.sip.sdp_crypto``) to a
libsrtp profile and the per-direction contexts the relay needs: :class:`SrtpReceiver`
checks and decrypts what a peer sends (any SSRC: a peer may change it, libsrtp keeps a
replay window and rollover counter per SSRC), :class:`SrtpSender` encrypts what we send
with our own key. A packet that fails authentication or the replay check is dropped and
counted (``forged``, ``replayed``), never raised into the hot path; after a re-key the
replaced inbound key overlaps briefly (:data:`KEY_OVERLAP`). A packet the sender refuses
(an index sent twice: keystream reuse) raises :class:`SrtpProtectError`, an ``OSError``
the relay drops like a failed send. The cipher is libsrtp's, not ours (a maintained,
audited implementation; pylibsrtp is the binding aiortc uses). Keys travel as
:class:`SrtpKey` (the relay's input, from SDP) and are held in these contexts; neither
shows them in ``repr``/``str`` and nothing here logs them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pylibsrtp

from sipdialer.rtp.errors import RtpError

__all__ = [
    "PROFILES",
    "SrtpKey",
    "SrtpProtectError",
    "SrtpReceiver",
    "SrtpSender",
    "SrtpSetupError",
]

PROFILES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}

_REPLAY = ("replay check failed (bad index)", "replay check failed (index too old)")
#: RTP packets the replay window remembers (libsrtp's default is 128).
WINDOW = 1024
#: Seconds a replaced inbound key is still accepted after a re-key (packets in flight; a
#: peer that switches keys when our answer reaches it), unless its new key is seen first.
KEY_OVERLAP = 2.0


class SrtpSetupError(RtpError, ValueError):
    """A suite we do not speak or a key of the wrong length."""


class SrtpProtectError(RtpError, OSError):
    """libsrtp refused to encrypt a packet: its sequence number was already sent with this
    key (sending it again would reuse keystream). An ``OSError`` so the relay's send path
    drops and counts it like a full socket buffer."""


@dataclass(frozen=True, slots=True)
class SrtpKey:
    """One direction's SDES master key, as the relay is given it (from an ``a=crypto``).

    Two keys are equal when suite and key are: the relay keeps a context across a
    re-INVITE that repeats the same key. The key never appears in ``repr``/``str``."""

    suite: str
    """A key of :data:`PROFILES`, e.g. ``"AES_CM_128_HMAC_SHA1_80"``."""
    key_salt: bytes = field(repr=False)
    """Master key || master salt."""


def _policy(suite: str, key_salt: bytes, ssrc_type: int) -> pylibsrtp.Policy:
    profile = PROFILES.get(suite)
    if profile is None:
        raise SrtpSetupError(f"unsupported SRTP suite {suite}")
    try:
        policy = pylibsrtp.Policy(key=key_salt, ssrc_type=ssrc_type, srtp_profile=profile)
    except (ValueError, TypeError, pylibsrtp.Error) as exc:
        raise SrtpSetupError(f"{suite}: {exc}") from None
    policy.window_size = WINDOW
    return policy


class SrtpReceiver:
    """Checks and decrypts SRTP/SRTCP from a peer keyed with the peer's master key.

    ``previous``: the receiver this one replaces (the peer re-keyed). What fails under
    the new key is tried under the old one for :data:`KEY_OVERLAP` seconds, or until the
    first RTP packet under the new key, whichever comes first; the old context keeps its
    own replay window. Only what fails under both is counted (as replayed if either
    context saw it before, else as forged)."""

    __slots__ = ("_previous", "_session", "_until", "forged", "replayed")

    def __init__(self, suite: str, key_salt: bytes, previous: SrtpReceiver | None = None) -> None:
        self._session = pylibsrtp.Session(
            _policy(suite, key_salt, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        )
        self._previous: pylibsrtp.Session | None = None
        self._until = 0.0
        if previous is not None:
            self._previous = previous._session
            self._until = time.monotonic() + KEY_OVERLAP
        self.forged = 0
        """Packets that failed authentication (wrong key, tampered, garbage)."""
        self.replayed = 0
        """Packets already seen, or too old for the replay window."""

    def rtp(self, packet: bytes) -> bytes | None:
        """The plain RTP packet, or None (dropped and counted)."""
        try:
            clear = self._session.unprotect(packet)
        except pylibsrtp.Error as exc:
            return self._failed(packet, exc, False)
        except ValueError:  # longer than libsrtp's buffer
            self.forged += 1
            return None
        if self._previous is not None:  # the peer uses its new key: the old one is done
            self._previous = None
        return clear

    def rtcp(self, packet: bytes) -> bytes | None:
        """The plain RTCP packet, or None (dropped and counted)."""
        try:
            return self._session.unprotect_rtcp(packet)
        except pylibsrtp.Error as exc:
            return self._failed(packet, exc, True)
        except ValueError:
            self.forged += 1
        return None

    def _failed(self, packet: bytes, exc: pylibsrtp.Error, rtcp: bool) -> bytes | None:
        replay = str(exc) in _REPLAY
        old = self._previous
        if old is not None:
            if time.monotonic() < self._until:
                try:
                    return old.unprotect_rtcp(packet) if rtcp else old.unprotect(packet)
                except pylibsrtp.Error as old_exc:
                    replay = replay or str(old_exc) in _REPLAY
            else:
                self._previous = None
        if replay:
            self.replayed += 1
        else:
            self.forged += 1
        return None


class SrtpSender:
    """Encrypts RTP/SRTCP we send with our master key (fresh per call and direction)."""

    __slots__ = ("_session",)

    def __init__(self, suite: str, key_salt: bytes) -> None:
        self._session = pylibsrtp.Session(
            _policy(suite, key_salt, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        )

    def rtp(self, packet: bytes | bytearray) -> bytes:
        """The SRTP packet (:class:`SrtpProtectError` for an index already sent)."""
        try:
            return self._session.protect(packet if packet.__class__ is bytes else bytes(packet))
        except pylibsrtp.Error as exc:
            raise SrtpProtectError(str(exc)) from None

    def rtcp(self, packet: bytes) -> bytes:
        return self._session.protect_rtcp(packet)
