"""What the sans-IO SIP stack hands back to its driver: datagrams to send and events.

Owns :class:`Outgoing` (bytes plus where to send them) and the event classes the
transaction user (TU) reads from :meth:`SipEndpoint.next_event`. All are small frozen
value objects; they carry the transaction they concern so that the TU can correlate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sipdialer.sip.message import Request, Response

if TYPE_CHECKING:
    from sipdialer.sip.transaction import ClientTransaction, ServerTransaction, Transaction

Addr = tuple[str, int]
"""A transport address: (host IP string, port)."""


@dataclass(frozen=True)
class Outgoing:
    """One message to put on the wire."""

    data: bytes
    """The serialised message."""
    addr: Addr
    """Destination. Over TCP the driver maps it to the connection it came from/goes to."""
    transport: str
    """``"UDP"`` or ``"TCP"`` (upper case)."""


@dataclass(frozen=True)
class RequestReceived:
    """A new request for the TU (retransmissions are absorbed by the transaction)."""

    request: Request
    """The request, its top Via already stamped with ``received``/``rport``."""
    transaction: ServerTransaction | None
    """Answer through this with :meth:`SipEndpoint.respond`; ``None`` for an ACK to a
    2xx, which is end-to-end and has no transaction (RFC 3261 §17.2.3, §13.3.1.4)."""
    source: Addr
    """Where the request came from (the packet's source, not the Via)."""
    transport: str
    """Transport it arrived on."""


@dataclass(frozen=True)
class ResponseReceived:
    """A response for the TU: provisional and final responses, and 2xx retransmissions."""

    response: Response
    """The response as received."""
    transaction: ClientTransaction | None
    """The client transaction it belongs to; ``None`` for a stray 2xx to an INVITE whose
    transaction has ended, passed up so that the dialog layer can re-send its ACK."""


@dataclass(frozen=True)
class TransactionTimeout:
    """Timer B, F or H fired: the TU treats a client timeout as a 408 response."""

    transaction: Transaction
    """The transaction that timed out (now terminated)."""


@dataclass(frozen=True)
class TransportError:
    """The transport could not deliver the transaction's request (ICMP, TCP failure)."""

    transaction: Transaction
    """The failed transaction (now terminated); the TU treats it as a 503."""


@dataclass(frozen=True)
class TransactionTerminated:
    """A transaction reached Terminated and was forgotten: drop any per-transaction state."""

    transaction: Transaction
    """The transaction that ended."""


@dataclass(frozen=True)
class AckTimeout:
    """Our 2xx to an INVITE was retransmitted for 64·T1 without an ACK (§13.3.1.4):
    the dialog is confirmed but the TU SHOULD end the session with BYE."""

    response: Response
    """The unacknowledged 2xx (its Call-ID, tags and CSeq identify the dialog)."""


Event = (
    RequestReceived
    | ResponseReceived
    | TransactionTimeout
    | TransportError
    | TransactionTerminated
    | AckTimeout
)
