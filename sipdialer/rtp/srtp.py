"""SRTP and SRTCP for one direction of one leg (RFC 3711), over libsrtp via pylibsrtp.

Owns the mapping from an SDES crypto-suite name (``sipdialer.sip.sdp_crypto``) to a
libsrtp profile and the per-direction contexts the relay needs: :class:`SrtpReceiver`
checks and decrypts what a peer sends (any SSRC: a peer may change it, libsrtp keeps a
replay window and rollover counter per SSRC), :class:`SrtpSender` encrypts what we send
with our own key. A packet that fails authentication or the replay check is dropped and
counted (``forged``, ``replayed``), never raised into the hot path. The cipher is
libsrtp's, not ours (a maintained, audited implementation; pylibsrtp is the binding
aiortc uses). Keys are held here and nowhere else in the relay; nothing here logs them.
"""

from __future__ import annotations

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
    """Checks and decrypts SRTP/SRTCP from a peer keyed with the peer's master key."""

    __slots__ = ("_session", "forged", "replayed")

    def __init__(self, suite: str, key_salt: bytes) -> None:
        self._session = pylibsrtp.Session(
            _policy(suite, key_salt, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        )
        self.forged = 0
        """Packets that failed authentication (wrong key, tampered, garbage)."""
        self.replayed = 0
        """Packets already seen, or too old for the replay window."""

    def rtp(self, packet: bytes) -> bytes | None:
        """The plain RTP packet, or None (dropped and counted)."""
        try:
            return self._session.unprotect(packet)
        except pylibsrtp.Error as exc:
            self._count(exc)
        except ValueError:  # longer than libsrtp's buffer
            self.forged += 1
        return None

    def rtcp(self, packet: bytes) -> bytes | None:
        """The plain RTCP packet, or None (dropped and counted)."""
        try:
            return self._session.unprotect_rtcp(packet)
        except pylibsrtp.Error as exc:
            self._count(exc)
        except ValueError:
            self.forged += 1
        return None

    def _count(self, exc: pylibsrtp.Error) -> None:
        if str(exc) in _REPLAY:
            self.replayed += 1
        else:
            self.forged += 1


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
