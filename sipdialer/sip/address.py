"""SIP addresses: URIs (RFC 3261 §19.1), name-addr / addr-spec with header parameters
(From, To, Contact, Route, Record-Route; §20, §25.1) and Via header values (§20.42).

Parsing is liberal where RFC 4475 lets an element be (spaces inside ``< >``, unquoted
display names with commas, escaped characters kept as received) and strict where it must
be (unbalanced quotes, empty parameters, a broken Via). Everything refused raises
:class:`~sipdialer.sip.errors.SipParseError`. Pure functions and small value objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from sipdialer.sip.errors import SipParseError

Params = dict[str, str | None]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_HOSTPORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(?::([0-9]{1,5}))?\Z")
_PARAM_NAME = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_PARAM_VALUE = re.compile(r"[^\s\";,]+\Z")
_SENT_PROTOCOL = re.compile(
    r"\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*"
    r"([A-Za-z0-9\-.!%*_+`'~]+)\s+(.*)\Z",
    re.S,
)
_VIA_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+)(?:\s*:\s*([0-9]{1,5}))?")


# ---------------------------------------------------------------------------------------
# lexical helpers
# ---------------------------------------------------------------------------------------


def scan_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted-string that opens at ``text[start]``; return (unescaped, index after)."""
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n:
                break
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise SipParseError("unterminated quoted string")


def _split_outside(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is outside quoted strings and ``< >``."""
    parts: list[str] = []
    depth = 0
    quoted = False
    cur = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == sep and depth == 0:
            parts.append(text[cur:i])
            cur = i + 1
        i += 1
    if quoted:
        raise SipParseError("unterminated quoted string")
    parts.append(text[cur:])
    return parts


def split_commas(value: str) -> list[str]:
    """The elements of a comma-separated header value, stripped (quotes and <> respected)."""
    return [p.strip() for p in _split_outside(value, ",")]


def quote(text: str) -> str:
    """``text`` as a quoted-string (backslash and double quote escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str) -> Params:
    """``;name=value;flag`` → {lower-case name: value or None}. Empty parameters refused."""
    text = text.strip()
    if not text:
        return {}
    if not text.startswith(";"):
        raise SipParseError(f"expected ';' before parameters in {text[:40]!r}")
    params: Params = {}
    for piece in _split_outside(text, ";")[1:]:
        name, eq, value = piece.partition("=")
        name = name.strip()
        if not _PARAM_NAME.match(name):
            raise SipParseError(f"bad parameter {piece.strip()[:40]!r}")
        if not eq:
            params[name.lower()] = None
            continue
        value = value.strip()
        if value.startswith('"'):
            _, end = scan_quoted(value, 0)
            if value[end:].strip():
                raise SipParseError(f"junk after quoted parameter {value[:40]!r}")
        elif not _PARAM_VALUE.match(value):
            raise SipParseError(f"bad value for parameter {name!r}")
        params[name.lower()] = value
    return params


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


# ---------------------------------------------------------------------------------------
# SIP URI
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SipUri:
    """A ``sip:`` or ``sips:`` URI. ``user`` keeps its %-escapes as received."""

    host: str
    user: str | None = None
    port: int | None = None
    scheme: str = "sip"
    password: str | None = None
    params: Params = field(default_factory=dict)
    headers: str | None = None

    def __str__(self) -> str:
        out = f"{self.scheme}:"
        if self.user is not None:
            out += self.user
            if self.password is not None:
                out += ":" + self.password
            out += "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        out += format_params(self.params)
        if self.headers is not None:
            out += "?" + self.headers
        return out

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unquote(self.user)

    @property
    def transport(self) -> str:
        return (self.params.get("transport") or "udp").lower()

    def with_params(self, **params: str | None) -> SipUri:
        merged = dict(self.params)
        merged.update(params)
        return replace(self, params=merged)


def parse_uri(text: str) -> SipUri:
    """Parse a sip/sips URI; anything else (tel:, http:, garbage) raises SipParseError."""
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise SipParseError(f"not a SIP URI: {text[:60]!r}")
    if any(c.isspace() for c in rest) or not rest:
        raise SipParseError(f"bad SIP URI {text[:60]!r}")
    user: str | None = None
    password: str | None = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        if not userinfo:
            raise SipParseError(f"empty user in {text[:60]!r}")
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
    rest, qmark, headers = rest.partition("?")
    hostport, _, param_text = rest.partition(";")
    m = _HOSTPORT.match(hostport)
    if not m:
        raise SipParseError(f"bad host in {text[:60]!r}")
    port = int(m.group(2)) if m.group(2) else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError(f"bad port in {text[:60]!r}")
    params = parse_params(";" + param_text) if param_text else {}
    return SipUri(
        host=m.group(1).lower(),
        user=user,
        port=port,
        scheme=scheme.lower(),
        password=password,
        params=params,
        headers=headers if qmark else None,
    )


# ---------------------------------------------------------------------------------------
# name-addr / addr-spec
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """``"Display" <uri>;params`` — the value of From, To, Contact, Route, Record-Route."""

    uri: str
    display: str | None = None
    params: Params = field(default_factory=dict)

    def __str__(self) -> str:
        disp = f"{quote(self.display)} " if self.display else ""
        return f"{disp}<{self.uri}>{format_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def with_tag(self, tag: str) -> Address:
        return replace(self, params={**self.params, "tag": tag})

    @property
    def sip_uri(self) -> SipUri:
        return parse_uri(self.uri)


def parse_address(value: str) -> Address:
    s = value.strip()
    if not s:
        raise SipParseError("empty address")
    display: str | None = None
    if s.startswith('"'):
        display, end = scan_quoted(s, 0)
        s = s[end:].lstrip()
        if not s.startswith("<"):
            raise SipParseError(f"expected '<' after display name in {value[:60]!r}")
        lt = 0
    else:
        lt = _name_addr_start(s)
        if lt > 0:
            display = " ".join(s[:lt].split()) or None
    if lt >= 0:
        gt = s.find(">", lt)
        if gt < 0:
            raise SipParseError(f"unbalanced '<' in {value[:60]!r}")
        uri = s[lt + 1 : gt].strip()
        rest = s[gt + 1 :]
    else:
        semi = s.find(";")
        uri, rest = (s, "") if semi < 0 else (s[:semi].strip(), s[semi:])
    if not _SCHEME.match(uri) or any(c.isspace() or c in '<>"' for c in uri):
        raise SipParseError(f"bad URI in address {value[:60]!r}")
    return Address(uri=uri, display=display, params=parse_params(rest))


def _name_addr_start(s: str) -> int:
    """Index of the '<' that opens a name-addr, or -1 for a bare addr-spec."""
    lt = s.find("<")
    if lt < 0:
        return -1
    semi = s.find(";")
    if 0 <= semi < lt:
        return -1
    return lt


# ---------------------------------------------------------------------------------------
# Via
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Via:
    """One Via element: ``SIP/2.0/UDP host:port;branch=…;rport;received=…``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = field(default_factory=dict)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        value = self.params.get("rport")
        return (
            int(value) if value and value.isascii() and value.isdigit() and len(value) < 6 else None
        )

    @property
    def wants_rport(self) -> bool:
        return "rport" in self.params

    def with_params(self, **params: str | None) -> Via:
        return replace(self, params={**self.params, **params})


def parse_via(element: str) -> Via:
    m = _SENT_PROTOCOL.match(element)
    if not m:
        raise SipParseError(f"bad Via {element[:60]!r}")
    name, version, transport, rest = m.groups()
    if name.upper() != "SIP" or version != "2.0":
        raise SipParseError(f"bad Via protocol {name}/{version}")
    h = _VIA_HOST.match(rest)
    if not h:
        raise SipParseError(f"bad Via sent-by {rest[:60]!r}")
    port = int(h.group(2)) if h.group(2) else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError(f"bad Via port {port}")
    return Via(
        transport=transport.upper(),
        host=h.group(1),
        port=port,
        params=parse_params(rest[h.end() :]),
    )


def parse_vias(lines: list[str]) -> list[Via]:
    vias: list[Via] = []
    for line in lines:
        for element in split_commas(line):
            if not element:
                raise SipParseError("empty Via element")
            vias.append(parse_via(element))
    return vias
