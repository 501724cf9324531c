"""The SIP layer's exceptions: :class:`SipError` is the root of every exception the sans-IO
SIP core raises (parse errors here; digest, SDP and transaction errors in their modules)."""

from sipdialer.errors import SipdialerError


class SipError(SipdialerError):
    """Root of the SIP layer's exceptions."""


class SipParseError(SipError, ValueError):
    """The bytes are not a well-formed SIP message (or exceed our size limits)."""


class SipVersionError(SipParseError):
    """A syntactically plausible message of a SIP version other than 2.0 (answer 505)."""
