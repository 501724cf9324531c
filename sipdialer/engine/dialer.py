"""The call engine: ``Dialer.originate()`` runs one click-to-dial call end to end.

Owns the asyncio side of a call — it carries out what the pure :class:`~sipdialer.call.Call`
state machine decides (:class:`~sipdialer.call.Act`), turns what the two
:class:`~sipdialer.leg.Leg` objects report into call events, arms the call's one timer,
points the media :class:`~sipdialer.rtp.relay.Bridge` at the addresses the SDP gives, and
at the end hands exactly one :class:`~sipdialer.cdr.Cdr` to the sink.

It is also the :class:`~sipdialer.engine.directory.CallDirectory` the API sees
(:attr:`Dialer.directory`): frozen :class:`~sipdialer.engine.directory.CallView` snapshots
of its calls, never the live :class:`CallRunner` objects.

Decisions: the agent's phone shows the callee's number in From (``show_callee_to_agent``);
the callee sees ``outbound_id`` in From and P-Asserted-Identity; numbers are dialled as
given (``sip:0820001234@domain``); recording starts when the callee answers.

Media addresses from SDP are used only as IP literals the relay's sockets can reach
(:meth:`~sipdialer.rtp.relay.MediaLeg.media_address`); host names in ``c=`` are **not
resolved** (a name a peer chooses would make us query DNS for it, and a slow answer
would hold up the call's media), and neither is an address of a family we do not listen
on (IPv6 media needs ``[sip] listen`` on an IPv6 address). A leg that *answers* with such
an address is ACKed and BYEd at once, and the call ends FAILED with cause **88**
(incompatible destination — what a 488 to our offer would have meant, RFC 3398), the
address in ``end_detail`` and a ``media_address_unusable`` log line; such an address in a
183 is ignored (the agent keeps hearing ringback), and a re-INVITE or UPDATE offering one
is refused with 488, leaving the session as it was (RFC 3261 §14.2).

Media encryption (SDES-SRTP) follows each leg's policy — ``[trunk] srtp`` for trunk legs,
``[registrar] srtp`` / ``[extension_srtp]`` for legs to registered phones — as decided by
:class:`~sipdialer.sip.sdes.SdesLeg` (one per leg, fresh keys per leg): the keys in force
are handed to the leg's relay socket with every media update
(:meth:`~sipdialer.rtp.relay.MediaLeg.set_srtp`). A callee that refuses our offer (488,
e.g. an SRTP-only phone offered plain RTP) ends the call FAILED with cause **88**, as any
488 does (RFC 3398); an answer that refuses the encryption a ``required`` leg insists on
(plain RTP/AVP, no usable ``a=crypto`` of ours) is ACKed, BYEd with
``Reason: Q.850;cause=88`` and ends the call FAILED/88 too, with the reason in
``end_detail`` (``event=answer_unusable``). Keys are never logged.

Media in worker processes: with ``[media] workers`` > 0 the service gives the dialer a
:class:`~sipdialer.rtp.pool.MediaPool` and each call's bridge is a
:class:`~sipdialer.rtp.pool.RemoteBridge` in one of the workers, driven over its control
channel (the same calls as on an in-process :class:`~sipdialer.rtp.relay.Bridge`; the
recording is opened and written by the worker). A worker that dies ends each of *its*
calls with cause 41 ``media_lost`` (``event=media_lost``), hanging both legs up; its WAVs
are kept as far as the worker wrote them and flagged ``recording_partial``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from sipdialer.aio.useragent import UserAgent
from sipdialer.config import DEFAULT_PORTS, Config
from sipdialer.engine.call import Act, Call, CallState, CallStateError, CallTimers, Ev
from sipdialer.engine.causes import Outcome, classify
from sipdialer.engine.cdr import CallRecord, Cdr, CdrSink, build_cdr
from sipdialer.engine.directory import CallView, LegRtp, TimelineEntry
from sipdialer.engine.errors import EngineError
from sipdialer.engine.journal import CallJournal, JournaledCall, leg_entry
from sipdialer.engine.leg import Leg, LegState, LegTarget
from sipdialer.engine.request import CallRequest
from sipdialer.logs import quote_value
from sipdialer.rtp.control import RecordingResult
from sipdialer.rtp.errors import RtpError
from sipdialer.rtp.pool import MediaPool, RemoteBridge, RemoteLeg
from sipdialer.rtp.ports import PortAllocator
from sipdialer.rtp.recorder import Recorder, new_recording_ref
from sipdialer.rtp.relay import Bridge, Codec, MediaAddressError, MediaLeg
from sipdialer.rtp.srtp import SrtpKey
from sipdialer.sip.sdes import MediaKeys, SdesLeg, SrtpPolicy
from sipdialer.sip.sdp import AudioOffer, OurSdpVersion, answer_for, build_sdp

if TYPE_CHECKING:
    from sipdialer.aio.trunk_route import TrunkRoute
    from sipdialer.sip.registrar import Registrar

__all__ = [
    "AgentNotRegistered",
    "CallRequest",
    "CallRunner",
    "Dialer",
    "DialerDirectory",
    "codec_from_answer",
]

log = logging.getLogger("sipdialer.call")

SUPPORTED_CODECS = ("PCMU", "PCMA")
OFFER_CODECS = [("PCMU", 0), ("PCMA", 8)]
DTMF_PT = 101
#: The relay's leg names as the API names them.
_MEDIA_LEGS = {"A": "agent", "B": "callee"}
#: The Reason of the BYE to a leg that answered with a media address we cannot send to,
#: and the cause of its call (see the module docstring).
UNUSABLE_MEDIA_REASON = 'Q.850;cause=88;text="INCOMPATIBLE_DESTINATION"'


#: Leg states whose INVITE still awaits its final response.
_INVITE_PENDING = (LegState.CALLING, LegState.PROCEEDING, LegState.CANCELLING)


class AgentNotRegistered(EngineError, LookupError):
    """The agent is a configured extension with no registered contact."""


def _best_fork_failure(
    failures: list[tuple[int, tuple[str, ...], bool]],
) -> tuple[int, tuple[str, ...], bool]:
    """The answer that speaks for a forked INVITE whose every branch failed (RFC 3261
    §16.7, simplified): busy wins (the agent is on another call), then any real
    response over a timeout, then the lowest status."""
    for busy in (486, 600):
        for f in failures:
            if f[0] == busy:
                return f
    answered = [f for f in failures if not f[2]] or failures
    return min(answered, key=lambda f: f[0])


def srtp_keys(keys: MediaKeys | None) -> tuple[SrtpKey | None, SrtpKey | None]:
    """The relay's (inbound, outbound) keys for a leg's negotiated media keys."""
    if keys is None:
        return None, None
    return SrtpKey(keys.suite, keys.inbound), SrtpKey(keys.suite, keys.outbound)


def codec_from_answer(sdp: AudioOffer) -> Codec | None:
    """The codec a peer will send: the first supported payload type (8 kHz) of its SDP."""
    for pt in sdp.payload_types:
        name, rate = sdp.rtpmap.get(pt, ("", 0))
        if name.upper() in SUPPORTED_CODECS and rate == 8000:
            dtmf_pt = sdp.dtmf_pt if sdp.dtmf_pt != pt else None
            return Codec(name=name.upper(), pt=pt, dtmf_pt=dtmf_pt)
    return None


#: Reason of the BYE to a leg whose 2xx we cannot use, and of its FAILED CDR (RFC 3398:
#: 488 Not Acceptable Here ~ Q.850 88 incompatible destination).
UNUSABLE_ANSWER_REASON = "Q.850;cause=88"


class CallRunner:
    """One call: the state machine, its two legs, its media and its record."""

    def __init__(self, dialer: Dialer, request: CallRequest) -> None:
        self.dialer = dialer
        self.request = request
        cfg = dialer.config.calls
        self.call = Call(
            CallTimers(
                agent_ring_timeout=cfg.agent_ring_timeout,
                callee_ring_timeout=cfg.callee_ring_timeout,
                max_duration=cfg.max_duration,
                rtp_timeout=cfg.rtp_timeout,
            )
        )
        self.id = uuid.uuid4().hex
        self.record = CallRecord(
            id=self.id,
            call_ref=request.call_ref,
            agent=request.agent,
            callee=request.callee,
            outbound_id=request.outbound_id,
            created_at=time.time(),
        )
        self.bridge: Bridge | RemoteBridge | None = None
        self.recorder: Recorder | None = None  # in-process media only (a worker's is its own)
        self._recording_path: Path | None = None
        self.agent: Leg | None = None  # the agent leg that answered (or the only one)
        self.agent_forks: list[Leg] = []  # every INVITE to the agent (one per contact)
        self.callee: Leg | None = None
        self.outcome: Outcome | None = None
        self.cdr: Cdr | None = None
        self.timeline: list[dict[str, object]] = []
        self._timeline: list[TimelineEntry] = []  # the same, typed, for views
        self.done = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._session = secrets.randbelow(2**31)
        self._fork_failures: list[tuple[int, tuple[str, ...], bool]] = []
        self._sdes: dict[Leg, SdesLeg] = {}  # each leg's media encryption
        self._awaiting_answer: set[Leg] = set()  # our re-offer is out, its answer to come
        self._tag = self.id[:12]
        self._final_view: CallView | None = None  # once the CDR is out, until a change

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        pool = self.dialer.media_pool
        try:
            if pool is not None:
                remote = await pool.open(self.dialer.rtp_bind_host)
                remote.lost.add_done_callback(self._media_lost)
                self.bridge = remote
            else:
                self.bridge = await Bridge.open(self.dialer.rtp_bind_host, self.dialer.ports)
        except Exception as exc:
            log.error("event=media_unavailable call=%s error=%s", self._tag, exc)
            self._event(Ev.INTERNAL_ERROR, detail=f"no media ports: {exc}")
            return
        self._event(Ev.START)

    def hangup(self) -> None:
        """The API asked to end the call (idempotent)."""
        self._event(Ev.API_HANGUP)

    def shut_down(self) -> None:
        """The service is stopping: end the call (idempotent)."""
        self._event(Ev.SHUTDOWN)

    @property
    def state(self) -> CallState:
        return self.call.state

    # ---- the machine ------------------------------------------------------------------------
    def _event(
        self,
        ev: Ev,
        *,
        status: int | None = None,
        reason: tuple[str, ...] = (),
        detail: str = "",
    ) -> None:
        before = self.call.state
        try:
            acts = self.call.handle(ev, self._now(), status=status, reason=reason, detail=detail)
        except CallStateError as exc:
            log.error("event=call_state_error call=%s error=%s", self._tag, exc)
            return
        if self.call.state is not before:
            self._note_state()
        for act in acts:
            self._do(act)
        if self.call.state is not before:
            self._journal()  # after the actions: the INVITE they sent, the recording
        self._arm_timer()

    def _note_state(self) -> None:
        st = self.call.state.value
        at = time.time()
        self.timeline.append({"at": at, "state": st})
        self._timeline.append(TimelineEntry(at=at, state=st))
        log.info(
            "event=call_state call=%s state=%s agent=%s callee=%s call_ref=%s",
            self._tag,
            st,
            self.request.agent,
            self.request.callee,
            self.request.call_ref or "-",
        )

    def _do(self, act: Act) -> None:
        bridge = self.bridge
        if act is Act.INVITE_AGENT:
            self._invite_agent()
        elif act is Act.INVITE_CALLEE:
            self.callee = self._make_leg("callee")
            self.record.callee_dialed_at = time.time()
            self.record.sip_call_ids["callee"] = self.callee.call_id
            self.callee.invite()
        elif act is Act.START_RINGBACK:
            if bridge is not None:
                bridge.play_to_a(self.dialer.ringback)
        elif act is Act.STOP_RINGBACK:
            if bridge is not None:
                bridge.play_to_a(None)
        elif act is Act.RELAY_EARLY_MEDIA:
            if bridge is not None:
                bridge.connect()
        elif act is Act.BRIDGE:
            self.record.bridged_at = time.time()
            if bridge is not None:
                bridge.connect()
                self._start_recording(bridge)
        elif act is Act.HANGUP_AGENT:
            for leg in [self.agent] if self.agent is not None else self.agent_forks:
                leg.hangup(self._reason_header())
        elif act is Act.HANGUP_CALLEE:
            if self.callee is not None:
                self.callee.hangup(self._reason_header())
        elif act is Act.FINISH:
            self._finish()

    def _media_lost(self, lost: asyncio.Future[str]) -> None:
        """The media worker relaying this call died: end the call (cause 41)."""
        if lost.cancelled():
            return
        reason = lost.result()
        log.error("event=media_lost call=%s reason=%s", self._tag, quote_value(reason))
        self._event(Ev.MEDIA_LOST, detail=f"the media worker died: {reason}")

    def _start_recording(self, bridge: Bridge | RemoteBridge) -> None:
        rec = self.dialer.config.recording
        if not rec.enabled:
            return
        ref = new_recording_ref()
        path = Path(rec.directory) / f"{ref}.wav"
        if isinstance(bridge, RemoteBridge):  # the worker opens the file
            self.record.recording_ref = ref
            self._recording_path = path.absolute()
            task = asyncio.ensure_future(self._start_remote_recording(bridge, path))
            self.dialer._background.add(task)
            task.add_done_callback(self.dialer._background.discard)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.recorder = Recorder(path, now=self._now())
        except OSError as exc:  # the recorder left no file behind
            log.error("event=recording_failed call=%s error=%s", self._tag, exc)
            self.record.recording_partial = True  # (with no recording_url: none at all)
            return
        self.record.recording_ref = ref
        self._recording_path = path.absolute()
        bridge.start_recording(self.recorder)

    async def _start_remote_recording(self, bridge: RemoteBridge, path: Path) -> None:
        try:
            await bridge.start_recording(path)
        except (OSError, RtpError) as exc:  # no file (disk) or no worker: no recording
            log.error("event=recording_failed call=%s error=%s", self._tag, quote_value(exc))
            self.record.recording_partial = True
            self.record.recording_ref = None
            self._recording_path = None
            self._final_view = None

    def _note_recording(self) -> None:
        """Once the bridge has closed the recorder: flag a recording a disk fault cut
        short, forget one removed for holding no audio, log what was dropped."""
        rec: Recorder | RecordingResult | None = self.recorder
        if isinstance(self.bridge, RemoteBridge):
            rec = self.bridge.recording
            if rec is None and self.record.recording_ref is not None:
                self.record.recording_partial = True  # the worker gave no final word
        if rec is None:
            return
        if rec.partial:
            self.record.recording_partial = True
        if rec.removed:
            self.record.recording_ref = None
        if rec.partial or rec.oversize_packets or rec.overflow_packets:
            log.warning(
                "event=recording_incomplete call=%s partial=%s seconds=%.2f "
                "oversize_packets=%d overflow_packets=%d excess_ms=%d error=%s",
                self._tag,
                str(rec.partial).lower(),
                rec.duration,
                rec.oversize_packets,
                rec.overflow_packets,
                rec.excess_samples // 8,
                repr(str(rec.error)) if rec.error is not None else "-",
            )

    def _reason_header(self) -> str:
        ending = self.call.ending
        if ending is None:
            return "Q.850;cause=16"
        outcome = classify(ending)
        return f'Q.850;cause={outcome.end_code};text="{outcome.cause_name}"'

    def _finish(self) -> None:
        """The call has ended: stop its timer and media now; the CDR follows once the
        legs we are still closing have given their final SIP status (a cancelled
        INVITE's 487 arrives a few milliseconds later), at most ``SETTLE`` seconds."""
        assert self.call.ending is not None
        self.record.ended_at = time.time()
        self.outcome = classify(self.call.ending)
        if self._timer:
            self._timer.cancel()
            self._timer = None
        task = asyncio.ensure_future(self._complete())
        self.dialer._background.add(task)
        task.add_done_callback(self.dialer._background.discard)

    SETTLE = 2.0

    async def _complete(self) -> None:
        if self.bridge is not None:
            await self.bridge.close()
        self._note_recording()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.SETTLE
        while loop.time() < deadline and any(
            leg.state in _INVITE_PENDING for leg in [*self.agent_forks, self.callee] if leg
        ):
            await asyncio.sleep(0.02)
        assert self.outcome is not None
        self._collect_statuses()
        self.cdr = build_cdr(self.record, self.outcome, public_url=self.dialer.public_url)
        o = self.outcome
        log.info(
            "event=call_ended call=%s disposition=%s end_code=%d cause=%s end_reason=%s "
            "ended_by=%s call_time=%s recording=%s",
            self._tag,
            o.disposition.replace(" ", "_"),
            o.end_code,
            o.cause_name,
            o.end_reason,
            o.ended_by,
            self.cdr.call_time,
            self.record.recording_ref or "-",
        )
        journal = self.dialer.journal
        call_id = self.id

        def durable() -> None:  # the CDR is safe: a crash can no longer need the journal
            if journal is not None:
                journal.forget(call_id)

        try:
            self.dialer.sink.submit(self.cdr, durable)
        except Exception:  # the sink must never take the engine down
            log.exception("event=cdr_sink_failed call=%s", self._tag)
        self.done.set()
        self.dialer._ended(self)

    # ---- timers ----------------------------------------------------------------------------
    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _arm_timer(self) -> None:
        if self._timer:
            self._timer.cancel()
            self._timer = None
        at = self.call.get_timer()
        if at is not None and not self.call.ended:
            self._timer = asyncio.get_running_loop().call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        bridge = self.bridge
        before = self.call.state
        # each leg's own last packet: one silent leg times out while the other talks
        acts = self.call.handle_timer(
            self._now(),
            None if bridge is None else {"agent": bridge.a.last_rx, "callee": bridge.b.last_rx},
        )
        if self.call.state is not before:
            self._note_state()
        for act in acts:
            self._do(act)
        if self.call.state is not before:
            self._journal()
        self._arm_timer()

    def _journal(self) -> None:
        """Put the call as it stands in the journal of live calls (a no-op when nothing
        changed): what a restarted service needs to end it should this process die."""
        journal = self.dialer.journal
        if journal is None or self.cdr is not None:  # once the CDR is out, it is forgotten
            return
        legs = [leg for leg in (*self.agent_forks, self.callee) if leg is not None]
        recording = self._recording_path
        journal.record(
            JournaledCall(
                record=self.record,
                state=self.call.state.value,
                legs=tuple(leg_entry(leg) for leg in legs),
                recording_path=str(recording) if recording is not None else None,
                public_url=self.dialer.public_url,
                outcome=self.outcome,
            )
        )

    # ---- legs ------------------------------------------------------------------------------
    def _invite_agent(self) -> None:
        """INVITE the agent: the trunk, or every registered contact of an extension at
        once (parallel fork: the first to answer wins, the others are CANCELled)."""
        try:
            targets, route = self.dialer.agent_targets(self.request)
        except AgentNotRegistered:
            self.record.agent_route = "extension"
            # a table transition of its own; runs after the current one's actions
            asyncio.get_running_loop().call_soon(self._event, Ev.AGENT_NOT_REGISTERED)
            return
        self.record.agent_route = route
        self.record.agent_dialed_at = time.time()
        self.agent_forks = [self._make_leg("agent", target) for target in targets]
        self.record.sip_call_ids["agent"] = self.agent_forks[0].call_id
        if len(self.agent_forks) == 1:
            self.agent = self.agent_forks[0]
        for leg in self.agent_forks:
            leg.invite()

    def _is_agent(self, leg: Leg) -> bool:
        return leg is self.agent or leg in self.agent_forks

    def _make_leg(self, name: str, target: LegTarget | None = None) -> Leg:
        assert self.bridge is not None
        d = self.dialer
        media = self.bridge.a if name == "agent" else self.bridge.b
        target = target or d.target_for(name, self.request)
        to_phone = name == "agent" and self.record.agent_route == "extension"
        policy = d.srtp_policy(self.request.agent if to_phone else None)
        sdes = SdesLeg(policy, secrets.token_bytes)

        def offer_sdp(version: int) -> bytes:
            proto, crypto = sdes.offer()
            return build_sdp(
                address=d.rtp_host,
                port=media.local_port,
                session_id=self._session,
                version=version,
                codecs=OFFER_CODECS,
                dtmf_pt=DTMF_PT,
                proto=proto,
                crypto=crypto,
            )

        # RFC 3264 §8, per leg: our o= version on this leg goes up when our SDP changes
        versions = OurSdpVersion()
        our_offer = versions.render(offer_sdp)
        assert our_offer is not None

        def fallback_offer() -> bytes | None:
            # a 488 to our best-effort SRTP offer: the same keys as RTP/SAVP, once
            if sdes.fallback_offer() is None:
                return None
            return versions.render(offer_sdp)

        # the parameter's name is the ReinviteAnswerer protocol's (mypy checks it)
        def answer_reinvite(offer: AudioOffer | None) -> bytes | None:
            if offer is None:  # an offerless re-INVITE: we offer again
                self._awaiting_answer.add(leg)
                return versions.render(offer_sdp)
            self._awaiting_answer.discard(leg)
            if offer.port and not self._usable_address(name, media, offer):
                return None  # 488: the session stays as it was
            outcome, line = sdes.answer(offer.proto, offer.crypto)
            if outcome.problem is not None:
                log.info(
                    "event=srtp_refused call=%s leg=%s policy=%s why=%s",
                    self._tag,
                    name,
                    sdes.policy,
                    quote_value(outcome.problem),
                )
                return None  # 488
            body = versions.render(
                lambda version: answer_for(
                    offer,
                    address=d.rtp_host,
                    port=media.local_port,
                    session_id=self._session,
                    version=version,
                    supported=SUPPORTED_CODECS,
                    crypto=line,
                )
            )
            if body is not None:
                sdes.adopt(outcome.keys)
            return body

        leg = Leg(
            name,
            d.ua,
            target,
            self,
            sdp_offer=our_offer,
            answer_reinvite=answer_reinvite,
            fallback_offer=fallback_offer,
            call_tag=self._tag,
        )
        self._sdes[leg] = sdes
        return leg

    def _media_of(self, leg: Leg) -> MediaLeg | RemoteLeg | None:
        if self.bridge is None:
            return None
        return self.bridge.a if self._is_agent(leg) else self.bridge.b

    def _unusable_answer(self, leg: Leg, sdp: AudioOffer | None) -> str | None:
        """Why the SDP of a 2xx cannot carry the call's audio, or None when it can. A 2xx
        without SDP is fine when an earlier 18x already gave the media (early media)."""
        if sdp is None:
            media = self._media_of(leg)
            if media is not None and media.remote is not None:
                return None
            return "no SDP in the answer nor in an earlier provisional response"
        if sdp.port == 0:
            return "the answer rejected the audio stream (port 0)"
        if codec_from_answer(sdp) is None:
            offered = ",".join(str(pt) for pt in sdp.payload_types) or "none"
            return f"no codec we offered in the answer (payload types {offered})"
        sdes = self._sdes.get(leg)
        if sdes is not None:
            return sdes.take_answer(sdp.proto, sdp.crypto).problem
        return None

    def _usable_address(self, name: str, media: MediaLeg | RemoteLeg, sdp: AudioOffer) -> bool:
        """Whether the relay can send to the SDP's address (logged when not)."""
        try:
            media.media_address((sdp.address, sdp.port))
        except MediaAddressError as exc:
            log.warning(
                "event=media_address_unusable call=%s leg=%s address=%s port=%d error=%s",
                self._tag,
                name,
                sdp.address,
                sdp.port,
                exc,
            )
            return False
        return True

    def _point_media(self, leg: Leg, sdp: AudioOffer | None, *, answer: bool = True) -> bool:
        """Point the leg's relay socket at the SDP's address, codec and keys. False
        (nothing changed, logged) when the address is one the relay cannot send to, or
        the SDP (an ``answer`` to our offer) refuses the leg's encryption policy."""
        media = self._media_of(leg)
        if media is None or sdp is None or sdp.port == 0:
            return True
        codec = codec_from_answer(sdp)
        if codec is None:
            return True
        if not self._usable_address(leg.name, media, sdp):
            return False
        sdes = self._sdes.get(leg)
        if sdes is not None and answer:
            problem = sdes.take_answer(sdp.proto, sdp.crypto).problem
            if problem is not None:
                log.info(
                    "event=srtp_refused call=%s leg=%s policy=%s why=%s",
                    self._tag,
                    leg.name,
                    sdes.policy,
                    quote_value(problem),
                )
                return False
        media.set_remote((sdp.address, sdp.port), codec)
        if sdes is not None:
            media.set_srtp(*srtp_keys(sdes.keys))
        # sendonly / inactive, or the null address (RFC 2543 hold: no address to send to)
        media.hold(sdp.on_hold or media.media_address((sdp.address, sdp.port)) is None)
        return True

    def _refuse_answer(self, leg: Leg, sdp: AudioOffer) -> None:
        """``leg`` answered (and was ACKed) with a media address we cannot use: BYE it
        and end the call FAILED/88 (see the module docstring)."""
        leg.hangup(UNUSABLE_MEDIA_REASON)
        detail = f"{leg.name} answered with an unusable media address: {sdp.address}"
        if leg is self.agent:
            self.record.agent_status = 200
            self._event(Ev.AGENT_FAILED, reason=(UNUSABLE_MEDIA_REASON,), detail=detail)
        else:
            self.record.callee_status = 200
            self._event(Ev.CALLEE_FAILED, reason=(UNUSABLE_MEDIA_REASON,), detail=detail)

    def leg_progress(self, leg: Leg, status: int, sdp: AudioOffer | None) -> None:
        if self._is_agent(leg):
            self._event(Ev.AGENT_RINGING)
            self._journal()  # the INVITE to CANCEL may be a new one (after a challenge)
            return
        if self.record.callee_ringing_at is None:
            self.record.callee_ringing_at = time.time()
        if sdp is not None and sdp.port and self._point_media(leg, sdp):
            self._event(Ev.CALLEE_EARLY_MEDIA)
        else:
            self._event(Ev.CALLEE_RINGING)
        self._journal()

    def leg_answered(self, leg: Leg, sdp: AudioOffer | None) -> None:
        problem = self._unusable_answer(leg, sdp)
        if problem is not None:
            # an answer we cannot bridge is no answered call: BYE it, end as 488/88
            log.info(
                "event=answer_unusable call=%s leg=%s why=%s",
                self._tag,
                leg.name,
                quote_value(problem),
            )
            leg.hangup(UNUSABLE_ANSWER_REASON)
            self.leg_failed(leg, 488, (UNUSABLE_ANSWER_REASON,), False)
            return
        if self._is_agent(leg):
            if self.agent is not None and leg is not self.agent:
                leg.hangup("Q.850;cause=26")  # another fork answered first: BYE this one
                return
            self.agent = leg
            self.record.sip_call_ids["agent"] = leg.call_id
            for other in self.agent_forks:
                if other is not leg:
                    other.hangup('SIP;cause=200;text="Call completed elsewhere"')
        if sdp is not None and not self._point_media(leg, sdp):
            self._refuse_answer(leg, sdp)
            return
        if leg is self.agent:
            self.record.agent_answered_at = time.time()
            self.record.agent_status = 200
            self._event(Ev.AGENT_ANSWERED)
        else:
            self.record.callee_answered_at = time.time()
            self.record.callee_status = 200
            self._event(Ev.CALLEE_ANSWERED)

    def leg_failed(self, leg: Leg, status: int, reason: tuple[str, ...], unreachable: bool) -> None:
        is_agent = self._is_agent(leg)
        if is_agent and self.agent is None:
            # a fork failed: the agent has failed only when every fork has
            self._fork_failures.append((status, reason, unreachable))
            if len(self._fork_failures) < len(self.agent_forks):
                return
            status, reason, unreachable = _best_fork_failure(self._fork_failures)
        if is_agent:
            self.record.agent_status = status
        else:
            self.record.callee_status = status
        if unreachable:
            self._event(Ev.AGENT_UNREACHABLE if is_agent else Ev.CALLEE_UNREACHABLE, status=status)
        else:
            ev = Ev.AGENT_FAILED if is_agent else Ev.CALLEE_FAILED
            self._event(ev, status=status, reason=reason)

    def leg_bye(self, leg: Leg, reason: tuple[str, ...]) -> None:
        if self._is_agent(leg) and leg is not self.agent:
            return  # a losing fork
        self._event(Ev.AGENT_BYE if leg is self.agent else Ev.CALLEE_BYE, reason=reason)

    def leg_media_changed(self, leg: Leg, sdp: AudioOffer) -> None:
        # the peer's offer (its keys adopted by answer_reinvite) or, after an offerless
        # re-INVITE, the answer to our offer in its ACK
        answer = leg in self._awaiting_answer
        self._awaiting_answer.discard(leg)
        self._point_media(leg, sdp, answer=answer)
        self._journal()  # a re-INVITE may have moved the remote target

    def leg_terminated(self, leg: Leg) -> None:
        self._collect_statuses()

    def _collect_statuses(self) -> None:
        """Fill in each leg's final SIP status the record does not have yet (the 487 of a
        cancelled INVITE, the 200 that crossed our CANCEL)."""
        agents = [self.agent] if self.agent is not None else self.agent_forks
        before = (self.record.agent_status, self.record.callee_status)
        if self.record.agent_status is None:
            for leg in agents:
                if leg.final_status is not None:
                    self.record.agent_status = leg.final_status
                    break
        callee = self.callee
        if self.record.callee_status is None and callee is not None:
            self.record.callee_status = callee.final_status
        if callee is not None and callee.redirects != self.record.callee_redirects:
            self.record.callee_redirects = list(callee.redirects)
            self._final_view = None
        if (self.record.agent_status, self.record.callee_status) != before:
            self._final_view = None

    # ---- what the API shows ----------------------------------------------------------------
    def _cdr_view(self) -> dict[str, object] | None:
        """The CDR once ended; in the moment between the end and the CDR's emission (the
        legs' last final responses) a provisional one from what is known so far."""
        if self.cdr is not None:
            return self.cdr.cdr_payload()
        if self.outcome is None:
            return None
        self._collect_statuses()
        return build_cdr(self.record, self.outcome, public_url=self.dialer.public_url).cdr_payload()

    def _rtp_view(self) -> tuple[LegRtp, ...]:
        if self.bridge is None:
            return ()
        return tuple(
            LegRtp(
                leg=_MEDIA_LEGS.get(leg.name, leg.name),
                packets_in=leg.packets_in,
                packets_out=leg.packets_out,
                packets_dropped=leg.packets_dropped,
                bytes_in=leg.bytes_in,
                packets_foreign=leg.packets_foreign,
            )
            for leg in (self.bridge.a, self.bridge.b)
        )

    def view(self) -> CallView:
        """The call as it stands, frozen (what the API renders). A finished call's view
        is kept once its CDR is out (the housekeeping reads every recent call each
        second)."""
        if self._final_view is not None:
            return self._final_view
        r = self.record
        # the statuses before the CDR view, which may fill them in (as snapshot() does)
        agent_status, callee_status = r.agent_status, r.callee_status
        cdr = self._cdr_view()
        view = CallView(
            id=self.id,
            call_ref=self.request.call_ref,
            agent=self.request.agent,
            callee=self.request.callee,
            outbound_id=self.request.outbound_id,
            state=self.call.state.value,
            ended=self.call.state is CallState.ENDED,
            timeline=tuple(self._timeline),
            created_at=r.created_at,
            agent_answered_at=r.agent_answered_at,
            bridged_at=r.bridged_at,
            ended_at=r.ended_at,
            agent_sip_status=agent_status,
            callee_sip_status=callee_status,
            recording_ref=r.recording_ref,
            cdr=MappingProxyType(cdr) if cdr is not None else None,
            rtp=self._rtp_view(),
        )
        if self.cdr is not None and self.done.is_set():
            self._final_view = view
        return view

    def snapshot(self) -> dict[str, object]:
        return {
            "id": self.id,
            "call_ref": self.request.call_ref,
            "agent": self.request.agent,
            "callee": self.request.callee,
            "outbound_id": self.request.outbound_id,
            "state": self.call.state.value,
            "timeline": list(self.timeline),
            "agent_sip_status": self.record.agent_status,
            "callee_sip_status": self.record.callee_status,
            "cdr": self._cdr_view(),
        }


class Dialer:
    """Places calls; one per process, shared by the API."""

    def __init__(
        self,
        config: Config,
        ua: UserAgent,
        sink: CdrSink,
        *,
        sip_port: int,
        ringback: np.ndarray | None = None,
    ) -> None:
        self.config = config
        self.ua = ua
        self.sink = sink
        self.sip_port = sip_port
        self.rtp_host = config.sip.advertised_host  # what SDP tells peers
        self.rtp_bind_host = config.sip.listen[0]  # where the RTP sockets listen
        self.ports = PortAllocator(*config.sip.rtp_ports)
        self.media_pool: MediaPool | None = None
        """The media worker processes, when ``[media] workers`` > 0 (set by the service);
        None: every call's relay runs in this process."""
        self.ringback = ringback
        self.registrar: Registrar | None = None  # set by the service when extensions exist
        self.trunk_route: TrunkRoute | None = None  # set by the service when a trunk exists
        self.public_url = config.http.public_url or "http://{}:{}".format(*config.http.listen)
        self.active: dict[str, CallRunner] = {}
        self.recent: dict[str, CallRunner] = {}
        #: The journal of live calls (set by the service when it keeps one).
        self.journal: CallJournal | None = None
        self._background: set[asyncio.Task[None]] = set()
        #: What the API sees of the calls.
        self.directory = DialerDirectory(self)

    async def originate(self, request: CallRequest) -> CallRunner:
        runner = CallRunner(self, request)
        self.active[runner.id] = runner
        await runner.start()
        return runner

    def get(self, call_id: str) -> CallRunner | None:
        return self.active.get(call_id) or self.recent.get(call_id)

    def _ended(self, runner: CallRunner) -> None:
        self.active.pop(runner.id, None)
        self.recent[runner.id] = runner
        while len(self.recent) > 1000:
            self.recent.pop(next(iter(self.recent)))

    async def close(self) -> None:
        for runner in list(self.active.values()):
            runner.shut_down()
        pending = [r.done.wait() for r in list(self.active.values())]
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), 5.0)

    def srtp_policy(self, extension: str | None) -> SrtpPolicy:
        """The media encryption policy of a leg to the trunk (``extension`` None) or to
        a registered phone of ``extension``."""
        if extension is None:
            return SrtpPolicy(self.config.trunk.srtp)
        return SrtpPolicy(self.config.srtp_for_extension(extension))

    def agent_targets(self, request: CallRequest) -> tuple[list[LegTarget], str]:
        """The agent leg's INVITE targets and route: every registered contact of an
        extension (``"extension"``), else the trunk (``"trunk"``). Raises
        :class:`AgentNotRegistered` for an extension without a binding, unless
        ``[calls] unregistered_extension = trunk``."""
        reg = self.registrar
        if reg is None or not reg.is_extension(request.agent):
            return [self.target_for("agent", request)], "trunk"
        bindings = reg.lookup(request.agent, time.time())
        if not bindings:
            if self.config.calls.unregistered_extension == "trunk":
                return [self.target_for("agent", request)], "trunk"
            raise AgentNotRegistered(request.agent)
        sip = self.config.sip
        host = sip.advertised_host
        shown = self._shown_to_agent(request)
        targets = []
        for b in bindings:
            transport = b.transport.upper()
            tp = ";transport=tcp" if transport == "TCP" else ""
            targets.append(
                LegTarget(
                    request_uri=b.contact_uri,
                    dest=b.target,
                    transport=transport,
                    from_uri=f"sip:{shown}@{host}",
                    from_display=shown,
                    to_uri=f"sip:{request.agent}@{host}",
                    contact_uri=f"sip:sipdialer@{host}:{self.sip_port}{tp}",
                )
            )
        return targets, "extension"

    def _shown_to_agent(self, request: CallRequest) -> str:
        """The caller the agent's phone displays (``[calls] agent_caller_id``)."""
        if self.config.calls.agent_caller_id == "outbound_id":
            return request.outbound_id
        return request.callee

    def target_for(self, leg: str, request: CallRequest) -> LegTarget:
        """Where a trunk leg's INVITE goes (the callee, or an agent dialled by number)."""
        trunk = self.config.trunk
        sip = self.config.sip
        if trunk.next_hop is None:
            raise RuntimeError("no [trunk] registrar configured")
        domain = trunk.domain
        # the target the registration found working; before any answer, the configured
        # address (an unresolvable one fails the leg as unreachable: cause 38)
        route = self.trunk_route
        hop = route.current if route is not None else None
        if hop is not None:
            dest, transport = (hop.host, hop.port), hop.transport
        else:
            host, port = trunk.next_hop
            dest = (host, port or DEFAULT_PORTS[trunk.transport])
            transport = trunk.transport.upper()
        tp = "" if transport == "UDP" else f";transport={transport.lower()}"
        contact = f"sip:{trunk.username or 'sipdialer'}@{sip.advertised_host}:{self.sip_port}{tp}"
        creds = (trunk.username, trunk.password) if trunk.username else None
        if leg == "agent":
            number, shown = request.agent, self._shown_to_agent(request)
            extra: list[tuple[str, str]] = []
        else:
            number, shown = request.callee, request.outbound_id
            extra = [("P-Asserted-Identity", f"<sip:{shown}@{domain}>")]
        if route is not None and route.route_header is not None:
            extra = [("Route", route.route_header), *extra]
        return LegTarget(
            request_uri=f"sip:{number}@{domain}",
            dest=dest,
            transport=transport,
            from_uri=f"sip:{shown}@{domain}",
            from_display=shown,
            to_uri=f"sip:{number}@{domain}",
            contact_uri=contact,
            credentials=creds,
            extra_headers=extra,
        )


class DialerDirectory:
    """The :class:`~sipdialer.engine.directory.CallDirectory` of a :class:`Dialer`: its
    calls as frozen views, and the two things the API may do to them."""

    def __init__(self, dialer: Dialer) -> None:
        self._dialer = dialer

    def get(self, call_id: str) -> CallView | None:
        runner = self._dialer.get(call_id)
        return runner.view() if runner is not None else None

    def active(self) -> Sequence[CallView]:
        return [runner.view() for runner in list(self._dialer.active.values())]

    def recent(self) -> Sequence[CallView]:
        return [runner.view() for runner in list(self._dialer.recent.values())]

    def active_count(self) -> int:
        return len(self._dialer.active)

    async def originate(self, request: CallRequest) -> CallView:
        runner = await self._dialer.originate(request)
        return runner.view()

    def hangup(self, call_id: str) -> bool:
        runner = self._dialer.get(call_id)
        if runner is None or runner.state is CallState.ENDED:
            return False
        runner.hangup()
        return True
