"""The root of every exception sipdialer raises on purpose, and one root per layer.

Each layer raises only subclasses of its own root, so a caller one layer up can catch
"anything the SIP core refused" (``SipError``) or "anything the engine refused"
(``EngineError``) without knowing the leaf classes. Leaves also keep their builtin base
(``ValueError``, ``LookupError``, ``RuntimeError``) where callers catch those.
"""

from __future__ import annotations

__all__ = ["SipdialerError"]


class SipdialerError(Exception):
    """Root of sipdialer's own exceptions."""
