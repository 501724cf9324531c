"""SIP transactions: the four state machines of RFC 3261 §17, with RFC 6026's Accepted.

Theory of operation
-------------------
A transaction is a pure object. It is fed *inputs* — a message from the network, a
response from the transaction user (TU), the firing of one of its timers, a transport
failure — together with ``now`` (seconds, any monotonic origin). It never reads a
clock or touches a socket: it queues :class:`Outgoing` datagrams (``drain_outgoing``)
and events for the TU (``drain_events``), and tells its driver when it next wants to be
woken (``get_timer``; then call ``handle_timer(now)``).

Each machine is one table, ``{state: {input: (next state, action)}}``, listed below
class by class so that it reads like the RFC figures (Figures 5–8, RFC 6026 Figures
3 and 5). ``action`` names a method ``_<action>`` run *before* the state changes. On
entering a state, the timers that state does not list in ``TIMERS`` are cancelled and
the ones it lists that are not yet running are started with their initial value; a
retransmission action re-arms its own timer. Timers of value zero (D, I, J, K on a
reliable transport) fire within the same call that started them.

An input a state does not list is handled by category: from the network or a timer it
is *absorbed* (the RFC's "discard": a late 1xx, a retransmitted ACK…); from the TU it
is a programming error and raises :class:`TransactionStateError`.

Over UDP requests are retransmitted on Timers A (INVITE: T1, 2·T1, 4·T1… uncapped) and
E (non-INVITE: doubling capped at T2, exactly T2 once a provisional arrived), and a
server's 3xx–6xx to an INVITE on Timer G (doubling capped at T2). Over a reliable
transport A, E and G never run. Timer B/F/H expiry is reported as
:class:`TransactionTimeout`.

The INVITE client transaction ACKs a 3xx–6xx itself (§17.1.1.3). A 2xx is passed up and
the transaction waits in Accepted for Timer M, passing 2xx retransmissions up so that
the TU (the dialog) re-sends *its* ACK; the INVITE server transaction likewise lingers
in Accepted for Timer L, absorbing retransmitted INVITEs. The 100 Trying of an INVITE
server transaction is sent when the TU has not answered within ``TimerConfig.trying``
(200 ms by default, §17.2.1), or at once when the INVITE is retransmitted first.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

from sipdialer.sip.address import split_commas
from sipdialer.sip.errors import SipError
from sipdialer.sip.events import (
    Addr,
    Event,
    Outgoing,
    ResponseReceived,
    TransactionTerminated,
    TransactionTimeout,
    TransportError,
)
from sipdialer.sip.message import Headers, Request, Response, make_response
from sipdialer.sip.timers import DEFAULT_TIMERS, TimerConfig

MAGIC_COOKIE = "z9hG4bK"
"""RFC 3261 branch prefix; a branch without it is matched the RFC 2543 way."""

TransactionKey = tuple[str, ...]


class TransactionStateError(SipError):
    """The TU asked a transaction for something its current state does not allow."""


class TxState(Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


CALLING = TxState.CALLING
TRYING = TxState.TRYING
PROCEEDING = TxState.PROCEEDING
COMPLETED = TxState.COMPLETED
CONFIRMED = TxState.CONFIRMED
ACCEPTED = TxState.ACCEPTED
TERMINATED = TxState.TERMINATED


class Input(Enum):
    # from the network
    RECV_1XX = "1xx received"
    RECV_2XX = "2xx received"
    RECV_FAILURE = "3xx-6xx received"
    RECV_REQUEST = "request retransmission received"
    RECV_ACK = "ACK received"
    TRANSPORT_ERROR = "transport error"
    # from the TU
    SEND_1XX = "TU sends 1xx"
    SEND_2XX = "TU sends 2xx"
    SEND_FAILURE = "TU sends 3xx-6xx"
    # timers; on equal deadlines the one declared first fires first (give up, then resend)
    TIMER_B = "Timer B"
    TIMER_F = "Timer F"
    TIMER_H = "Timer H"
    TIMER_A = "Timer A"
    TIMER_E = "Timer E"
    TIMER_G = "Timer G"
    TIMER_D = "Timer D"
    TIMER_I = "Timer I"
    TIMER_J = "Timer J"
    TIMER_K = "Timer K"
    TIMER_L = "Timer L"
    TIMER_M = "Timer M"
    TIMER_TRYING = "100 Trying timer"


TU_INPUTS = frozenset({Input.SEND_1XX, Input.SEND_2XX, Input.SEND_FAILURE})
_TIMER_ORDER = {name: i for i, name in enumerate(Input)}

Table = dict[TxState, dict[Input, tuple[TxState, str | None]]]


def _received(status: int) -> Input:
    return (
        Input.RECV_1XX if status < 200 else Input.RECV_2XX if status < 300 else Input.RECV_FAILURE
    )


def _sent(status: int) -> Input:
    return (
        Input.SEND_1XX if status < 200 else Input.SEND_2XX if status < 300 else Input.SEND_FAILURE
    )


# ---------------------------------------------------------------------------------------
# matching (§17.1.3, §17.2.3)
# ---------------------------------------------------------------------------------------


def client_key(message: Request | Response) -> TransactionKey:
    """Top-Via branch + CSeq method: what a response shares with its request (§17.1.3)."""
    return (message.top_via().branch or "", message.cseq()[1])


def server_key(request: Request) -> TransactionKey:
    """§17.2.3: top-Via branch + sent-by + method, an ACK counting as its INVITE.

    A branch without the magic cookie (RFC 2543) falls back to Call-ID, CSeq number,
    From tag, top Via (sent-by and branch) and method. The Request-URI and To tag that
    §17.2.3 also lists are left out, so that the ACK of a non-2xx (whose To carries our
    tag) still finds its INVITE. Raises SipParseError when those headers are unreadable.
    """
    via = request.top_via()
    method = "INVITE" if request.method == "ACK" else request.method
    sent_by = f"{via.host.lower()}:{via.port or ''}"
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE):
        return (branch, sent_by, method)
    number, _ = request.cseq()
    from_tag = request.from_addr().tag or ""
    return ("rfc2543", request.call_id, str(number), from_tag, sent_by, branch, method)


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK for a 3xx–6xx final (§17.1.1.3): the INVITE's top Via (same branch),
    Request-URI, Call-ID, From and Route; To from the response (with its tag); CSeq
    number of the INVITE with method ACK."""
    headers = Headers()
    headers.add("Via", split_commas(invite.headers.get("Via") or "")[0])
    headers.add("Max-Forwards", "70")
    headers.add("From", invite.headers.get("From") or "")
    headers.add("To", response.headers.get("To") or "")
    headers.add("Call-ID", invite.call_id)
    headers.add("CSeq", f"{invite.cseq()[0]} ACK")
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    return Request("ACK", invite.uri, headers)


# ---------------------------------------------------------------------------------------
# the machinery shared by the four machines
# ---------------------------------------------------------------------------------------


class Transaction:
    """Table-driven state machine; subclasses provide ``TABLE``, ``TIMERS``, ``INITIAL``."""

    TABLE: ClassVar[Table]
    TIMERS: ClassVar[dict[TxState, tuple[Input, ...]]]
    INITIAL: ClassVar[TxState]

    def __init__(self, request: Request, transport: str, now: float, timers: TimerConfig) -> None:
        self.request = request
        self.transport = transport.upper()
        self.reliable = self.transport != "UDP"
        self.timers = timers
        self.last_response: Response | None = None
        self.state = self.INITIAL
        self._deadlines: dict[Input, float] = {}
        self._intervals: dict[Input, float] = {}
        self._outgoing: list[Outgoing] = []
        self._events: list[Event] = []
        self._enter(self.INITIAL, now)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.key} {self.state.value}>"

    @property
    def key(self) -> TransactionKey:
        raise NotImplementedError

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def terminated(self) -> bool:
        return self.state is TERMINATED

    # ---- driver interface ---------------------------------------------------------------
    def get_timer(self) -> float | None:
        """The earliest deadline of a running timer, or None."""
        return min(self._deadlines.values(), default=None)

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, earliest first."""
        self._run_due(now)

    def drain_outgoing(self) -> list[Outgoing]:
        out, self._outgoing = self._outgoing, []
        return out

    def drain_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    # ---- machinery ----------------------------------------------------------------------
    def _step(self, event: Input, now: float, message: Request | Response | None = None) -> None:
        row = self.TABLE[self.state]
        if event not in row:
            if event in TU_INPUTS:
                raise TransactionStateError(
                    f"{type(self).__name__}: {event.value} is not allowed in {self.state.value}"
                )
            return  # absorbed
        new_state, action = row[event]
        if action is not None:
            getattr(self, f"_{action}")(message, now)
        if new_state is not self.state:
            self._enter(new_state, now)

    def _enter(self, state: TxState, now: float) -> None:
        self.state = state
        live = self.TIMERS.get(state, ())
        for timer in [t for t in self._deadlines if t not in live]:
            del self._deadlines[timer]
        for timer in live:
            delay = self._initial_delay(timer)
            if timer not in self._deadlines and delay is not None:
                self._arm(timer, now, delay)
        if state is TERMINATED:
            self._events.append(TransactionTerminated(self))

    def _run_due(self, now: float) -> None:
        while True:
            due = [t for t, deadline in self._deadlines.items() if deadline <= now]
            if not due:
                return
            timer = min(due, key=lambda t: (self._deadlines[t], _TIMER_ORDER[t]))
            del self._deadlines[timer]
            self._step(timer, now)

    def _arm(self, timer: Input, now: float, delay: float) -> None:
        self._deadlines[timer] = now + delay
        self._intervals[timer] = delay

    def _initial_delay(self, timer: Input) -> float | None:
        """Starting value of a timer; None means "not used on this transport"."""
        t, reliable = self.timers, self.reliable
        retransmit = None if reliable else t.t1
        return {
            Input.TIMER_A: retransmit,
            Input.TIMER_E: retransmit,
            Input.TIMER_G: retransmit,
            Input.TIMER_B: t.timer_b,
            Input.TIMER_F: t.timer_f,
            Input.TIMER_H: t.timer_h,
            Input.TIMER_L: t.timer_l,
            Input.TIMER_M: t.timer_m,
            Input.TIMER_D: t.timer_d(reliable),
            Input.TIMER_I: t.timer_i(reliable),
            Input.TIMER_J: t.timer_j(reliable),
            Input.TIMER_K: t.timer_k(reliable),
            Input.TIMER_TRYING: t.trying,
        }[timer]

    def _output(self, data: bytes, addr: Addr) -> None:
        self._outgoing.append(Outgoing(data, addr, self.transport))

    # ---- actions common to all machines ------------------------------------------------
    def _timeout(self, _message: object, _now: float) -> None:
        self._events.append(TransactionTimeout(self))


# ---------------------------------------------------------------------------------------
# client transactions
# ---------------------------------------------------------------------------------------


class ClientTransaction(Transaction):
    """Sends ``request`` to ``dest`` at construction and follows it to a final response."""

    def __init__(
        self,
        request: Request,
        dest: Addr,
        transport: str,
        now: float,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        self.dest = dest
        self._key = client_key(request)
        self._request_bytes = request.to_bytes()
        super().__init__(request, transport, now, timers)
        self._output(self._request_bytes, dest)
        self._run_due(now)

    @property
    def key(self) -> TransactionKey:
        return self._key

    def receive_response(self, response: Response, now: float) -> None:
        self._step(_received(response.status), now, response)
        self._run_due(now)

    def transport_failed(self, now: float) -> None:
        """The transport reported that ``dest`` cannot be reached."""
        self._step(Input.TRANSPORT_ERROR, now)
        self._run_due(now)

    # ---- actions ------------------------------------------------------------------------
    def _pass_up(self, response: Response, _now: float) -> None:
        self.last_response = response
        self._events.append(ResponseReceived(response, self))

    def _transport_error(self, _message: object, _now: float) -> None:
        self._events.append(TransportError(self))


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 Figure 5 with RFC 6026 Figure 5 (Accepted, Timer M)."""

    INITIAL = CALLING
    TABLE: ClassVar[Table] = {
        CALLING: {
            Input.RECV_1XX: (PROCEEDING, "pass_up"),
            Input.RECV_2XX: (ACCEPTED, "pass_up"),
            Input.RECV_FAILURE: (COMPLETED, "pass_up_and_ack"),
            Input.TIMER_A: (CALLING, "retransmit"),
            Input.TIMER_B: (TERMINATED, "timeout"),
            Input.TRANSPORT_ERROR: (TERMINATED, "transport_error"),
        },
        PROCEEDING: {
            Input.RECV_1XX: (PROCEEDING, "pass_up"),
            Input.RECV_2XX: (ACCEPTED, "pass_up"),
            Input.RECV_FAILURE: (COMPLETED, "pass_up_and_ack"),
            Input.TRANSPORT_ERROR: (TERMINATED, "transport_error"),
        },
        COMPLETED: {
            Input.RECV_FAILURE: (COMPLETED, "send_ack"),
            Input.TIMER_D: (TERMINATED, None),
        },
        ACCEPTED: {
            Input.RECV_2XX: (ACCEPTED, "pass_up"),
            Input.TIMER_M: (TERMINATED, None),
        },
        TERMINATED: {},
    }
    TIMERS: ClassVar[dict[TxState, tuple[Input, ...]]] = {
        CALLING: (Input.TIMER_A, Input.TIMER_B),
        COMPLETED: (Input.TIMER_D,),
        ACCEPTED: (Input.TIMER_M,),
    }

    ack: Request | None = None
    """The ACK this transaction built for a 3xx–6xx final, once there is one."""

    def _retransmit(self, _message: object, now: float) -> None:
        self._output(self._request_bytes, self.dest)
        self._arm(Input.TIMER_A, now, 2 * self._intervals[Input.TIMER_A])

    def _pass_up_and_ack(self, response: Response, now: float) -> None:
        self._pass_up(response, now)
        self.ack = build_ack(self.request, response)
        self._ack_bytes = self.ack.to_bytes()
        self._send_ack(response, now)

    def _send_ack(self, _response: object, _now: float) -> None:
        self._output(self._ack_bytes, self.dest)


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 Figure 6."""

    INITIAL = TRYING
    TABLE: ClassVar[Table] = {
        TRYING: {
            Input.RECV_1XX: (PROCEEDING, "pass_up"),
            Input.RECV_2XX: (COMPLETED, "pass_up"),
            Input.RECV_FAILURE: (COMPLETED, "pass_up"),
            Input.TIMER_E: (TRYING, "retransmit"),
            Input.TIMER_F: (TERMINATED, "timeout"),
            Input.TRANSPORT_ERROR: (TERMINATED, "transport_error"),
        },
        PROCEEDING: {
            Input.RECV_1XX: (PROCEEDING, "pass_up"),
            Input.RECV_2XX: (COMPLETED, "pass_up"),
            Input.RECV_FAILURE: (COMPLETED, "pass_up"),
            Input.TIMER_E: (PROCEEDING, "retransmit"),
            Input.TIMER_F: (TERMINATED, "timeout"),
            Input.TRANSPORT_ERROR: (TERMINATED, "transport_error"),
        },
        COMPLETED: {
            Input.TIMER_K: (TERMINATED, None),
        },
        TERMINATED: {},
    }
    TIMERS: ClassVar[dict[TxState, tuple[Input, ...]]] = {
        TRYING: (Input.TIMER_E, Input.TIMER_F),
        PROCEEDING: (Input.TIMER_E, Input.TIMER_F),
        COMPLETED: (Input.TIMER_K,),
    }

    def _retransmit(self, _message: object, now: float) -> None:
        self._output(self._request_bytes, self.dest)
        t2 = self.timers.t2
        interval = t2 if self.state is PROCEEDING else min(2 * self._intervals[Input.TIMER_E], t2)
        self._arm(Input.TIMER_E, now, interval)


# ---------------------------------------------------------------------------------------
# server transactions
# ---------------------------------------------------------------------------------------


class ServerTransaction(Transaction):
    """Created for a request that matched no transaction; responses go to ``response_addr``
    (the driver computes it from the Via per §18.2.2 and RFC 3581)."""

    def __init__(
        self,
        request: Request,
        response_addr: Addr,
        transport: str,
        now: float,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        self.response_addr = response_addr
        self._key = server_key(request)
        self._response_bytes: bytes | None = None
        super().__init__(request, transport, now, timers)
        self._run_due(now)

    @property
    def key(self) -> TransactionKey:
        return self._key

    def receive_request(self, request: Request, now: float) -> None:
        """A retransmission of our request, or (INVITE) the ACK of our non-2xx final."""
        self._step(Input.RECV_ACK if request.method == "ACK" else Input.RECV_REQUEST, now)
        self._run_due(now)

    def send_response(self, response: Response, now: float) -> None:
        """The TU answers; raises TransactionStateError once the final has been sent
        (except further 2xx to an INVITE, RFC 6026 Accepted)."""
        self._step(_sent(response.status), now, response)
        self._run_due(now)

    # ---- actions ------------------------------------------------------------------------
    def _send_response(self, response: Response, _now: float) -> None:
        self.last_response = response
        self._response_bytes = response.to_bytes()
        self._deadlines.pop(Input.TIMER_TRYING, None)
        self._output(self._response_bytes, self.response_addr)

    def _resend_response(self, _message: object, _now: float) -> None:
        if self._response_bytes is not None:
            self._output(self._response_bytes, self.response_addr)


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 Figure 7 with RFC 6026 Figure 3 (Accepted, Timer L)."""

    INITIAL = PROCEEDING
    TABLE: ClassVar[Table] = {
        PROCEEDING: {
            Input.RECV_REQUEST: (PROCEEDING, "resend_provisional"),
            Input.TIMER_TRYING: (PROCEEDING, "send_trying"),
            Input.SEND_1XX: (PROCEEDING, "send_response"),
            Input.SEND_2XX: (ACCEPTED, "send_response"),
            Input.SEND_FAILURE: (COMPLETED, "send_response"),
        },
        COMPLETED: {
            Input.RECV_REQUEST: (COMPLETED, "resend_response"),
            Input.RECV_ACK: (CONFIRMED, None),
            Input.TIMER_G: (COMPLETED, "retransmit_response"),
            Input.TIMER_H: (TERMINATED, "timeout"),
        },
        CONFIRMED: {
            Input.TIMER_I: (TERMINATED, None),
        },
        ACCEPTED: {
            Input.SEND_2XX: (ACCEPTED, "send_response"),
            Input.TIMER_L: (TERMINATED, None),
        },
        TERMINATED: {},
    }
    TIMERS: ClassVar[dict[TxState, tuple[Input, ...]]] = {
        PROCEEDING: (Input.TIMER_TRYING,),
        COMPLETED: (Input.TIMER_G, Input.TIMER_H),
        CONFIRMED: (Input.TIMER_I,),
        ACCEPTED: (Input.TIMER_L,),
    }

    def _send_trying(self, _message: object, now: float) -> None:
        trying = make_response(self.request, 100)
        timestamp = self.request.headers.get("Timestamp")
        if timestamp is not None:
            trying.headers.add("Timestamp", timestamp)  # §8.2.6.1
        self._send_response(trying, now)

    def _resend_provisional(self, message: object, now: float) -> None:
        if self.last_response is None:
            self._send_trying(message, now)
        else:
            self._resend_response(message, now)

    def _retransmit_response(self, message: object, now: float) -> None:
        self._resend_response(message, now)
        interval = min(2 * self._intervals[Input.TIMER_G], self.timers.t2)
        self._arm(Input.TIMER_G, now, interval)


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 Figure 8."""

    INITIAL = TRYING
    TABLE: ClassVar[Table] = {
        TRYING: {
            Input.SEND_1XX: (PROCEEDING, "send_response"),
            Input.SEND_2XX: (COMPLETED, "send_response"),
            Input.SEND_FAILURE: (COMPLETED, "send_response"),
        },
        PROCEEDING: {
            Input.RECV_REQUEST: (PROCEEDING, "resend_response"),
            Input.SEND_1XX: (PROCEEDING, "send_response"),
            Input.SEND_2XX: (COMPLETED, "send_response"),
            Input.SEND_FAILURE: (COMPLETED, "send_response"),
        },
        COMPLETED: {
            Input.RECV_REQUEST: (COMPLETED, "resend_response"),
            Input.TIMER_J: (TERMINATED, None),
        },
        TERMINATED: {},
    }
    TIMERS: ClassVar[dict[TxState, tuple[Input, ...]]] = {
        COMPLETED: (Input.TIMER_J,),
    }


MACHINES: tuple[type[Transaction], ...] = (
    InviteClientTransaction,
    NonInviteClientTransaction,
    InviteServerTransaction,
    NonInviteServerTransaction,
)
