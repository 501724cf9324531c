"""The asyncio layer's exception root: :class:`AioError` is the base of every exception the
transports, the resolver and the runtimes in ``sipdialer.aio`` raise on purpose (leaves live
in their modules, e.g. ``resolver.ResolveError``)."""

from sipdialer.errors import SipdialerError

__all__ = ["AioError"]


class AioError(SipdialerError):
    """Root of the asyncio layer's exceptions."""
