"""SIP dialogs (RFC 3261 §12) and the UAS's 2xx retransmission (§13.3.1.4). Sans-IO.

Owns :class:`Dialog`: the state two UAs share after an INVITE — Call-ID, tags, local and
remote URIs, CSeq counters, remote target and route set — how it is created on either
side, how it builds in-dialog requests (and the ACK of a 2xx) and how it checks and
absorbs in-dialog requests and responses. Requests leave here without Via and
Max-Forwards; :class:`~sipdialer.sip.endpoint.SipEndpoint` stamps those.

Routing: the route set is used with loose routing (§12.2.1.1) when its first entry has
``;lr``; otherwise the strict-routing (RFC 2543) form is produced: the first route becomes
the Request-URI and the remote target is appended as the last Route. Either way the
next hop to send to is :meth:`Dialog.next_hop`.

Theory of operation
-------------------
A dialog's life is one table, :attr:`Dialog.TABLE`, ``{state: {input: (next state,
action)}}``; :meth:`Dialog._fire` is the one place that changes ``state``, running the
row's action first. A response the dialog absorbs (``update_from_response``) is first
sorted into one input by its status and method (``_classify``); a response of another
fork (other To tag), a 100, or one that means nothing to the dialog is no input at all.

    state       input                                   → state       action
    early       confirm() (UAS: our 2xx sent)           → confirmed
    early       2xx to the INVITE                       → confirmed   route set from its
                                                                      Record-Route, remote
                                                                      target from its Contact
    early       101–199 to a target refresh, 2xx to     → early       remote target from its
                an UPDATE                                             Contact
    early       3xx–6xx to the INVITE                   → terminated
    confirmed   confirm() again                         → confirmed
    confirmed,  2xx to a target refresh (INVITE,        → same        remote target from its
      terminated  UPDATE)                                             Contact
    early,      BYE received, 408/481 to any request    → terminated
      confirmed   (§12.2.1.2), terminate()
    terminated  terminate() again                       → terminated

An input from the network that a state does not list is absorbed (a failed re-INVITE
leaves a confirmed dialog as it was); ``confirm()`` of a terminated dialog raises
:class:`DialogStateError`. What ``receive_request`` checks and takes from every
in-dialog request whatever the state — the dialog match (481), the CSeq order (500), the
remote target of a target refresh request — happens before the table; only BYE drives it.

Also owns :class:`Uas2xxRetransmitter`, the timer that re-sends a UAS's 2xx to an INVITE
until the ACK arrives (the transaction layer does not, RFC 6026).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from sipdialer.sip.address import Address, SipUri, parse_address, parse_uri
from sipdialer.sip.errors import SipError, SipParseError
from sipdialer.sip.events import Addr
from sipdialer.sip.message import Headers, Request, Response
from sipdialer.sip.timers import DEFAULT_TIMERS, TimerConfig

TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})
"""Requests whose Contact (and whose 2xx's Contact) replace the remote target."""


class DialogStateError(SipError):
    """The program asked a dialog for something its state does not allow."""


class DialogState(Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class DialogInput(Enum):
    # from the program (the transaction user)
    CONFIRM = "confirm() (UAS: our 2xx sent)"
    TERMINATE = "terminate()"
    # from the network
    RECV_BYE = "BYE received"
    RECV_2XX_INVITE = "2xx to the INVITE (or a re-INVITE)"
    RECV_2XX_UPDATE = "2xx to an UPDATE"
    RECV_1XX_REFRESH = "101-199 to an INVITE or UPDATE"
    RECV_FAILURE_INVITE = "3xx-6xx (but 408, 481) to the INVITE (or a re-INVITE)"
    RECV_GONE = "408 or 481 to any request"


PROGRAM_INPUTS = frozenset({DialogInput.CONFIRM, DialogInput.TERMINATE})

EARLY = DialogState.EARLY
CONFIRMED = DialogState.CONFIRMED
TERMINATED = DialogState.TERMINATED

DialogTable = dict[DialogState, dict[DialogInput, tuple[DialogState, str | None]]]


def _without_tag(address: Address) -> Address:
    return Address(
        address.uri, address.display, {k: v for k, v in address.params.items() if k != "tag"}
    )


def _first_contact_uri(message: Request | Response) -> str | None:
    try:
        contacts = message.contacts()
    except SipParseError:
        return None
    return contacts[0].uri if contacts else None


def _is_loose(route: str) -> bool:
    """A route entry with ``;lr`` (or one we cannot read: assume a modern proxy)."""
    try:
        return "lr" in parse_address(route).sip_uri.params
    except SipParseError:
        return True


@dataclass(eq=False)
class Dialog:
    """One dialog, seen from our side. Build it with :meth:`from_uac_response` or
    :meth:`from_uas_request`; ``local_seq`` of a UAS dialog starts empty and its first
    request uses CSeq 1."""

    call_id: str
    local_tag: str
    remote_tag: str | None
    """None only for an RFC 2543 peer that sent no To tag."""
    local_address: Address
    """Our From (UAC) / To (UAS) header value, without tag."""
    remote_address: Address
    """The peer's address (To for a UAC, From for a UAS), without tag."""
    local_seq: int | None
    remote_seq: int | None
    remote_target: str
    """The peer's Contact URI: the Request-URI of in-dialog requests."""
    route_set: list[str] = field(default_factory=list)
    """Route header values, in the order they are to be sent."""
    state: DialogState = EARLY
    """Changed only by :meth:`_fire`, following :attr:`TABLE`."""
    local_contact: str | None = None
    """Our Contact, sent in target refresh requests."""

    TABLE: ClassVar[DialogTable] = {
        EARLY: {
            DialogInput.CONFIRM: (CONFIRMED, None),
            DialogInput.TERMINATE: (TERMINATED, None),
            DialogInput.RECV_BYE: (TERMINATED, None),
            DialogInput.RECV_2XX_INVITE: (CONFIRMED, "take_route_set_and_target"),
            DialogInput.RECV_2XX_UPDATE: (EARLY, "take_target"),
            DialogInput.RECV_1XX_REFRESH: (EARLY, "take_target"),
            DialogInput.RECV_FAILURE_INVITE: (TERMINATED, None),
            DialogInput.RECV_GONE: (TERMINATED, None),
        },
        CONFIRMED: {
            DialogInput.CONFIRM: (CONFIRMED, None),
            DialogInput.TERMINATE: (TERMINATED, None),
            DialogInput.RECV_BYE: (TERMINATED, None),
            DialogInput.RECV_2XX_INVITE: (CONFIRMED, "take_target"),
            DialogInput.RECV_2XX_UPDATE: (CONFIRMED, "take_target"),
            DialogInput.RECV_GONE: (TERMINATED, None),
        },
        TERMINATED: {
            DialogInput.TERMINATE: (TERMINATED, None),
            DialogInput.RECV_2XX_INVITE: (TERMINATED, "take_target"),
            DialogInput.RECV_2XX_UPDATE: (TERMINATED, "take_target"),
        },
    }

    # ---- creation (§12.1) ---------------------------------------------------------------
    @classmethod
    def from_uac_response(cls, invite: Request, response: Response) -> Dialog:
        """The dialog a 1xx-with-To-tag (early) or a 2xx (confirmed) creates (§12.1.2)."""
        to = response.to_addr()
        local = invite.from_addr()
        if local.tag is None:
            raise SipParseError("our INVITE has no From tag")
        state = CONFIRMED if 200 <= response.status < 300 else EARLY
        contact = _first_contact_uri(invite)
        return cls(
            call_id=invite.call_id,
            local_tag=local.tag,
            remote_tag=to.tag,
            local_address=_without_tag(local),
            remote_address=_without_tag(invite.to_addr()),
            local_seq=invite.cseq()[0],
            remote_seq=None,
            remote_target=_first_contact_uri(response) or invite.uri,
            route_set=list(reversed(response.headers.values("Record-Route"))),
            state=state,
            local_contact=f"<{contact}>" if contact else None,
        )

    @classmethod
    def from_uas_request(cls, invite: Request, local_tag: str, local_contact: str) -> Dialog:
        """The dialog our 1xx/2xx to ``invite`` creates (§12.1.1); early until :meth:`confirm`."""
        remote = invite.from_addr()
        if "<" not in local_contact:
            local_contact = f"<{local_contact}>"
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=remote.tag,
            local_address=_without_tag(invite.to_addr()),
            remote_address=_without_tag(remote),
            local_seq=None,
            remote_seq=invite.cseq()[0],
            remote_target=_first_contact_uri(invite) or remote.uri,
            route_set=list(invite.headers.values("Record-Route")),
            local_contact=local_contact,
        )

    @property
    def id(self) -> tuple[str, str, str | None]:
        return (self.call_id, self.local_tag, self.remote_tag)

    @property
    def local_uri(self) -> str:
        return self.local_address.uri

    @property
    def remote_uri(self) -> str:
        return self.remote_address.uri

    def confirm(self) -> None:
        """UAS: our 2xx was sent. Raises DialogStateError once the dialog has ended."""
        self._fire(DialogInput.CONFIRM)

    def terminate(self) -> None:
        """We end the dialog (our BYE is on its way); again is harmless."""
        self._fire(DialogInput.TERMINATE)

    # ---- requests within the dialog (§12.2.1) ---------------------------------------------
    def create_request(
        self, method: str, *, body: bytes = b"", extra: Iterable[tuple[str, str]] = ()
    ) -> Request:
        """An in-dialog request. CSeq increments, except for ACK and CANCEL which reuse the
        current number. Target refresh requests carry our Contact."""
        method = method.upper()
        if method in ("ACK", "CANCEL"):
            seq = self.local_seq or 1
        else:
            seq = (self.local_seq or 0) + 1
            self.local_seq = seq
        return self._build(method, seq, body, extra)

    def create_ack(
        self, invite_cseq: int, body: bytes = b"", *, extra: Iterable[tuple[str, str]] = ()
    ) -> Request:
        """The ACK for a 2xx to our (re-)INVITE: its own transaction, same CSeq number
        (§13.2.2.4). Send it with ``SipEndpoint.send_stateless`` to :meth:`next_hop`."""
        return self._build("ACK", invite_cseq, body, extra)

    def next_hop(self) -> SipUri:
        """Where in-dialog requests go: the first route if any, else the remote target."""
        if self.route_set:
            return parse_address(self.route_set[0]).sip_uri
        return parse_uri(self.remote_target)

    def _request_target(self) -> tuple[str, list[str]]:
        """(Request-URI, Route values) per §12.2.1.1."""
        if not self.route_set or _is_loose(self.route_set[0]):
            return self.remote_target, list(self.route_set)
        strict = parse_address(self.route_set[0]).uri
        return strict, [*self.route_set[1:], f"<{self.remote_target}>"]

    def _build(
        self, method: str, seq: int, body: bytes, extra: Iterable[tuple[str, str]]
    ) -> Request:
        uri, routes = self._request_target()
        headers = Headers()
        for route in routes:
            headers.add("Route", route)
        headers.add("From", str(self.local_address.with_tag(self.local_tag)))
        remote = self.remote_address
        headers.add("To", str(remote.with_tag(self.remote_tag) if self.remote_tag else remote))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{seq} {method}")
        if method in TARGET_REFRESH_METHODS and self.local_contact:
            headers.add("Contact", self.local_contact)
        for name, value in extra:
            headers.add(name, value)
        return Request(method, uri, headers, body)

    # ---- what the peer sends (§12.2.2, §12.2.1.2) -----------------------------------------
    def matches(self, request: Request) -> bool:
        """Is ``request`` (received) in this dialog: Call-ID, our tag in To, theirs in From."""
        try:
            to_tag, from_tag = request.to_addr().tag, request.from_addr().tag
        except SipParseError:
            return False
        return (request.call_id, to_tag, from_tag) == (
            self.call_id,
            self.local_tag,
            self.remote_tag,
        )

    def receive_request(self, request: Request) -> int | None:
        """Check and absorb an in-dialog request: None if fine, else the status to answer
        (481 not this dialog, 500 CSeq lower than the last one, §12.2.2). A target refresh
        request's Contact becomes the remote target; BYE terminates the dialog."""
        if not self.matches(request):
            return 481
        try:
            number, _ = request.cseq()
        except SipParseError:
            return 400
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and number < self.remote_seq:
                return 500
            self.remote_seq = number
        if request.method in TARGET_REFRESH_METHODS:
            self.remote_target = _first_contact_uri(request) or self.remote_target
        if request.method == "BYE":
            self._fire(DialogInput.RECV_BYE)
        return None

    def update_from_response(self, response: Response) -> None:
        """Absorb a response to a request we sent in this dialog (or to the INVITE that
        created it). 2xx to INVITE confirms an early dialog, recomputing the route set
        (§13.2.2.4); a 2xx (or, early, a 1xx) to a target refresh replaces the remote
        target; 481/408 ends the dialog (§12.2.1.2); a 3xx–6xx to the INVITE ends an
        early one. Responses of another fork (other To tag) are ignored."""
        try:
            to_tag = response.to_addr().tag
            _, method = response.cseq()
        except SipParseError:
            return
        if self.remote_tag is not None and to_tag != self.remote_tag:
            return
        event = _classify(response.status, method)
        if event is not None:
            self._fire(event, response)

    # ---- the machine ------------------------------------------------------------------------
    def _fire(self, event: DialogInput, response: Response | None = None) -> None:
        """Run ``event``'s row for the current state: its action, then the state change."""
        row = self.TABLE[self.state]
        if event not in row:
            if event in PROGRAM_INPUTS:
                raise DialogStateError(
                    f"dialog: {event.value} is not allowed in {self.state.value}"
                )
            return  # absorbed
        new_state, action = row[event]
        if action is not None:
            assert response is not None  # only responses carry actions
            run: Callable[[Response], None] = getattr(self, f"_{action}")
            run(response)
        self.state = new_state

    def _take_target(self, response: Response) -> None:
        self.remote_target = _first_contact_uri(response) or self.remote_target

    def _take_route_set_and_target(self, response: Response) -> None:
        """§13.2.2.4: the 2xx that confirms the dialog fixes its route set for good."""
        self.route_set = list(reversed(response.headers.values("Record-Route")))
        self._take_target(response)


def _classify(status: int, method: str) -> DialogInput | None:
    """What a response of our dialog means to it (None: nothing)."""
    if status in (408, 481):
        return DialogInput.RECV_GONE
    if 200 <= status < 300:
        if method == "INVITE":
            return DialogInput.RECV_2XX_INVITE
        return DialogInput.RECV_2XX_UPDATE if method == "UPDATE" else None
    if 100 < status < 200:
        return DialogInput.RECV_1XX_REFRESH if method in TARGET_REFRESH_METHODS else None
    if status >= 300 and method == "INVITE":
        return DialogInput.RECV_FAILURE_INVITE
    return None


class Uas2xxRetransmitter:
    """Re-send a UAS's 2xx to an INVITE at T1, 2·T1, 4·T1… capped at T2 until the ACK
    arrives (:meth:`ack_received`) or 64·T1 has passed, which sets ``timed_out``: the TU
    should then send BYE (§13.3.1.4). Runs over reliable transports too, since hops
    further on may be UDP. The first transmission is not ours: it went through the
    server transaction at ``now``. ``addr``/``transport`` are kept for the driver."""

    def __init__(
        self,
        response: Response | bytes,
        now: float,
        timers: TimerConfig = DEFAULT_TIMERS,
        *,
        addr: Addr | None = None,
        transport: str = "UDP",
    ) -> None:
        self.response = response if isinstance(response, Response) else None
        self.data = response.to_bytes() if isinstance(response, Response) else response
        self.addr = addr
        self.transport = transport
        self.acked = False
        self.timed_out = False
        self._t2 = timers.t2
        self._interval = timers.t1
        self._next = now + timers.t1
        self._give_up = now + 64 * timers.t1

    @property
    def done(self) -> bool:
        return self.acked or self.timed_out

    def get_timer(self) -> float | None:
        return None if self.done else min(self._next, self._give_up)

    def handle_timer(self, now: float) -> list[bytes]:
        """The retransmissions due at ``now`` (zero or one); sets ``timed_out`` at 64·T1."""
        if self.done:
            return []
        if now >= self._give_up:
            self.timed_out = True
            return []
        if now < self._next:
            return []
        self._interval = min(2 * self._interval, self._t2)
        self._next = now + self._interval
        return [self.data]

    def ack_received(self) -> None:
        self.acked = True
