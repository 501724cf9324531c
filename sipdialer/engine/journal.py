"""The journal of live calls: what a restarted service needs to end the calls a crash left.

Owns the record types — :class:`JournaledCall` (the call record, its state, its legs, its
recording, its outcome once known), :class:`JournaledLeg`, :class:`JournaledDialog` (an
answered leg: enough to send an in-dialog BYE) and :class:`JournaledInvite` (a leg still
ringing: enough to CANCEL its INVITE, or to ACK and BYE a 2xx that answers it late) — how
they are taken from a running call's :class:`~sipdialer.engine.leg.Leg` objects, their
JSON form, and :class:`CallJournal`, the directory that holds one file per live call.
What is done with a journal after a crash is :mod:`sipdialer.engine.recovery`'s business.

The files
=========

``<call id>.call`` in the journal directory (next to the notifications outbox: see
:func:`journal_dir_for`), rewritten whole on each change of the call's state (and when a
leg's INVITE or dialog changes without one: a challenged INVITE sent again, a re-INVITE
moving the remote target), deleted once the call's CDR has been handed to the sink. A file
is::

    {"v":1,"bytes":N,"sha256":"…"}\\n
    <exactly N bytes of UTF-8 JSON: the call>

Writing (:func:`sipdialer.durable.durable_write`, as the outbox of
:mod:`sipdialer.notify.notifier`): ``.<name>.tmp`` is written and ``fsync``-ed, renamed over
the old file, and the directory ``fsync``-ed, so a reader sees the old version or the new
one, never a mix. A write that would not change the file
is skipped. In the service the writing is done by one writer thread
(``background=True``), never on the event loop: a file and a directory ``fsync`` per state
change blocked the loop for most of its time at 50 call set-ups per second (py-spy of
``bench/calls.py``: the journal's fsyncs were 55 % of the loop's samples and the API's p50
answer took seconds). :meth:`CallJournal.record` and :meth:`CallJournal.forget` only queue
the newest bytes of each call (a state the thread has not written yet is replaced by the
next one: only the newest matters) and return; the thread writes each queued call, deletes
each forgotten one, then ``fsync``-s the directory once for the batch. The price: a crash
may lose the state changes of the last few milliseconds (the batch being written), so a
leg INVITEd within them may not be BYEd by the recovery. :meth:`CallJournal.flush` waits
for the queue to be on disk; :meth:`CallJournal.close` flushes and stops the thread. A disk
error is logged (``event=journal_write_failed``) and counted, never raised into the call
engine: the call goes on, only its recovery after a crash is at risk.

Reading (:meth:`CallJournal.load`, once at start-up): a file that does not parse (bad
header, wrong length, checksum mismatch, a field missing) is moved to ``corrupt/`` and
logged (``event=journal_corrupt``), never fatal; leftover ``.tmp`` files (writes a crash
interrupted before their rename) are removed.

What a leg's record holds
=========================

Call-ID, From tag, the remote tag, the remote target (Contact), the route set
(Record-Route), the last CSeq, transport and destination, the *user name* whose password
(from the configuration, never journaled) answers a challenge to the BYE, the leg's state
and, while its INVITE awaits a final response, that INVITE's top Via (our branch),
Request-URI, From, To, CSeq, Route and Contact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sipdialer.durable import durable_write, fsync_dir
from sipdialer.engine.causes import Outcome
from sipdialer.engine.cdr import CallRecord
from sipdialer.engine.errors import EngineError
from sipdialer.engine.leg import Leg, LegState
from sipdialer.logs import quote_value
from sipdialer.sip.address import parse_address, split_commas
from sipdialer.sip.dialog import CONFIRMED, Dialog
from sipdialer.sip.message import Headers, Request

__all__ = [
    "CallJournal",
    "JournalError",
    "JournaledCall",
    "JournaledDialog",
    "JournaledInvite",
    "JournaledLeg",
    "decode_call",
    "encode_call",
    "journal_dir_for",
    "leg_entry",
]

log = logging.getLogger("sipdialer.journal")

_SUFFIX = ".call"
_FORMAT_VERSION = 1
_CALL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Leg states whose INVITE still awaits its final response (a CANCEL's business).
INVITE_PENDING_STATES = frozenset({LegState.CALLING, LegState.PROCEEDING, LegState.CANCELLING})
#: Leg states with an established dialog not yet closed (a BYE's business).
DIALOG_STATES = frozenset({LegState.CONFIRMED, LegState.TERMINATING})

Addr = tuple[str, int]


class JournalError(EngineError, ValueError):
    """A journal file that cannot be read back (it is moved to ``corrupt/``)."""


def journal_dir_for(outbox: Path | str) -> Path:
    """The call journal of the service whose notifications outbox is ``outbox``: its
    sibling ``<outbox>.journal`` (same file system, same owner, one per outbox)."""
    path = Path(os.path.abspath(outbox))
    return path.with_name(f"{path.name}.journal")


# ---- the records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JournaledInvite:
    """A sent INVITE still awaiting its final response, as sent (with our Via)."""

    uri: str
    """Its Request-URI (also the CANCEL's)."""
    via: str
    """Its top Via, with the branch a CANCEL must repeat."""
    from_: str
    """Its From header (with our tag)."""
    to: str
    """Its To header (no tag)."""
    call_id: str
    cseq: int
    routes: tuple[str, ...] = ()
    """Its Route headers, in order."""
    contact: str | None = None
    """Our Contact in it (the local target of a dialog a late 2xx makes)."""

    @classmethod
    def from_request(cls, invite: Request) -> JournaledInvite:
        return cls(
            uri=invite.uri,
            via=split_commas(invite.headers.get("Via") or "")[0],
            from_=invite.headers.get("From") or "",
            to=invite.headers.get("To") or "",
            call_id=invite.call_id,
            cseq=invite.cseq()[0],
            routes=tuple(invite.headers.get_all("Route")),
            contact=invite.headers.get("Contact"),
        )

    def request(self) -> Request:
        """The INVITE rebuilt without its body: what ``build_cancel`` and
        ``Dialog.from_uac_response`` read."""
        headers = Headers()
        headers.add("Via", self.via)
        for route in self.routes:
            headers.add("Route", route)
        headers.add("From", self.from_)
        headers.add("To", self.to)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{self.cseq} INVITE")
        if self.contact:
            headers.add("Contact", self.contact)
        return Request("INVITE", self.uri, headers)


@dataclass(frozen=True)
class JournaledDialog:
    """An established dialog, seen from our side (the fields of :class:`Dialog`)."""

    call_id: str
    local_tag: str
    remote_tag: str | None
    local_address: str
    """Our From header value, without tag."""
    remote_address: str
    """The peer's To header value, without tag."""
    local_seq: int | None
    """The CSeq of our last request in the dialog (a BYE takes the next one)."""
    remote_seq: int | None
    remote_target: str
    """The peer's Contact URI: the Request-URI of in-dialog requests."""
    route_set: tuple[str, ...] = ()
    """Route header values in sending order (the 2xx's Record-Route, reversed)."""
    local_contact: str | None = None

    @classmethod
    def from_dialog(cls, dialog: Dialog) -> JournaledDialog:
        return cls(
            call_id=dialog.call_id,
            local_tag=dialog.local_tag,
            remote_tag=dialog.remote_tag,
            local_address=str(dialog.local_address),
            remote_address=str(dialog.remote_address),
            local_seq=dialog.local_seq,
            remote_seq=dialog.remote_seq,
            remote_target=dialog.remote_target,
            route_set=tuple(dialog.route_set),
            local_contact=dialog.local_contact,
        )

    def dialog(self) -> Dialog:
        """A confirmed :class:`Dialog` in this state (raises SipParseError on an address
        that does not parse)."""
        return Dialog(
            call_id=self.call_id,
            local_tag=self.local_tag,
            remote_tag=self.remote_tag,
            local_address=parse_address(self.local_address),
            remote_address=parse_address(self.remote_address),
            local_seq=self.local_seq,
            remote_seq=self.remote_seq,
            remote_target=self.remote_target,
            route_set=list(self.route_set),
            state=CONFIRMED,
            local_contact=self.local_contact,
        )


@dataclass(frozen=True)
class JournaledLeg:
    """One leg of a journaled call."""

    name: str
    """``agent`` or ``callee``."""
    state: str
    """The :class:`~sipdialer.engine.leg.LegState` value when written."""
    dest: Addr
    """Where its INVITE went (the trunk, or the phone's registered address)."""
    transport: str
    """UDP, TCP or TLS."""
    auth_user: str | None = None
    """The user name its INVITE authenticated as (the password is the configuration's)."""
    invite: JournaledInvite | None = None
    """Its INVITE, while that awaits a final response."""
    dialog: JournaledDialog | None = None
    """Its dialog, while answered and not yet closed."""

    @property
    def needs_bye(self) -> bool:
        return self.dialog is not None and LegState(self.state) in DIALOG_STATES

    @property
    def needs_cancel(self) -> bool:
        return self.invite is not None and LegState(self.state) in INVITE_PENDING_STATES


@dataclass(frozen=True)
class JournaledCall:
    """A live call as last written."""

    record: CallRecord
    """The call record as it stood (its id is the call's id)."""
    state: str
    """The :class:`~sipdialer.engine.call.CallState` value."""
    legs: tuple[JournaledLeg, ...] = ()
    recording_path: str | None = None
    """The recording being written (absolute), if any."""
    public_url: str = ""
    """The base of recording URLs the service used for the call."""
    outcome: Outcome | None = None
    """How it ended, once it has (the CDR was on its way when the service died)."""
    written_at: float | None = None
    """When the file was last written (its mtime; set by :meth:`CallJournal.load`)."""

    @property
    def id(self) -> str:
        return self.record.id


def leg_entry(leg: Leg) -> JournaledLeg:
    """What the journal keeps of ``leg`` now."""
    state = leg.state
    invite = None
    if state in INVITE_PENDING_STATES and leg.invite_tx is not None:
        invite = JournaledInvite.from_request(leg.invite_tx.request)
    dialog = None
    if state in DIALOG_STATES and leg.dialog is not None:
        dialog = JournaledDialog.from_dialog(leg.dialog)
    target = leg.target
    return JournaledLeg(
        name=leg.name,
        state=state.value,
        dest=(target.dest[0], target.dest[1]),
        transport=target.transport.upper(),
        auth_user=target.credentials[0] if target.credentials else None,
        invite=invite,
        dialog=dialog,
    )


# ---- the JSON form --------------------------------------------------------------------------


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _shallow(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields as a dict, values as they are (no deep copy: the dict
    is serialized at once). ``dataclasses.asdict`` copies every value recursively and was
    half of the journal's cost on the event loop, 5 % of the loop at 100 set-ups/s."""
    names = _FIELD_NAMES.get(type(obj))
    if names is None:
        names = _FIELD_NAMES[type(obj)] = tuple(f.name for f in fields(obj))
    return {name: getattr(obj, name) for name in names}


def _call_document(call: JournaledCall) -> dict[str, Any]:
    """The JSON document of ``call``: what ``dataclasses.asdict`` would give (tuples are
    written as lists by ``json``), without its copies."""
    legs = []
    for leg in call.legs:
        doc = _shallow(leg)
        doc["dest"] = list(leg.dest)
        if leg.invite is not None:
            doc["invite"] = _shallow(leg.invite)
        if leg.dialog is not None:
            doc["dialog"] = _shallow(leg.dialog)
        legs.append(doc)
    return {
        "record": _shallow(call.record),
        "state": call.state,
        "legs": legs,
        "recording_path": call.recording_path,
        "public_url": call.public_url,
        "outcome": _shallow(call.outcome) if call.outcome is not None else None,
    }


def encode_call(call: JournaledCall) -> bytes:
    """The file's bytes for ``call`` (header line + JSON body)."""
    body = json.dumps(
        _call_document(call), ensure_ascii=False, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")
    header = {
        "v": _FORMAT_VERSION,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return json.dumps(header, separators=(",", ":")).encode("ascii") + b"\n" + body


def _only(cls: type[Any], doc: Any) -> dict[str, Any]:
    """``doc``'s keys that are fields of dataclass ``cls`` (newer writers may add keys)."""
    if not isinstance(doc, dict):
        raise JournalError(f"{cls.__name__}: not an object")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in doc.items() if k in names}


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise JournalError(f"{what} is not a string")
    return value


def _leg(doc: Any) -> JournaledLeg:
    d = _only(JournaledLeg, doc)
    dest = d.get("dest")
    if not (
        isinstance(dest, list)
        and len(dest) == 2
        and isinstance(dest[0], str)
        and isinstance(dest[1], int)
    ):
        raise JournalError("leg dest is not [host, port]")
    LegState(_str(d.get("state"), "leg state"))  # a known state, or ValueError
    invite = d.get("invite")
    dialog = d.get("dialog")
    return JournaledLeg(
        name=_str(d.get("name"), "leg name"),
        state=d["state"],
        dest=(dest[0], dest[1]),
        transport=_str(d.get("transport"), "leg transport"),
        auth_user=d.get("auth_user"),
        invite=None
        if invite is None
        else JournaledInvite(
            **{**_only(JournaledInvite, invite), "routes": tuple(invite.get("routes", ()))}
        ),
        dialog=None
        if dialog is None
        else JournaledDialog(
            **{**_only(JournaledDialog, dialog), "route_set": tuple(dialog.get("route_set", ()))}
        ),
    )


def decode_call(data: bytes) -> JournaledCall:
    """The call in a file's bytes; raises :class:`JournalError` when they are not one."""
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise JournalError("no header line (torn write?)")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise JournalError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("v") != _FORMAT_VERSION:
        raise JournalError("unknown header version")
    if header.get("bytes") != len(body):
        raise JournalError(f"body is {len(body)} bytes, header says {header.get('bytes')}")
    if header.get("sha256") != hashlib.sha256(body).hexdigest():
        raise JournalError("body checksum mismatch")
    try:
        doc = json.loads(body.decode("utf-8"))
        if not isinstance(doc, dict):
            raise JournalError("body is not an object")
        record = CallRecord(**_only(CallRecord, doc.get("record")))
        if not isinstance(record.id, str) or not _CALL_ID.fullmatch(record.id):
            raise JournalError("record has no usable call id")
        outcome_doc = doc.get("outcome")
        outcome = Outcome(**_only(Outcome, outcome_doc)) if outcome_doc is not None else None
        return JournaledCall(
            record=record,
            state=_str(doc.get("state"), "call state"),
            legs=tuple(_leg(leg) for leg in doc.get("legs") or ()),
            recording_path=doc.get("recording_path"),
            public_url=_str(doc.get("public_url", ""), "public_url"),
            outcome=outcome,
        )
    except JournalError:
        raise
    except (ValueError, TypeError, KeyError) as exc:  # a field missing or of the wrong type
        raise JournalError(f"body does not describe a call: {exc}") from None


# ---- the directory --------------------------------------------------------------------------


class CallJournal:
    """One file per live call in ``directory`` (see the module docstring).

    The call engine's event loop is its one caller; with ``background`` the files are
    written by the journal's own thread (started at the first write), else at once by the
    caller.
    """

    def __init__(self, directory: Path | str, *, background: bool = False) -> None:
        self.directory = Path(directory)
        self.corrupt_dir = self.directory / "corrupt"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_errors_total = 0
        self.corrupt_total = 0
        self.background = background
        self._written: dict[str, bytes] = {}  # call id → the newest bytes given for it
        self._cond = threading.Condition()
        self._queue: dict[str, bytes | None] = {}  # call id → bytes to write, None: delete
        self._busy = False  # the thread is writing a batch
        self._closed = False
        self._thread: threading.Thread | None = None
        self._remove_stale_temp_files()

    # ---- writing ----------------------------------------------------------------------------
    def record(self, call: JournaledCall) -> bool:
        """Write ``call`` (atomically, durably; queued for the writer thread in the
        background mode) unless the file already says the same. Returns True if a write
        was made or queued; never raises."""
        try:
            data = encode_call(call)
            self._path(call.id)
        except Exception as exc:  # a bug must not take the call engine down
            self._failed("write", call.id, exc)
            return False
        if self._written.get(call.id) == data:
            return False
        self._written[call.id] = data
        return self._submit(call.id, data)

    def forget(self, call_id: str) -> None:
        """Delete the call's file (its CDR is in the sink). Never raises."""
        self._written.pop(call_id, None)
        try:
            self._path(call_id)
        except ValueError as exc:
            self._failed("forget", call_id, exc)
            return
        self._submit(call_id, None)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is on disk (True) or ``timeout`` passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer thread (later writes are made at
        once, by the caller)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _submit(self, call_id: str, data: bytes | None) -> bool:
        """Write (or delete) now, True unless it failed; or queue it for the thread."""
        if not self.background or self._closed:
            return self._apply({call_id: data})
        with self._cond:
            self._queue[call_id] = data
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="call-journal", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closed)
                if not self._queue:
                    return
                batch, self._queue = self._queue, {}
                self._busy = True
            try:
                self._apply(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _apply(self, batch: dict[str, bytes | None]) -> bool:
        """Write the batch's calls (:func:`~sipdialer.durable.durable_write`: one directory
        fsync), then delete its forgotten ones (one more). False if anything failed
        (logged and counted; a call not written is written whole at its next record)."""
        errors = self.write_errors_total
        writes = [(self._path(i), data) for i, data in batch.items() if data is not None]
        if writes:
            try:
                durable_write(writes, mode=0o600)
            except OSError as exc:
                for call_id, data in batch.items():
                    if data is not None and self._written.get(call_id) == data:
                        del self._written[call_id]
                self._failed("write", ",".join(i for i, d in batch.items() if d), exc)
        deleted = False
        for call_id, data in batch.items():
            if data is None:
                try:
                    self._path(call_id).unlink()
                    deleted = True
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    self._failed("forget", call_id, exc)
        if deleted:
            try:
                fsync_dir(self.directory)
            except OSError as exc:
                self._failed("forget", "-", exc)
        return self.write_errors_total == errors

    def _failed(self, what: str, call_id: str, exc: BaseException) -> None:
        self.write_errors_total += 1
        log.error(
            "event=journal_%s_failed call=%s error=%s",
            what,
            call_id[:12],
            quote_value(f"{type(exc).__name__}: {exc}"),
        )

    # ---- reading ----------------------------------------------------------------------------
    def load(self) -> list[JournaledCall]:
        """Every readable call, oldest first; unreadable files go to ``corrupt/``."""
        calls: list[JournaledCall] = []
        for name in sorted(self._names()):
            path = self.directory / name
            try:
                data = path.read_bytes()
                written_at = path.stat().st_mtime
            except FileNotFoundError:
                continue
            except OSError as exc:
                self._move_aside(path, f"unreadable: {exc}")
                continue
            try:
                call = decode_call(data)
            except JournalError as exc:
                self._move_aside(path, str(exc))
                continue
            if f"{call.id}{_SUFFIX}" != name:
                self._move_aside(path, f"holds call {call.id}, not {name}")
                continue
            calls.append(
                JournaledCall(
                    record=call.record,
                    state=call.state,
                    legs=call.legs,
                    recording_path=call.recording_path,
                    public_url=call.public_url,
                    outcome=call.outcome,
                    written_at=written_at,
                )
            )
            self._written[call.id] = data
        calls.sort(key=lambda c: (c.record.created_at, c.id))
        return calls

    def set_aside(self, call_id: str, reason: str) -> None:
        """Move the call's file to ``corrupt/`` (with a log line): a file recovery could
        not deal with must not stop every later start."""
        try:
            path = self._path(call_id)
        except ValueError:
            return
        self._written.pop(call_id, None)
        if path.exists():
            self._move_aside(path, reason)

    def ids(self) -> list[str]:
        """The calls with a file (cheap: no reading)."""
        return sorted(n[: -len(_SUFFIX)] for n in self._names())

    # ---- internals --------------------------------------------------------------------------
    def _path(self, call_id: str) -> Path:
        if not _CALL_ID.fullmatch(call_id):
            raise ValueError(f"not a call id: {call_id!r}")
        return self.directory / f"{call_id}{_SUFFIX}"

    def _names(self) -> list[str]:
        return [
            n
            for n in os.listdir(self.directory)
            if n.endswith(_SUFFIX) and _CALL_ID.fullmatch(n[: -len(_SUFFIX)])
        ]

    def _move_aside(self, path: Path, reason: str) -> None:
        self.corrupt_total += 1
        try:
            self.corrupt_dir.mkdir(exist_ok=True)
            target = self.corrupt_dir / path.name
            if target.exists():
                target = self.corrupt_dir / f"{path.name}.{time.time_ns()}"
            os.rename(path, target)
            fsync_dir(self.directory)
        except OSError as exc:
            log.error(
                "event=journal_corrupt file=%s reason=%s moved_to=- error=%s",
                quote_value(path),
                quote_value(reason),
                quote_value(exc),
            )
            return
        log.error(
            "event=journal_corrupt file=%s reason=%s moved_to=%s",
            quote_value(path),
            quote_value(reason),
            quote_value(target),
        )

    def _remove_stale_temp_files(self) -> None:
        for name in os.listdir(self.directory):
            if name.startswith(".") and name.endswith(f"{_SUFFIX}.tmp"):
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()
                    log.warning(
                        "event=journal_uncommitted_removed file=%s",
                        quote_value(self.directory / name),
                    )
