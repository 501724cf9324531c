"""The one exception family the SIP parser raises for input it refuses."""


class SipParseError(ValueError):
    """The bytes are not a well-formed SIP message (or exceed our size limits)."""


class SipVersionError(SipParseError):
    """A syntactically plausible message of a SIP version other than 2.0 (answer 505)."""
