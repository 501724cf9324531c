"""sipdialer: a click-to-dial softswitch (SIP B2BUA, media relay, recorder, notifications)."""

__version__ = "0.1.0"
