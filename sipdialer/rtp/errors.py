"""The media layer's exception root."""

from sipdialer.errors import SipdialerError


class RtpError(SipdialerError):
    """Root of the RTP layer's exceptions."""
