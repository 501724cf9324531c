"""The call engine's exception root."""

from sipdialer.errors import SipdialerError


class EngineError(SipdialerError):
    """Root of the call engine's exceptions."""
