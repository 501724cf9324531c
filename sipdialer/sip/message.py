"""SIP messages: parsing from bytes and serialising to bytes (RFC 3261 §7, §20, §25).

Owns the wire format of a request or response: start line, header fields (compact names
expanded, names matched case-insensitively, folded lines joined, repeated and
comma-separated values kept in order), Content-Length framing, and bodies kept as raw
bytes. The header section is decoded as UTF-8 with ``surrogateescape`` so that bytes which
are not UTF-8 (RFC 4475 ``intmeth``) survive a parse/serialise round trip unchanged.

Everything structural that a message must get right to be routable is checked here, so
that a broken message raises exactly one exception type, :class:`SipParseError`:
the start line, Content-Length, CSeq (number < 2**31 and method equal to the request's),
Via, From and To. Rules that are a UA's decision rather than grammar (missing mandatory
headers, duplicated singletons, unknown URI schemes) are reported by
:func:`request_problem` so that the UAS core can choose the response.

Sans-IO: no sockets, no clocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sipdialer.sip.address import Address, Via, parse_address, parse_vias, split_commas
from sipdialer.sip.errors import SipParseError, SipVersionError

MAX_MESSAGE_SIZE = 65_535
MAX_HEADERS = 128
MAX_CSEQ = 2**31 - 1

TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN = re.compile(rf"[{TOKEN_CHARS}]+\Z")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_STATUS_LINE = re.compile(r"SIP/([0-9]+)\.([0-9]+) ([0-9]+)(?: (.*))?\Z", re.S)
_DIGITS = re.compile(r"[0-9]+\Z")
_LINE_SPLIT = re.compile(r"\r?\n")


COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL_NAMES = [
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "In-Reply-To",
    "Max-Forwards", "MIME-Version", "Min-Expires", "Organization", "P-Asserted-Identity",
    "P-Preferred-Identity", "Path", "Priority", "Privacy", "Proxy-Authenticate",
    "Proxy-Authorization", "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-To",
    "Referred-By", "Remote-Party-ID", "Reply-To", "Require", "Retry-After", "Route", "RSeq",
    "Server", "Session-Expires", "Subject", "Supported", "Timestamp", "To", "Unsupported",
    "User-Agent", "Via", "Warning", "WWW-Authenticate",
]  # fmt: skip
CANONICAL = {name.lower(): name for name in _CANONICAL_NAMES}

#: Headers whose value is a comma-separated list that may also be split over several lines.
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept", "Accept-Encoding", "Accept-Language", "Allow", "Allow-Events", "Contact",
        "Content-Encoding", "Path", "Proxy-Require", "Record-Route", "Require", "Route",
        "Supported", "Unsupported", "Via",
    )
)  # fmt: skip

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    406: "Not Acceptable", 407: "Proxy Authentication Required", 408: "Request Timeout",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    423: "Interval Too Brief", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    491: "Request Pending", 500: "Server Internal Error", 501: "Not Implemented",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}  # fmt: skip


def canonical_name(name: str) -> str:
    """Map a header name as received to the name we store and print."""
    lower = name.lower()
    if len(lower) == 1 and lower in COMPACT_FORMS:
        return COMPACT_FORMS[lower]
    return CANONICAL.get(lower, name)


def is_token(text: str) -> bool:
    return bool(_TOKEN.match(text))


class Headers:
    """Ordered header fields; names are matched case-insensitively (compact forms expanded)."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in items]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name).lower()
        return any(n.lower() == key for n, _ in self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first field of that name, or ``default``."""
        key = canonical_name(name).lower()
        for n, v in self._items:
            if n.lower() == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every field of that name, one entry per header line, in order."""
        key = canonical_name(name).lower()
        return [v for n, v in self._items if n.lower() == key]

    def values(self, name: str) -> list[str]:
        """Every element of a list header (``Via``, ``Contact``, ``Route``…), commas split."""
        out: list[str] = []
        for line in self.get_all(name):
            out.extend(v for v in split_commas(line) if v)
        return out

    def add(self, name: str, value: str) -> None:
        self._items.append((canonical_name(name), value))

    def insert_first(self, name: str, value: str) -> None:
        self._items.insert(0, (canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        """Replace every field of that name by one (kept at the first one's position)."""
        cname = canonical_name(name)
        key = cname.lower()
        out: list[tuple[str, str]] = []
        placed = False
        for n, v in self._items:
            if n.lower() == key:
                if not placed:
                    out.append((cname, value))
                    placed = True
            else:
                out.append((n, v))
        if not placed:
            out.append((cname, value))
        self._items = out

    def remove(self, name: str) -> None:
        key = canonical_name(name).lower()
        self._items = [(n, v) for n, v in self._items if n.lower() != key]

    def remove_first(self, name: str) -> str | None:
        key = canonical_name(name).lower()
        for i, (n, v) in enumerate(self._items):
            if n.lower() == key:
                del self._items[i]
                return v
        return None


@dataclass(eq=False)
class _Message:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    # ---- typed access to the headers every layer needs --------------------------------
    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    def cseq(self) -> tuple[int, str]:
        value = self.headers.get("CSeq")
        if value is None:
            raise SipParseError("no CSeq")
        return parse_cseq(value)

    def vias(self) -> list[Via]:
        return parse_vias(self.headers.get_all("Via"))

    def top_via(self) -> Via:
        first = self.headers.get("Via")
        if first is None:
            raise SipParseError("no Via")
        return parse_vias([first])[0]

    def from_addr(self) -> Address:
        return parse_address(self._required("From"))

    def to_addr(self) -> Address:
        return parse_address(self._required("To"))

    def contacts(self) -> list[Address]:
        return [parse_address(v) for v in self.headers.values("Contact") if v.strip() != "*"]

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"no {name}")
        return value

    # ---- serialisation ------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is always written and always equals ``len(body)``."""
        lines = [self.start_line()]
        lines.extend(f"{n}: {v}" for n, v in self.headers if n != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


@dataclass(eq=False)
class Request(_Message):
    method: str = "OPTIONS"
    uri: str = ""
    version: str = "SIP/2.0"

    def __init__(
        self,
        method: str,
        uri: str,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        self.method = method
        self.uri = uri
        self.version = version
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id}>"


@dataclass(eq=False)
class Response(_Message):
    status: int = 200
    reason: str = "OK"
    version: str = "SIP/2.0"

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        self.status = status
        self.reason = REASON_PHRASES.get(status, "") if reason is None else reason
        self.version = version
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call-id={self.call_id}>"


Message = Request | Response


# ---------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------


def parse_uint(text: str, max_digits: int = 10) -> int | None:
    """A non-negative decimal of ASCII digits (leading zeros allowed), else None."""
    text = text.strip()
    if not _DIGITS.match(text):
        return None
    digits = text.lstrip("0") or "0"
    return int(digits) if len(digits) <= max_digits else None


def parse_cseq(value: str) -> tuple[int, str]:
    parts = value.split()
    if len(parts) != 2 or not _DIGITS.match(parts[0]) or not is_token(parts[1]):
        raise SipParseError(f"bad CSeq {value[:60]!r}")
    digits = parts[0].lstrip("0") or "0"
    if len(digits) > 10 or int(digits) > MAX_CSEQ:
        raise SipParseError(f"CSeq number out of range: {parts[0][:40]}")
    return int(digits), parts[1]


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Split at the empty line that ends the header section (CRLF, or bare LF leniently)."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf < 0 and lf < 0:
        raise SipParseError("no end of header section")
    if crlf >= 0 and (lf < 0 or crlf <= lf + 1):
        return data[:crlf], data[crlf + 4 :]
    return data[:lf], data[lf + 2 :]


def _header_lines(head: str) -> list[str]:
    lines: list[str] = []
    for raw in _LINE_SPLIT.split(head):
        if raw[:1] in (" ", "\t"):
            if not lines:
                raise SipParseError("continuation line before the start line")
            lines[-1] = lines[-1].rstrip(" \t") + " " + raw.strip(" \t")
        else:
            lines.append(raw)
    return lines


def parse_message(
    data: bytes,
    *,
    stream: bool = False,
    max_size: int = MAX_MESSAGE_SIZE,
    max_headers: int = MAX_HEADERS,
    strict: bool = True,
) -> Request | Response:
    """Parse one SIP message from ``data``.

    On a datagram (``stream=False``) a missing Content-Length means "the rest of the
    datagram"; bytes beyond Content-Length are ignored (RFC 3261 §18.3). On a stream the
    caller frames messages first (:class:`StreamFramer`) and Content-Length is mandatory.

    ``strict=False`` is a salvage parse for answering a broken request with 400/505: it
    skips the structural header checks, keeps a request line's other ``SIP/x.y`` version
    in ``Request.version`` and takes the rest as body when Content-Length does not frame.
    """
    try:
        return _parse(data, stream, max_size, max_headers, strict)
    except SipParseError:
        raise
    except (ValueError, IndexError, UnicodeError) as exc:  # defence in depth
        raise SipParseError(f"malformed message: {exc}") from exc


def _parse(
    data: bytes, stream: bool, max_size: int, max_headers: int, strict: bool = True
) -> Request | Response:
    if len(data) > max_size:
        raise SipParseError(f"message larger than {max_size} bytes")
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("empty message")
    head_bytes, rest = _split_head(data)
    head = head_bytes.decode("utf-8", "surrogateescape")
    lines = _header_lines(head)
    if len(lines) - 1 > max_headers:
        raise SipParseError(f"more than {max_headers} header fields")

    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        name = name.strip(" \t")
        if not sep or not is_token(name):
            raise SipParseError(f"bad header line {line[:60]!r}")
        headers.add(name, value.strip(" \t"))

    try:
        body = _frame_body(headers, rest, stream)
    except SipParseError:
        if strict:
            raise
        body = rest
    msg = _parse_start_line(lines[0], headers, body, strict)
    if strict:
        _check_structure(msg)
    return msg


def _frame_body(headers: Headers, rest: bytes, stream: bool) -> bytes:
    lengths = headers.get_all("Content-Length")
    if not lengths:
        if stream:
            raise SipParseError("Content-Length is mandatory on a stream transport")
        return rest
    parsed = [parse_uint(value, max_digits=9) for value in lengths]
    if any(n is None for n in parsed):
        raise SipParseError(f"bad Content-Length {lengths[0][:20]!r}")
    length = parsed[0]
    assert length is not None
    if length > len(rest):
        raise SipParseError(f"Content-Length {length} exceeds the {len(rest)} bytes received")
    return rest[:length]


def _parse_start_line(
    line: str, headers: Headers, body: bytes, strict: bool = True
) -> Request | Response:
    if line.startswith("SIP/"):
        m = _STATUS_LINE.match(line)
        if not m:
            raise SipParseError(f"bad status line {line[:80]!r}")
        if (m.group(1), m.group(2)) != ("2", "0"):
            raise SipVersionError(f"unsupported version in {line[:40]!r}")
        code = m.group(3)
        if len(code) != 3 or not 100 <= int(code) <= 699:
            raise SipParseError(f"bad status code {code[:12]!r}")
        return Response(int(code), (m.group(4) or "").strip(" "), headers, body)

    parts = line.split()
    if len(parts) != 3:
        raise SipParseError(f"bad request line {line[:80]!r}")
    method, uri, version = parts
    if not is_token(method):
        raise SipParseError(f"bad method {method[:40]!r}")
    if not _SCHEME.match(uri) or any(c in uri for c in '<>"') or not uri.isprintable():
        raise SipParseError(f"bad Request-URI {uri[:80]!r}")
    if version != "SIP/2.0":
        if re.fullmatch(r"SIP/\d+\.\d+", version):
            if not strict:
                return Request(method, uri, headers, body, version)
            raise SipVersionError(f"unsupported version {version!r}")
        raise SipParseError(f"bad version {version[:20]!r}")
    return Request(method, uri, headers, body)


def _check_structure(msg: Request | Response) -> None:
    """Grammar checks on the headers every element must be able to read."""
    for value in msg.headers.get_all("CSeq"):
        _, method = parse_cseq(value)
        if isinstance(msg, Request) and method != msg.method:
            raise SipParseError(f"CSeq method {method!r} differs from {msg.method!r}")
    parse_vias(msg.headers.get_all("Via"))
    for name in ("From", "To"):
        for value in msg.headers.get_all(name):
            parse_address(value)
    for value in msg.headers.get_all("Max-Forwards"):
        if not _DIGITS.match(value):
            raise SipParseError(f"bad Max-Forwards {value!r}")


SINGLETON_HEADERS = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length")
SUPPORTED_SCHEMES = ("sip", "sips", "tel")


def request_problem(req: Request) -> tuple[int, str] | None:
    """The response a UAS should send instead of processing ``req``, or ``None`` if fine.

    Covers the RFC 3261 §8.2 checks that are a UA decision rather than grammar: mandatory
    headers present and single, a URI scheme we serve (416).
    """
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if name not in req.headers:
            return 400, f"Missing {name}"
    for name in SINGLETON_HEADERS:
        values = req.headers.get_all(name)
        if len(values) > 1 and len(set(values)) > 1:
            return 400, f"Conflicting {name} headers"
    scheme = req.uri.split(":", 1)[0].lower()
    if scheme not in SUPPORTED_SCHEMES:
        return 416, "Unsupported URI Scheme"
    return None


class StreamFramer:
    """Cut a byte stream (TCP) into whole SIP messages using Content-Length.

    ``feed`` returns complete message byte strings; a CRLF keep-alive between messages is
    counted in ``pings`` (RFC 5626 §3.5.1: answer each "\\r\\n\\r\\n" with "\\r\\n"), a lone
    CRLF (the pong to our ping) in ``pongs``; ``pending`` says a message is half-read.
    Raises :class:`SipParseError` when the stream cannot be framed (the caller closes it).
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self.max_size = max_size
        self.pings = 0
        self.pongs = 0

    @property
    def pending(self) -> bool:
        """Bytes of an incomplete message are buffered."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            while self._buf[:2] == b"\r\n":
                if self._buf[:4] == b"\r\n\r\n":
                    self.pings += 1
                    del self._buf[:4]
                else:
                    self.pongs += 1
                    del self._buf[:2]
            if not self._buf:
                return out
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self.max_size:
                    raise SipParseError("header section too large")
                return out
            head = bytes(self._buf[:end])
            m = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*([0-9]+)[ \t]*$", head)
            if m is None:
                raise SipParseError("Content-Length is mandatory on a stream transport")
            total = end + 4 + int(m.group(1))
            if total > self.max_size:
                raise SipParseError(f"message larger than {self.max_size} bytes")
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]


# ---------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------


def make_response(
    req: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``req`` per RFC 3261 §8.2.6.2: Via, From, To, Call-ID, CSeq copied;
    ``to_tag`` added to To when it has none; Record-Route copied for 18x/2xx."""
    headers = Headers()
    for name in ("Via",):
        for v in req.headers.get_all(name):
            headers.add(name, v)
    headers.add("From", req.headers.get("From") or "")
    to = req.headers.get("To") or ""
    if to_tag and status != 100:
        try:
            if parse_address(to).tag is None:
                to = f"{to};tag={to_tag}"
        except SipParseError:
            pass
    headers.add("To", to)
    headers.add("Call-ID", req.call_id)
    headers.add("CSeq", req.headers.get("CSeq") or "")
    if 100 < status < 300:
        for v in req.headers.get_all("Record-Route"):
            headers.add("Record-Route", v)
    for name, value in extra:
        headers.add(name, value)
    return Response(status, reason, headers, body)
