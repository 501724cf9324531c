"""Types of the C extension ``sipdialer.rtp._fastrelay`` (see ``_fastrelay.c``)."""

from collections.abc import Callable, Iterator
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
    _rec: PendingPayloads | None
    _audio_name: str
    _xlate: bytes | None
    peer: RelayCore
    _time: Callable[[], float]
    _source: tuple[Any, ...] | None
    remote: tuple[Any, ...] | None
    def _readable(self) -> None: ...

MAX_PAYLOAD: int
PENDING_BYTES: int
PENDING_PACKETS: int

class PendingPayloads:
    """A recorder channel's packets since its last flush (bounded; see the C file)."""

    room: int
    oversize: int
    overflow: int
    def feed(self, payload: bytes, codec: str, arrival: float) -> None: ...
    def refuse(self, m: int) -> None: ...
    def take(self) -> tuple[bytes, bytes, bytes] | None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[bytes]: ...
    @property
    def codecs(self) -> list[str]: ...
    @property
    def arrivals(self) -> list[float]: ...
    @property
    def nbytes(self) -> int: ...

def configure(ulaw: bytes, alaw: bytes) -> None: ...

# int16 buffers (numpy arrays); ``out``: a writable buffer of at least 4n bytes, returned
def interleave(left: Any, right: Any, n: int, out: Any = None) -> Any: ...

class Reactor:
    """Relay legs' sockets behind one epoll descriptor (one loop reader for all)."""

    def add(self, leg: RelayCore) -> None: ...
    def remove(self, leg: RelayCore) -> bool: ...
    def run(self) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    @property
    def legs(self) -> int: ...
