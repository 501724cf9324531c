"""The sans-IO front of the SIP stack: bytes in, bytes and events out (RFC 3261 §8, §9,
§17, §18; RFC 3581; RFC 6026).

Owns :class:`SipEndpoint`, which a thin asyncio adapter drives: it hands over every
datagram or framed TCP message (``receive``), every transport failure
(``transport_error``) and the passing of time (``get_timer``/``handle_timer``), and
drains ``messages_to_send`` and ``next_event`` after each call. The transaction user
(the B2BUA) sends requests and responses through it. No sockets, no clocks: every
call takes ``now``.

What it does on the way in:

* Parses; a request it cannot parse is answered 400 (505 for another SIP version) when
  its Via, From, To, Call-ID and CSeq can still be read, else dropped; a broken response
  is dropped. Drops are counted in ``stats``. ``receive`` never raises.
* Stamps the top Via of a request with ``received``/``rport`` (RFC 3581) and computes
  where its responses go (§18.2.2): over TCP back to the source, over UDP to the
  received IP at ``rport`` or the Via port (5060 by default). ``maddr`` is ignored.
* Matches requests to server transactions (:func:`server_key`: branch + sent-by +
  method, ACK finding its INVITE; Call-ID/CSeq/From-tag/Via for RFC 2543 branches).
  Retransmissions go to their transaction; a new request creates one and is passed up
  as :class:`RequestReceived` — unless it is answered *statelessly* (RFC 3261 §8.2.7,
  Kamailio's ``sl_send_reply``): a request :func:`request_problem` refuses (400/416),
  one the UA core's :attr:`SipEndpoint.stateless_policy` answers at once (OPTIONS, a
  refused INVITE, 405/481/501…), and one that finds the server transaction table full
  (503 + Retry-After). A stateless answer is sent once per request received and leaves
  nothing behind: no transaction, no timers, no retransmissions; a retransmitted request
  is simply answered again. An ACK to a 2xx matches no transaction:
  it stops our 2xx retransmission and is passed up with ``transaction=None``. CANCEL is
  a transaction of its own, passed up; :meth:`find_invite_server_transaction` finds the
  INVITE it cancels.
* Matches responses to client transactions by branch + CSeq method, after checking that
  the top Via is ours; a 2xx to an INVITE that matches nothing is passed up with
  ``transaction=None`` (so the dialog re-ACKs); other strays are dropped.

Bounded state: the server transaction table holds at most ``max_server_transactions``
(and at most ``max_server_transactions_per_source`` from one IP, so one flooding source
cannot take the whole table); beyond that a new request gets a stateless 503 with
Retry-After (``overload_retry_after`` seconds) and the refusal is logged at most a few
times a second per source (:class:`~sipdialer.logs.LogThrottle`). Each UDP non-INVITE
server transaction lives 64·T1 (32 s) after its answer, so without the cap a flood of
2,000 requests a second would hold 64,000 of them.

On the way out it stamps our Via (fresh branch, ``rport``), Max-Forwards and
User-Agent on requests, builds CANCELs (§9.1, held back until a provisional arrived)
and, after a 2xx to an INVITE, retransmits it until the ACK (:class:`AckTimeout` if
none comes within 64·T1).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import re
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipdialer.logs import LogThrottle, quote_value
from sipdialer.sip import ids
from sipdialer.sip.address import Via, split_commas
from sipdialer.sip.dialog import Uas2xxRetransmitter
from sipdialer.sip.errors import SipParseError, SipVersionError
from sipdialer.sip.events import (
    AckTimeout,
    Addr,
    Event,
    Outgoing,
    RequestReceived,
    ResponseReceived,
)
from sipdialer.sip.message import (
    MAX_CSEQ,
    Headers,
    Request,
    Response,
    is_token,
    make_response,
    parse_cseq,
    parse_message,
    request_problem,
)
from sipdialer.sip.timers import DEFAULT_TIMERS, TimerConfig
from sipdialer.sip.transaction import (
    ACCEPTED,
    CALLING,
    MAGIC_COOKIE,
    PROCEEDING,
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    Transaction,
    TransactionKey,
    TransactionStateError,
    client_key,
    server_key,
)

__all__ = ["Addr", "Outgoing", "SipEndpoint", "StatelessPolicy", "UasAnswer", "build_cancel"]

log = logging.getLogger(__name__)

_NEEDED_TO_ANSWER = ("Via", "From", "To", "Call-ID", "CSeq")
_LOOKS_LIKE_VIA = re.compile(r"SIP\s*/\s*\d+\.\d+\s*/\s*[A-Za-z]+\s+[\w.\[\]:-]+", re.A)
Timed = Transaction | Uas2xxRetransmitter
AckKey = tuple[str, int, str]

MAX_SERVER_TRANSACTIONS = 8192
"""Default bound on the server transaction table (about 4 kB each: some 35 MB)."""
MAX_SERVER_TRANSACTIONS_PER_SOURCE = 2048
"""Default share of the table one source IP may hold."""


@dataclass(frozen=True)
class UasAnswer:
    """An answer the UA core decided for a request: status, reason (None: the standard
    phrase) and extra headers (the endpoint adds Via/From/To+tag/Call-ID/CSeq)."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


StatelessPolicy = Callable[[Request, Addr, str], UasAnswer | None]
"""``policy(request, source, transport)``: the answer to send statelessly to a new request
(no transaction is created), or None to hand it to the TU in a server transaction."""


def sanitise_reason(text: str) -> str:
    """A reason phrase from arbitrary text: printable ASCII only, at most 80 characters."""
    return "".join(c for c in text if " " <= c <= "~")[:80].strip() or "Bad Request"


def build_cancel(invite: Request, reason: str | None = None) -> Request:
    """CANCEL for a sent INVITE (§9.1): its top Via (same branch), Request-URI, Call-ID,
    From, To, CSeq number and Route; ``reason`` is a Reason header value (RFC 3326)."""
    headers = Headers()
    headers.add("Via", split_commas(invite.headers.get("Via") or "")[0])
    headers.add("Max-Forwards", "70")
    for name in ("From", "To", "Call-ID"):
        headers.add(name, invite.headers.get(name) or "")
    headers.add("CSeq", f"{invite.cseq()[0]} CANCEL")
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    if reason:
        headers.add("Reason", reason)
    return Request("CANCEL", invite.uri, headers)


def _repair_cseq(request: Request) -> None:
    """Make the CSeq a 400 will echo well-formed, so that the peer's parser accepts the
    400: the number clamped to 2**31-1, the method kept if it is a token, else the
    request's (responses are matched on branch and CSeq method)."""
    value = request.headers.get("CSeq") or ""
    try:
        parse_cseq(value)
        return
    except (SipParseError, ValueError):  # parse_cseq lets int() errors through
        pass
    digits, _, method = value.strip().partition(" ")
    if digits.isascii() and digits.isdigit():
        number = MAX_CSEQ if len(digits) > 10 else min(int(digits), MAX_CSEQ)
    else:
        number = 0
    method = method.strip() if is_token(method.strip()) else request.method
    request.headers.set("CSeq", f"{number} {method}")


def _ack_key(message: Request | Response) -> AckKey | None:
    """What ties an ACK to the 2xx it acknowledges: Call-ID, CSeq number, To tag."""
    try:
        return (message.call_id, message.cseq()[0], message.to_addr().tag or "")
    except SipParseError:
        return None


class SipEndpoint:
    """One SIP stack instance bound to our advertised ``host:port`` (Via sent-by).

    Drive the transactions it returns only through it (``respond``, ``send_cancel``):
    it re-reads their timers after every call it makes on them.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        timers: TimerConfig = DEFAULT_TIMERS,
        user_agent: str = "sipdialer",
        max_server_transactions: int = MAX_SERVER_TRANSACTIONS,
        max_server_transactions_per_source: int = MAX_SERVER_TRANSACTIONS_PER_SOURCE,
        overload_retry_after: int = 5,
    ) -> None:
        self.host = host
        self.port = port
        self.timers = timers
        self.user_agent = user_agent
        self.max_server_transactions = max_server_transactions
        """New requests beyond this many live server transactions get a stateless 503."""
        self.max_server_transactions_per_source = max_server_transactions_per_source
        """… and beyond this many from one source IP."""
        self.overload_retry_after = overload_retry_after
        """Retry-After (seconds) of that 503."""
        self.stateless_policy: StatelessPolicy | None = None
        """The UA core's stateless answers (set by the user agent); None: every new
        request goes to the TU in a transaction."""
        self.stats: Counter[str] = Counter()
        """Counters: ``dropped_*`` for discarded input, ``answered_<status>`` for
        requests answered without the TU (``answered_503`` when the table is full),
        ``stateless_<status>`` for the stateless policy's answers, ``internal_errors``
        (always a bug)."""
        self._clients: dict[TransactionKey, ClientTransaction] = {}
        self._servers: dict[TransactionKey, ServerTransaction] = {}
        self._server_source: dict[TransactionKey, str] = {}
        self._per_source: Counter[str] = Counter()
        self._overload_log = LogThrottle(per_key=1, total=10)
        self._ok_retransmitters: dict[AckKey, Uas2xxRetransmitter] = {}
        self._cancel_pending: dict[TransactionKey, str | None] = {}
        self._events: deque[Event] = deque()
        self._outgoing: list[Outgoing] = []
        self._heap: list[tuple[float, int, Timed]] = []
        self._scheduled: dict[Timed, float] = {}
        self._counter = itertools.count()
        self._tag_secret = secrets.token_bytes(16)

    # ---- introspection -------------------------------------------------------------------
    @property
    def client_transactions(self) -> tuple[ClientTransaction, ...]:
        return tuple(self._clients.values())

    @property
    def server_transactions(self) -> tuple[ServerTransaction, ...]:
        return tuple(self._servers.values())

    # ---- UAC -------------------------------------------------------------------------------
    def new_branch(self) -> str:
        """A fresh RFC 3261 branch: the magic cookie and 96 random bits."""
        return MAGIC_COOKIE + ids.token_hex(12)

    def send_request(
        self, request: Request, dest: Addr, transport: str, now: float
    ) -> ClientTransaction:
        """Send a copy of ``request`` with our Via on top in a new client transaction."""
        if request.method in ("ACK", "CANCEL"):
            raise ValueError(f"{request.method} goes through send_stateless/send_cancel")
        transport = transport.upper()
        req = Request(request.method, request.uri, request.headers.copy(), request.body)
        self._stamp_request(req, transport)
        cls = InviteClientTransaction if req.method == "INVITE" else NonInviteClientTransaction
        tx = cls(req, dest, transport, now, self.timers)
        self._clients[tx.key] = tx
        self._collect(tx)
        return tx

    def send_cancel(
        self, invite_tx: ClientTransaction, now: float, reason: str | None = None
    ) -> ClientTransaction | None:
        """Cancel a pending INVITE (§9.1). Returns the CANCEL's transaction, or None when
        nothing was sent now: a final response already arrived (nothing to cancel), or
        no provisional yet — then the CANCEL goes out when the first one arrives, unless
        a final comes first (a 2xx then still needs the TU's ACK and BYE)."""
        if not isinstance(invite_tx, InviteClientTransaction):
            raise TransactionStateError("only an INVITE client transaction can be cancelled")
        if invite_tx.state is CALLING:
            self._cancel_pending[invite_tx.key] = reason
            return None
        if invite_tx.state is not PROCEEDING:
            return None
        existing = self._clients.get((invite_tx.key[0], "CANCEL"))
        return existing or self._start_cancel(invite_tx, reason, now)

    def send_stateless(self, message: Request | Response, dest: Addr, transport: str) -> None:
        """Send outside any transaction: an ACK to a 2xx, or a retransmitted 2xx. A request
        without Via gets ours (fresh branch) added *to the object*, so re-sending the same
        ACK object for a retransmitted 2xx re-uses its branch."""
        transport = transport.upper()
        if isinstance(message, Request) and "Via" not in message.headers:
            self._stamp_request(message, transport)
        self._outgoing.append(Outgoing(message.to_bytes(), dest, transport))

    def _stamp_request(self, request: Request, transport: str) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        via = f"SIP/2.0/{transport} {host}:{self.port};branch={self.new_branch()};rport"
        request.headers.insert_first("Via", via)
        if "Max-Forwards" not in request.headers:
            request.headers.add("Max-Forwards", "70")
        if "User-Agent" not in request.headers and self.user_agent:
            request.headers.add("User-Agent", self.user_agent)

    def _start_cancel(
        self, invite_tx: ClientTransaction, reason: str | None, now: float
    ) -> ClientTransaction:
        cancel = build_cancel(invite_tx.request, reason)
        if self.user_agent:
            cancel.headers.add("User-Agent", self.user_agent)
        tx = NonInviteClientTransaction(
            cancel, invite_tx.dest, invite_tx.transport, now, self.timers
        )
        self._clients[tx.key] = tx
        self._collect(tx)
        return tx

    # ---- UAS -------------------------------------------------------------------------------
    def respond(self, transaction: ServerTransaction, response: Response, now: float) -> None:
        """Answer through ``transaction``; a 2xx to an INVITE is then retransmitted until
        its ACK arrives (or :class:`AckTimeout`)."""
        transaction.send_response(response, now)
        self._collect(transaction)
        if isinstance(transaction, InviteServerTransaction) and 200 <= response.status < 300:
            key = _ack_key(response)
            if key is None:
                return
            old = self._ok_retransmitters.pop(key, None)
            if old is not None:
                self._scheduled.pop(old, None)
            retransmitter = Uas2xxRetransmitter(
                response,
                now,
                self.timers,
                addr=transaction.response_addr,
                transport=transaction.transport,
            )
            self._ok_retransmitters[key] = retransmitter
            self._schedule(retransmitter)

    def response_to(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        **kw: Any,
    ) -> Response:
        """:func:`make_response` with our To tag (:meth:`to_tag_for`) when the request
        has none and the status is not 100. Keywords go to make_response."""
        kw.setdefault("to_tag", self.to_tag_for(request))
        return make_response(request, status, reason, **kw)

    def to_tag_for(self, request: Request) -> str:
        """Our To tag for responses to ``request``: the same for every response to it (and
        to its CANCEL), derived from Call-ID, From tag and branch with a local secret."""
        try:
            from_part = request.from_addr().tag or ""
        except SipParseError:
            from_part = request.headers.get("From") or ""
        try:
            branch = request.top_via().branch or ""
        except SipParseError:
            branch = request.headers.get("Via") or ""
        text = "\0".join((request.call_id, from_part, branch))
        digest = hashlib.blake2s(
            text.encode("utf-8", "surrogateescape"), key=self._tag_secret, digest_size=8
        )
        return digest.hexdigest()

    def find_invite_server_transaction(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a received CANCEL refers to (§9.2), if alive."""
        try:
            key = server_key(cancel)
        except SipParseError:
            return None
        tx = self._servers.get((*key[:-1], "INVITE"))
        return tx if isinstance(tx, InviteServerTransaction) else None

    # ---- input -----------------------------------------------------------------------------
    def receive(self, data: bytes, source: Addr, transport: str, now: float) -> None:
        """One datagram, or one framed message from a stream. Never raises."""
        try:
            self._receive(bytes(data), source, transport.upper(), now)
        except Exception:  # a packet must never take the stack down
            self.stats["internal_errors"] += 1
            log.exception(
                "event=sip_internal_error source=%s port=%d", quote_value(source[0]), source[1]
            )

    def transport_error(self, dest: Addr, transport: str, now: float) -> None:
        """``dest`` is unreachable: fail the client transactions still waiting on it."""
        transport = transport.upper()
        for tx in list(self._clients.values()):
            if tx.dest == dest and tx.transport == transport:
                tx.transport_failed(now)
                self._collect(tx)

    def _receive(self, data: bytes, source: Addr, transport: str, now: float) -> None:
        try:
            message = parse_message(data, stream=transport != "UDP")
        except SipParseError as exc:
            self._reject_unparsable(data, exc, source, transport)
            return
        if isinstance(message, Response):
            self._receive_response(message, now)
        else:
            self._receive_request(message, source, transport, now)

    def _reject_unparsable(
        self, data: bytes, exc: SipParseError, source: Addr, transport: str
    ) -> None:
        """400 (505) to a request we cannot parse, when we can still say whom to: its top
        Via parses (normal routing), or at least looks like one (then to the source)."""
        try:
            request = parse_message(data, stream=transport != "UDP", strict=False)
            first_via = split_commas(request.headers.get("Via") or "")[0]
        except SipParseError:
            self.stats["dropped_malformed"] += 1
            return
        answerable = all(name in request.headers for name in _NEEDED_TO_ANSWER)
        if (
            not isinstance(request, Request)
            or request.method == "ACK"
            or not answerable
            or not _LOOKS_LIKE_VIA.match(first_via)
        ):
            self.stats["dropped_malformed"] += 1
            return
        try:
            via = self._stamp_via(request, request.top_via(), source)
            addr = self._response_addr(via, source, transport)
        except SipParseError:  # e.g. "SIP/7.0/UDP host": echo it, answer the source
            addr = source
        _repair_cseq(request)
        if isinstance(exc, SipVersionError):
            status, reason = 505, None
        else:
            status, reason = 400, sanitise_reason(str(exc))
        response = make_response(request, status, reason, to_tag=self.to_tag_for(request))
        self._outgoing.append(Outgoing(response.to_bytes(), addr, transport))
        self.stats[f"answered_{status}"] += 1

    def _receive_request(self, req: Request, source: Addr, transport: str, now: float) -> None:
        if "Via" not in req.headers:
            self.stats["dropped_no_via"] += 1
            return
        via = self._stamp_via(req, req.top_via(), source)
        try:
            key: TransactionKey | None = server_key(req)
        except SipParseError:  # RFC 2543 branch without a readable CSeq/From
            key = None
        if req.method == "ACK":
            self._receive_ack(req, key, source, transport, now)
            return
        tx = self._servers.get(key) if key is not None else None
        if tx is not None:
            tx.receive_request(req, now)
            self._collect(tx)
            return
        addr = self._response_addr(via, source, transport)
        problem = request_problem(req)
        if problem is not None or key is None:
            status, reason = problem or (400, "Bad Request")
            self._answer_stateless(req, UasAnswer(status, reason), addr, transport)
            self.stats[f"answered_{status}"] += 1
            return
        answer = self._stateless_answer(req, source, transport)
        if answer is not None:
            self._answer_stateless(req, answer, addr, transport)
            self.stats[f"stateless_{answer.status}"] += 1
            return
        if self._table_full(source[0], now):
            retry = (("Retry-After", str(self.overload_retry_after)),)
            self._answer_stateless(
                req, UasAnswer(503, "Service Unavailable", retry), addr, transport
            )
            self.stats["answered_503"] += 1
            return
        cls = InviteServerTransaction if req.method == "INVITE" else NonInviteServerTransaction
        tx = cls(req, addr, transport, now, self.timers)
        self._servers[key] = tx
        self._server_source[key] = source[0]
        self._per_source[source[0]] += 1
        self._events.append(RequestReceived(req, tx, source, transport))
        self._collect(tx)

    def _stateless_answer(self, req: Request, source: Addr, transport: str) -> UasAnswer | None:
        """Ask the UA core's policy; a policy that fails leaves the request to the TU."""
        if self.stateless_policy is None:
            return None
        try:
            return self.stateless_policy(req, source, transport)
        except Exception:  # a bug in the policy must not drop requests
            self.stats["internal_errors"] += 1
            log.exception("event=sip_stateless_policy_error method=%s", quote_value(req.method))
            return None

    def _table_full(self, ip: str, now: float) -> bool:
        """No room for one more server transaction (in total, or for this source)."""
        if len(self._servers) >= self.max_server_transactions:
            scope = "total"
        elif self._per_source[ip] >= self.max_server_transactions_per_source:
            scope = "source"
        else:
            return False
        suppressed = self._overload_log.admit(ip, now)
        if suppressed is not None:
            log.warning(
                "event=sip_transactions_full scope=%s source=%s transactions=%d "
                "from_source=%d limit=%d per_source_limit=%d suppressed=%d",
                scope,
                quote_value(ip),
                len(self._servers),
                self._per_source[ip],
                self.max_server_transactions,
                self.max_server_transactions_per_source,
                suppressed,
            )
        return True

    def _answer_stateless(
        self, req: Request, answer: UasAnswer, addr: Addr, transport: str
    ) -> None:
        """Send ``answer`` to ``req`` without a transaction (RFC 3261 §8.2.7): once, now,
        with the To tag every answer to this request gets (:meth:`to_tag_for`)."""
        response = make_response(
            req,
            answer.status,
            answer.reason,
            to_tag=self.to_tag_for(req),
            extra=list(answer.headers),
        )
        self._outgoing.append(Outgoing(response.to_bytes(), addr, transport))

    def _receive_ack(
        self,
        ack: Request,
        key: TransactionKey | None,
        source: Addr,
        transport: str,
        now: float,
    ) -> None:
        tx = self._servers.get(key) if key is not None else None
        if isinstance(tx, InviteServerTransaction) and tx.state is not ACCEPTED:
            tx.receive_request(ack, now)  # the ACK of our 3xx-6xx
            self._collect(tx)
            return
        if request_problem(ack) is not None:
            self.stats["dropped_bad_ack"] += 1
            return
        ack_key = _ack_key(ack)
        retransmitter = self._ok_retransmitters.pop(ack_key, None) if ack_key else None
        if retransmitter is not None:
            retransmitter.ack_received()
            self._scheduled.pop(retransmitter, None)
        self._events.append(RequestReceived(ack, None, source, transport))

    def _receive_response(self, resp: Response, now: float) -> None:
        try:
            via = resp.top_via()
            key = client_key(resp)
        except SipParseError:
            self.stats["dropped_malformed"] += 1
            return
        if not self._is_ours(via):
            self.stats["dropped_foreign_via"] += 1
            return
        tx = self._clients.get(key)
        if tx is None:
            if 200 <= resp.status < 300 and key[1] == "INVITE":
                self._events.append(ResponseReceived(resp, None))
            else:
                self.stats["dropped_unmatched_response"] += 1
            return
        tx.receive_response(resp, now)
        self._collect(tx)
        if tx.key in self._cancel_pending and tx.state is not CALLING:
            reason = self._cancel_pending.pop(tx.key)
            if tx.state is PROCEEDING:
                self._start_cancel(tx, reason, now)

    # ---- Via and routing (§18.2.2, RFC 3581) ----------------------------------------------
    def _stamp_via(self, request: Request, via: Via, source: Addr) -> Via:
        """Add ``received`` (and fill ``rport``) to the top Via; return the new Via."""
        ip, port = source
        if via.wants_rport:
            stamped = via.with_params(rport=str(port), received=ip)
        elif via.host.strip("[]") != ip:
            stamped = via.with_params(received=ip)
        else:
            return via
        first = request.headers.remove_first("Via") or ""
        request.headers.insert_first("Via", ", ".join([str(stamped), *split_commas(first)[1:]]))
        return stamped

    @staticmethod
    def _response_addr(via: Via, source: Addr, transport: str) -> Addr:
        if transport != "UDP":
            return source
        return (via.received or via.host.strip("[]"), via.rport or via.port or 5060)

    def _is_ours(self, via: Via) -> bool:
        same_host = via.host.strip("[]").lower() == self.host.strip("[]").lower()
        return same_host and (via.port or 5060) == self.port

    # ---- time --------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """The earliest deadline of any transaction or 2xx retransmission, or None."""
        while self._heap:
            deadline, _, item = self._heap[0]
            if self._scheduled.get(item) == deadline:
                return deadline
            heapq.heappop(self._heap)  # stale: re-armed since, or finished
        return None

    def handle_timer(self, now: float) -> None:
        """Fire everything due at ``now``; terminated transactions are forgotten."""
        while self._heap and self._heap[0][0] <= now:
            deadline, _, item = heapq.heappop(self._heap)
            if self._scheduled.get(item) != deadline:
                continue
            del self._scheduled[item]
            if isinstance(item, Uas2xxRetransmitter):
                self._run_retransmitter(item, now)
            else:
                item.handle_timer(now)
                self._collect(item)

    def _schedule(self, item: Timed) -> None:
        deadline = item.get_timer()
        if deadline is None:
            self._scheduled.pop(item, None)
        elif self._scheduled.get(item) != deadline:
            self._scheduled[item] = deadline
            heapq.heappush(self._heap, (deadline, next(self._counter), item))

    def _run_retransmitter(self, retransmitter: Uas2xxRetransmitter, now: float) -> None:
        for data in retransmitter.handle_timer(now):
            addr = retransmitter.addr
            assert addr is not None
            self._outgoing.append(Outgoing(data, addr, retransmitter.transport))
        if not retransmitter.timed_out:
            self._schedule(retransmitter)
            return
        assert retransmitter.response is not None
        key = _ack_key(retransmitter.response)
        if key is not None and self._ok_retransmitters.get(key) is retransmitter:
            del self._ok_retransmitters[key]
        self._events.append(AckTimeout(retransmitter.response))

    def _collect(self, tx: Transaction) -> None:
        """Move a transaction's output to ours; forget it once terminated."""
        self._outgoing.extend(tx.drain_outgoing())
        self._events.extend(tx.drain_events())
        if not tx.terminated:
            self._schedule(tx)
            return
        if isinstance(tx, ClientTransaction) and self._clients.get(tx.key) is tx:
            del self._clients[tx.key]
            self._cancel_pending.pop(tx.key, None)
        elif isinstance(tx, ServerTransaction) and self._servers.get(tx.key) is tx:
            del self._servers[tx.key]
            ip = self._server_source.pop(tx.key, None)
            if ip is not None:
                self._per_source[ip] -= 1
                if self._per_source[ip] <= 0:
                    del self._per_source[ip]
        self._scheduled.pop(tx, None)

    # ---- output ------------------------------------------------------------------------------
    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def messages_to_send(self) -> list[Outgoing]:
        out, self._outgoing = self._outgoing, []
        return out
