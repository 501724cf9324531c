"""Ending the calls a crash left behind: run once at start-up, before the service takes
new work (the HTTP API is not listening yet), from the journal of live calls
(:mod:`sipdialer.engine.journal`).

Owns :class:`CallRecovery` and the pure pieces it is made of: the BYE of a journaled
dialog (:func:`bye_request`), the CANCEL of a journaled INVITE (:func:`cancel_request`),
where in-dialog requests go (:func:`next_hop`), the repair of a partial WAV
(:func:`repair_wav_sizes`) and the CDR of a recovered call (:func:`recovered_cdr`).

What happens to each journaled call
===================================

1. **Legs answered and not yet closed** get a BYE in their dialog — Request-URI the remote
   target, Route the route set, CSeq the last one + 1, our From tag and their To tag,
   ``Reason: Q.850;cause=41`` — sent as a client transaction (retransmitted over UDP until
   answered or 64·T1). A 401/407 is answered once, with the password the configuration
   has for the journaled user name (passwords never reach the journal).
2. **Legs still ringing** get a CANCEL for their INVITE (its Via branch, Request-URI,
   From, To, Call-ID, CSeq number and Route). The INVITE's transaction died with the old
   process, so the endpoint matches no answer to the CANCEL (a 200, or the 481 of a peer
   that lost the transaction too): it is sent statelessly and, over UDP, repeated on Timer
   E's schedule (T1 doubling to T2) for 64·T1. Nothing else is sent for that leg unless
   its INVITE is answered 2xx after all (within :attr:`CallRecovery.LATE_ANSWER_WINDOW`):
   that 2xx gets an ACK and a BYE. A 487 to such an INVITE matches no transaction either
   and is not ACKed by us; the next hop stops repeating it after 64·T1.
3. **The recording**, if the call had one, gets header sizes that match the data present
   (a trailing partial frame is cut): :func:`repair_wav_sizes`. A recording that is gone
   leaves the CDR without one.
4. **The CDR** goes to the sink like any other (the notifier: both Redis documents): with
   the journaled outcome if the call had already ended (its CDR was on its way), else
   cause 41, ``end_reason`` ``crashed``, ``ended_by`` ``system``, ANSWERED if the parties
   had been bridged, else FAILED. Every timestamp the old process journaled is kept;
   ``ended_at`` of a crashed call is the last sign of life on disk: the later of the
   journal file's and the recording's modification times (the recorder writes about
   every second, so ``call_time`` is short by at most about a second; without a
   recording it counts to the last state change). Then the journal file is deleted.

Then :meth:`CallRecovery.run` waits up to ``wait`` seconds for the BYEs' answers (logged),
and returns; transactions still open go on in the background. A crash during recovery
repeats it at the next start: the peers answer 481 to the second BYE, and the CDR may be
pushed twice (as the outbox may, at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

from sipdialer.aio.useragent import UserAgent
from sipdialer.engine.causes import Ending, Outcome, classify
from sipdialer.engine.cdr import CallRecord, Cdr, CdrSink, build_cdr
from sipdialer.engine.journal import (
    CallJournal,
    JournaledCall,
    JournaledDialog,
    JournaledInvite,
    JournaledLeg,
)
from sipdialer.logs import quote_value
from sipdialer.sip.dialog import Dialog
from sipdialer.sip.digest import ClientAuthenticator, DigestError
from sipdialer.sip.endpoint import build_cancel
from sipdialer.sip.errors import SipParseError
from sipdialer.sip.events import Event, ResponseReceived, TransactionTimeout, TransportError
from sipdialer.sip.message import Request
from sipdialer.sip.timers import DEFAULT_TIMERS, TimerConfig

__all__ = [
    "REASON",
    "CallRecovery",
    "bye_request",
    "cancel_request",
    "crashed_outcome",
    "next_hop",
    "recovered_cdr",
    "repair_wav_sizes",
]

log = logging.getLogger("sipdialer.recovery")

Addr = tuple[str, int]

#: The Reason header of every request recovery sends.
REASON = 'Q.850;cause=41;text="NORMAL_TEMPORARY_FAILURE"'


# ---- the pure pieces ------------------------------------------------------------------------


def bye_request(dialog: Dialog, *, extra: list[tuple[str, str]] | None = None) -> Request:
    """The BYE of ``dialog`` (its CSeq goes up by one), with our Reason header."""
    return dialog.create_request("BYE", extra=[("Reason", REASON), *(extra or [])])


def cancel_request(invite: JournaledInvite) -> Request:
    """The CANCEL of a journaled INVITE (RFC 3261 §9.1: same branch, Request-URI, Call-ID,
    From, To, CSeq number and Route), with our Reason header."""
    return build_cancel(invite.request(), REASON)


def next_hop(dialog: Dialog, fallback: Addr) -> Addr:
    """Where the dialog's requests go: its first route (or remote target) when that is an
    IP address, else ``fallback`` (the leg's original destination: names are not resolved
    here, as :class:`~sipdialer.engine.leg.Leg` does not)."""
    try:
        uri = dialog.next_hop()
    except SipParseError:
        return fallback
    host = (uri.params.get("maddr") or uri.host).strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return fallback
    return host, uri.port or 5060


def repair_wav_sizes(path: Path | str) -> int:
    """Set the RIFF and ``data`` chunk sizes of the WAV at ``path`` to what the file holds
    (a trailing partial frame is cut off first); return the data bytes. Only those two
    fields (and the length) change. Raises OSError, or ValueError for a file that is not
    a regular RIFF/WAVE file with a ``data`` chunk. Never blocks on a FIFO or device."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
        size = st.st_size
        head = os.pread(fd, 12, 0)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise ValueError(f"{path}: not a RIFF/WAVE file")
        offset, block_align = 12, 1
        while True:
            chunk = os.pread(fd, 8, offset)
            if len(chunk) < 8:
                raise ValueError(f"{path}: no data chunk")
            chunk_id, chunk_size = struct.unpack("<4sI", chunk)
            if chunk_id == b"data":
                break
            if chunk_id == b"fmt ":
                fmt = os.pread(fd, 16, offset + 8)
                if len(fmt) >= 14:
                    block_align = struct.unpack_from("<H", fmt, 12)[0] or 1
            offset += 8 + chunk_size + (chunk_size & 1)
        data_start = offset + 8
        present = max(0, size - data_start)
        present -= present % block_align
        present = min(present, 0xFFFFFFFF - (data_start - 8))
        if data_start + present != size:
            os.ftruncate(fd, data_start + present)
        os.pwrite(fd, struct.pack("<I", present), offset + 4)
        os.pwrite(fd, struct.pack("<I", data_start - 8 + present), 4)
        os.fsync(fd)
        return present
    finally:
        os.close(fd)


def crashed_outcome(record: CallRecord) -> Outcome:
    """How a call the service died in is reported: 41 ``crashed``, by the system."""
    ending = Ending(
        kind="crashed",
        leg=None,
        bridged=record.bridged_at is not None,
        detail="the service stopped without ending the call; ended at the next start",
    )
    return classify(ending)


def recovered_cdr(call: JournaledCall, *, last_alive: float, has_recording: bool) -> Cdr:
    """The CDR of a journaled call: its journaled outcome if it had ended, else
    :func:`crashed_outcome` ending at ``last_alive`` (never before a journaled time)."""
    record = dataclasses.replace(call.record, sip_call_ids=dict(call.record.sip_call_ids))
    if not has_recording:
        record.recording_ref = None
    outcome = call.outcome
    if outcome is None or record.ended_at is None:
        known = [
            t
            for t in (
                record.created_at,
                record.agent_dialed_at,
                record.agent_answered_at,
                record.callee_dialed_at,
                record.callee_ringing_at,
                record.callee_answered_at,
                record.bridged_at,
            )
            if t is not None
        ]
        record.ended_at = max([last_alive, *known])
        outcome = crashed_outcome(record) if outcome is None else outcome
    return build_cdr(record, outcome, public_url=call.public_url)


# ---- the recovery ---------------------------------------------------------------------------


class _Bye:
    """One BYE of one leg, until its final answer (one digest retry)."""

    def __init__(
        self,
        recovery: CallRecovery,
        tag: str,
        leg: str,
        dialog: Dialog,
        dest: Addr,
        transport: str,
        auth_user: str | None,
    ) -> None:
        self.recovery = recovery
        self.tag = tag
        self.leg = leg
        self.dialog = dialog
        self.dest = dest
        self.transport = transport
        self.auth_user = auth_user
        self.challenged = False
        self.uri = dialog.remote_target  # the Request-URI of the BYE last sent
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def send(self, extra: list[tuple[str, str]] | None = None) -> None:
        bye = bye_request(self.dialog, extra=extra)
        self.uri = bye.uri
        self.recovery.ua.send_request(bye, self.dest, self.transport, self.on_event)
        log.info(
            "event=recovery_bye_sent call=%s leg=%s dest=%s:%d transport=%s cseq=%d",
            self.tag,
            self.leg,
            *self.dest,
            self.transport.lower(),
            self.dialog.local_seq or 0,
        )

    def on_event(self, event: Event) -> None:
        if self.done.done():
            return
        if isinstance(event, ResponseReceived):
            status = event.response.status
            if status < 200:
                return
            if status in (401, 407) and self._answer_challenge(event):
                return
            self._finish(status, "answered")
        elif isinstance(event, TransactionTimeout):
            self._finish(408, "timeout")
        elif isinstance(event, TransportError):
            self._finish(503, "transport_error")

    def _answer_challenge(self, event: ResponseReceived) -> bool:
        password = self.recovery.passwords.get(self.auth_user or "")
        if self.challenged or self.auth_user is None or password is None:
            return False
        resp = event.response
        header = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
        auth = ClientAuthenticator(self.auth_user, password)
        try:
            auth.on_challenge(resp.headers.get_all(header), proxy=resp.status == 407)
        except DigestError:
            return False
        self.challenged = True
        # the Request-URI does not change with the CSeq: authorize for this dialog's BYE
        self.send(extra=auth.authorize(method="BYE", uri=self.uri))
        return True

    def _finish(self, status: int, how: str) -> None:
        log.info("event=recovery_bye_%s call=%s leg=%s status=%d", how, self.tag, self.leg, status)
        self.done.set_result(status)


class CallRecovery:
    """Ends every call of ``journal`` (see the module docstring); run once, at start-up.

    ``sink`` takes the CDRs; ``passwords`` maps a user name to the password that answers
    a challenge to a BYE (the trunk account); ``timers`` are the SIP timers.
    """

    LATE_ANSWER_WINDOW = 180.0
    """How long a 2xx to a cancelled INVITE is still ACKed and BYEd (seconds)."""

    def __init__(
        self,
        journal: CallJournal,
        ua: UserAgent,
        sink: CdrSink,
        *,
        passwords: Mapping[str, str] | None = None,
        timers: TimerConfig = DEFAULT_TIMERS,
    ) -> None:
        self.journal = journal
        self.ua = ua
        self.sink = sink
        self.passwords = dict(passwords or {})
        self.timers = timers
        self.byes: list[_Bye] = []
        self.cancels = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._late: dict[str, asyncio.TimerHandle] = {}  # Call-ID → end of its window
        self._answered: dict[str, asyncio.Event] = {}  # Call-ID → a late 2xx came

    async def run(self, wait: float = 2.0) -> list[Cdr]:
        """End every journaled call; return their CDRs (already handed to the sink)."""
        calls = self.journal.load()
        if not calls:
            return []
        log.warning(
            "event=recovery_started calls=%d journal=%s",
            len(calls),
            quote_value(self.journal.directory),
        )
        cdrs: list[Cdr] = []
        for call in calls:
            try:
                self._end_legs(call)
                cdrs.append(self._report(call))
            except Exception as exc:  # a bug must not stop every later start
                log.exception("event=recovery_failed call=%s", call.id[:12])
                self.journal.set_aside(call.id, f"recovery failed: {type(exc).__name__}: {exc}")
        pending = [bye.done for bye in self.byes if not bye.done.done()]
        if pending and wait > 0:
            await asyncio.wait(pending, timeout=wait)
        answered = sum(1 for bye in self.byes if bye.done.done())
        log.warning(
            "event=recovery_done calls=%d byes=%d byes_answered=%d cancels=%d",
            len(calls),
            len(self.byes),
            answered,
            self.cancels,
        )
        return cdrs

    async def close(self) -> None:
        """Stop repeating CANCELs and watching for late answers (the service stops)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for call_id, handle in list(self._late.items()):
            handle.cancel()
            self.ua.forget_stray_2xx(call_id)
        self._late.clear()

    # ---- the legs ---------------------------------------------------------------------------
    def _end_legs(self, call: JournaledCall) -> None:
        tag = call.id[:12]
        for leg in call.legs:
            try:
                if leg.needs_bye and leg.dialog is not None:
                    self._bye(tag, leg, leg.dialog)
                elif leg.needs_cancel and leg.invite is not None:
                    self._cancel(tag, leg, leg.invite)
            except (SipParseError, ValueError, OSError) as exc:  # one bad leg spoils nothing else
                log.error(
                    "event=recovery_leg_failed call=%s leg=%s error=%s",
                    tag,
                    leg.name,
                    quote_value(f"{type(exc).__name__}: {exc}"),
                )

    def _bye(self, tag: str, leg: JournaledLeg, journaled: JournaledDialog) -> None:
        dialog = journaled.dialog()
        bye = _Bye(
            self,
            tag,
            leg.name,
            dialog,
            next_hop(dialog, leg.dest),
            leg.transport,
            leg.auth_user,
        )
        self.byes.append(bye)
        bye.send()

    def _cancel(self, tag: str, leg: JournaledLeg, invite: JournaledInvite) -> None:
        cancel = cancel_request(invite)
        assert self.ua.transport is not None
        self.ua.transport.send_stateless(cancel, leg.dest, leg.transport)
        self.cancels += 1
        log.info(
            "event=recovery_cancel_sent call=%s leg=%s dest=%s:%d transport=%s",
            tag,
            leg.name,
            *leg.dest,
            leg.transport.lower(),
        )
        answered = asyncio.Event()
        self._answered[invite.call_id] = answered
        self._watch_late_answer(tag, leg, invite)
        if leg.transport.upper() == "UDP":
            task = asyncio.ensure_future(self._repeat(cancel, leg, answered))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _repeat(self, cancel: Request, leg: JournaledLeg, answered: asyncio.Event) -> None:
        """Timer E's schedule for a request nobody will answer us about: T1, 2·T1, … at
        most T2 apart, for 64·T1, or until its INVITE is answered after all."""
        loop = asyncio.get_running_loop()
        t = self.timers
        give_up = loop.time() + t.timer_f
        interval = t.t1
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), interval)
            if answered.is_set() or loop.time() + 1e-3 >= give_up:
                return
            assert self.ua.transport is not None
            self.ua.transport.send_stateless(cancel, leg.dest, leg.transport)
            interval = min(2 * interval, t.t2)

    def _watch_late_answer(self, tag: str, leg: JournaledLeg, invite: JournaledInvite) -> None:
        """ACK and BYE a 2xx to the cancelled INVITE, should one still come."""
        acks: dict[str, tuple[Request, Addr]] = {}
        request = invite.request()

        def on_2xx(event: ResponseReceived) -> None:
            resp = event.response
            try:
                to_tag = resp.to_addr().tag or ""
                if resp.cseq() != (invite.cseq, "INVITE"):
                    return
            except SipParseError:
                return
            if to_tag in acks:  # a retransmission: our ACK was lost
                ack, dest = acks[to_tag]
                assert self.ua.transport is not None
                self.ua.transport.send_stateless(ack, dest, leg.transport)
                return
            try:
                dialog = Dialog.from_uac_response(request, resp)
            except SipParseError:
                return
            self._answered[invite.call_id].set()
            dest = next_hop(dialog, leg.dest)
            ack = dialog.create_ack(invite.cseq)
            acks[to_tag] = (ack, dest)
            assert self.ua.transport is not None
            self.ua.transport.send_stateless(ack, dest, leg.transport)
            log.warning("event=recovery_late_answer call=%s leg=%s", tag, leg.name)
            bye = _Bye(self, tag, leg.name, dialog, dest, leg.transport, leg.auth_user)
            self.byes.append(bye)
            bye.send()

        self.ua.on_stray_2xx(invite.call_id, on_2xx)
        loop = asyncio.get_running_loop()
        self._late[invite.call_id] = loop.call_later(
            self.LATE_ANSWER_WINDOW, self._stop_watching, invite.call_id
        )

    def _stop_watching(self, call_id: str) -> None:
        self._late.pop(call_id, None)
        self.ua.forget_stray_2xx(call_id)

    # ---- the record -------------------------------------------------------------------------
    def _report(self, call: JournaledCall) -> Cdr:
        tag = call.id[:12]
        last_alive = call.written_at or call.record.created_at
        has_recording = False
        path = call.recording_path
        ref = call.record.recording_ref
        if path is not None and ref is not None and Path(path).name == f"{ref}.wav":
            try:
                last_alive = max(last_alive, os.stat(path).st_mtime)
                data = repair_wav_sizes(path)
                has_recording = True
                log.info(
                    "event=recovery_recording_repaired call=%s recording=%s seconds=%.1f",
                    tag,
                    ref,
                    data / 32000,
                )
            except (OSError, ValueError) as exc:
                log.error(
                    "event=recovery_recording_lost call=%s recording=%s error=%s",
                    tag,
                    ref,
                    quote_value(exc),
                )
        cdr = recovered_cdr(call, last_alive=last_alive, has_recording=has_recording)
        o = cdr.outcome
        log.warning(
            "event=call_recovered call=%s state=%s disposition=%s end_code=%d end_reason=%s "
            "call_time=%d recording=%s call_ref=%s",
            tag,
            call.state,
            o.disposition.replace(" ", "_"),
            o.end_code,
            o.end_reason,
            cdr.call_time,
            cdr.record.recording_ref or "-",
            call.record.call_ref or "-",
        )
        journal, call_id = self.journal, call.id
        try:
            # the journal file goes once the CDR is safe; until then the next start
            # would end the call again (a sink that fails: the next start tries again)
            self.sink.submit(cdr, lambda: journal.forget(call_id))
        except Exception:  # the sink must never stop the start-up
            log.exception("event=cdr_sink_failed call=%s", tag)
        return cdr
