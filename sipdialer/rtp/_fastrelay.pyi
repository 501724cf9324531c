"""Types of the C extension ``sipdialer.rtp._fastrelay`` (see ``_fastrelay.c``)."""

from collections.abc import Callable
from typing import Any

BATCH: int
SLOT: int

class RelayCore:
    """The hot state of one relay leg and its fast path (the base of ``MediaLeg``)."""

    _fd: int
    packets_in: int
    bytes_in: int
    packets_out: int
    packets_dropped: int
    fast_packets: int
    last_rx: float
    _audio_pt: int
    _forward: bool
    _sending: bool
    _mark: int
    _seq_off: int
    _ts_off: int
    _ssrc: int
    _src: int
    _out_seq: int
    _out_ts: int
    _last_tx: float | None
    _rb_handle: Any
    _unprotect: Callable[[bytes], bytes | None] | None
    _srtp_tx: Any
    _rec: Any
    _audio_name: str
    _xlate: bytes | None
    peer: RelayCore
    _time: Callable[[], float]
    _source: tuple[Any, ...] | None
    remote: tuple[Any, ...] | None
    def _readable(self) -> None: ...
