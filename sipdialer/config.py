"""The service configuration: an INI file (``sip.conf``) read into typed, validated dataclasses.

Owns every key and its default; ``sip.conf.example`` documents the same keys. A bad value
or an unknown key raises :class:`ConfigError` naming the section and key, so a typo is
found at start-up rather than on the first call.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipdialer.errors import SipdialerError

HostPort = tuple[str, int]

_EXTENSION = re.compile(r"[0-9]{3,4}\Z")


class ConfigError(SipdialerError, ValueError):
    """An invalid configuration file; the message names the section and key."""


#: A host (DNS name or IP) and a port, or None when the port was not given (then the
#: host is resolved per RFC 3263: NAPTR, SRV, then A/AAAA on the transport's default port).
NextHop = tuple[str, int | None]

DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


@dataclass(frozen=True)
class TrunkConfig:
    registrar: NextHop | None = None
    domain: str = ""
    username: str = ""
    password: str = ""
    transport: str = "udp"
    expires: int = 300
    register: bool = True
    ca_file: str = ""
    """TLS: verify the trunk against these CAs only (PEM); empty = the system's CAs."""
    outbound_proxy: NextHop | None = None
    """Every request to the trunk goes here first (a Route header names it, RFC 3261
    §8.1.2); resolved like the registrar."""
    keepalive: float = 25.0
    """Seconds between keep-alives to the trunk: CRLF on TCP/TLS flows (RFC 5626
    §3.5.1), OPTIONS over UDP (NAT bindings); 0 turns them off."""
    srtp: str = "no"
    """Media encryption on trunk legs (SDES-SRTP): ``no``, ``optional`` (encrypt when the
    far end agrees) or ``required`` (see :mod:`sipdialer.sip.sdes`)."""

    @property
    def next_hop(self) -> NextHop | None:
        """Where requests to the trunk are sent: the outbound proxy, else the registrar."""
        return self.outbound_proxy or self.registrar

    @property
    def label(self) -> str:
        """``host[:port]/transport`` of the registrar, for logs and health."""
        if self.registrar is None:
            return ""
        host, port = self.registrar
        return f"{host}{'' if port is None else f':{port}'}/{self.transport}"


@dataclass(frozen=True)
class SipConfig:
    listen: HostPort = ("127.0.0.1", 5060)
    public_host: str = ""
    rtp_ports: tuple[int, int] = (20000, 29999)
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    user_agent: str = "sipdialer"
    tls_listen: HostPort | None = None
    """Accept SIP over TLS here (phones or trunks that connect in); needs tls_cert, tls_key."""
    tls_cert: str = ""
    tls_key: str = ""
    nameservers: tuple[HostPort, ...] = ()  # DNS servers (IP, port); () = the system's

    @property
    def advertised_host(self) -> str:
        return self.public_host or self.listen[0]


@dataclass(frozen=True)
class HttpConfig:
    listen: HostPort = ("127.0.0.1", 8080)
    public_url: str = ""
    api_tokens: tuple[str, ...] = ()
    max_body_bytes: int = 16384

    def base_url(self, bound_port: int | None = None, fallback_host: str = "") -> str:
        """``public_url``, or ``http://HOST:PORT`` of the listen address when it is empty.

        ``bound_port`` replaces a listen port of 0 (the port really bound); a wildcard
        listen host (0.0.0.0, ::) is replaced by ``fallback_host`` when given.
        """
        if self.public_url:
            return self.public_url
        host, port = self.listen
        if host in ("0.0.0.0", "::", "") and fallback_host:
            host = fallback_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{bound_port if bound_port else port}"


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "enigma"
    legacy_c2d: bool = True
    outbox: str = "outbox"
    health_grace: float = 60.0


@dataclass(frozen=True)
class CallsConfig:
    agent_ring_timeout: float = 30.0
    callee_ring_timeout: float = 45.0
    max_duration: float = 4 * 3600.0
    rtp_timeout: float = 60.0
    agent_caller_id: str = "callee"
    max_concurrent: int = 100
    unregistered_extension: str = "fail"


@dataclass(frozen=True)
class RegistrarConfig:
    realm: str = "sipdialer"
    algorithms: tuple[str, ...] = ("MD5",)
    """Digest challenges offered, in this order. MD5 only by default: baresip 1.0 (libre
    1.x, Debian's) gives up on a response that holds *any* SHA-256 challenge, even beside
    an MD5 one; SHA-256 is offered globally (``sha-256, md5``) or to one extension's phone
    (``[extension_algorithms]``) where the phones can take it."""
    store: str = "state/bindings.json"
    srtp: str = "no"
    """Media encryption on legs to registered phones: ``no``, ``optional``, ``required``
    (per phone: ``[extension_srtp]``)."""
    min_expires: int = 60
    max_expires: int = 3600


@dataclass(frozen=True)
class RecordingConfig:
    directory: str = "recordings"
    enabled: bool = True
    retention_days: float = 0.0


@dataclass(frozen=True)
class MediaConfig:
    #: Media worker processes (``sipdialer.rtp.pool``) that relay and record the calls;
    #: 0: the relay runs in the service's own process. ``auto`` (the default) is the
    #: number of CPUs this process may run on, fewer if ``[sip] rtp_ports`` is too small
    #: to give each worker two even ports.
    workers: int = 0


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class Config:
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    sip: SipConfig = field(default_factory=SipConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    calls: CallsConfig = field(default_factory=CallsConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    log: LogConfig = field(default_factory=LogConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    registrar: RegistrarConfig = field(default_factory=RegistrarConfig)
    extensions: dict[str, str] = field(default_factory=dict)
    extension_algorithms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per extension, the digest algorithms its phone is challenged with (overrides
    ``[registrar] algorithms``)."""
    extension_srtp: dict[str, str] = field(default_factory=dict)
    """Per extension, the media encryption of its legs (overrides ``[registrar] srtp``)."""

    def srtp_for_extension(self, extension: str) -> str:
        """``no``/``optional``/``required``: the SRTP policy of legs to this extension."""
        return self.extension_srtp.get(extension, self.registrar.srtp)


SRTP_POLICIES = ("no", "optional", "required")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


# ---- value parsers: each gets (section, key, raw text) and raises ConfigError ------------


def _where(section: str, key: str) -> str:
    return f"[{section}] {key}"


def parse_hostport(section: str, key: str, text: str, default_port: int | None = None) -> HostPort:
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\s]+)(?::(\d+))?", text)
    if not m:
        raise ConfigError(f"{_where(section, key)}: expected HOST:PORT, got {text!r}")
    host = m.group(1) or m.group(3)
    port_text = m.group(2) or m.group(4)
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"{_where(section, key)}: a port is required ({text!r})")
        return host, default_port
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{_where(section, key)}: port out of range in {text!r}")
    return host, port


def _algorithms(section: str, key: str, text: str) -> tuple[str, ...]:
    algos = tuple(dict.fromkeys(a.strip().upper() for a in text.split(",") if a.strip()))
    if not algos or any(a not in ("SHA-256", "MD5") for a in algos):
        raise ConfigError(f"{_where(section, key)}: a list of sha-256 and/or md5")
    return algos


def parse_next_hop(section: str, key: str, text: str) -> NextHop:
    """``HOST[:PORT]``: a DNS name or an IP (IPv6 in brackets); the port is optional."""
    text = text.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([A-Za-z0-9._-]+)(?::(\d+))?", text)
    if not m:
        raise ConfigError(f"{_where(section, key)}: expected HOST[:PORT], got {text!r}")
    host = m.group(1) or m.group(3)
    port_text = m.group(2) or m.group(4)
    if m.group(3) is not None and not _is_ip(host):
        labels = host.rstrip(".").split(".")
        if any(
            not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?|_[A-Za-z0-9-]+", x)
            for x in labels
        ):
            raise ConfigError(f"{_where(section, key)}: not a valid host name: {host!r}")
    if port_text is None:
        return host, None
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{_where(section, key)}: port out of range in {text!r}")
    return host, port


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _bool(section: str, key: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ConfigError(f"{_where(section, key)}: expected yes or no, got {text!r}")


def _number(section: str, key: str, text: str, *, minimum: float = 0.0) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{_where(section, key)}: expected a number, got {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{_where(section, key)}: must be at least {minimum}, got {text!r}")
    return value


def _integer(section: str, key: str, text: str, *, minimum: int, maximum: int) -> int:
    value = text.strip()
    if not re.fullmatch(r"[0-9]+", value, re.ASCII):
        raise ConfigError(f"{_where(section, key)}: expected a whole number, got {text!r}")
    number = int(value)
    if not minimum <= number <= maximum:
        raise ConfigError(f"{_where(section, key)}: must be {minimum}..{maximum}, got {text!r}")
    return number


def _port_range(section: str, key: str, text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not m:
        raise ConfigError(f"{_where(section, key)}: expected LOW-HIGH, got {text!r}")
    low, high = int(m.group(1)), int(m.group(2))
    if not 1024 <= low < high <= 65535:
        raise ConfigError(f"{_where(section, key)}: need 1024 <= LOW < HIGH <= 65535")
    return low, high


def _choice(section: str, key: str, text: str, choices: tuple[str, ...]) -> str:
    value = text.strip().lower()
    if value not in choices:
        raise ConfigError(f"{_where(section, key)}: expected one of {', '.join(choices)}")
    return value


def _plain(section: str, key: str, text: str) -> str:
    if any(c in text for c in "\r\n\0"):
        raise ConfigError(f"{_where(section, key)}: control characters are not allowed")
    return text.strip()


_KEYS: dict[str, tuple[str, ...]] = {
    "trunk": (
        "registrar",
        "domain",
        "username",
        "password",
        "transport",
        "expires",
        "register",
        "ca_file",
        "outbound_proxy",
        "keepalive",
        "srtp",
    ),
    "sip": (
        "listen",
        "public_host",
        "rtp_ports",
        "t1",
        "t2",
        "t4",
        "user_agent",
        "nameservers",
        "tls_listen",
        "tls_cert",
        "tls_key",
    ),
    "http": ("listen", "public_url", "api_tokens", "max_body_bytes"),
    "redis": ("url", "key_prefix", "legacy_c2d", "outbox", "health_grace"),
    "calls": (
        "agent_ring_timeout",
        "callee_ring_timeout",
        "max_duration",
        "rtp_timeout",
        "agent_caller_id",
        "max_concurrent",
        "unregistered_extension",
    ),
    "registrar": ("realm", "algorithms", "store", "srtp", "min_expires", "max_expires"),
    "recording": ("directory", "enabled", "retention_days"),
    "log": ("level",),
    "media": ("workers",),
    "extensions": (),
    "extension_algorithms": (),
    "extension_srtp": (),
}


class _CaseKeepingParser(configparser.ConfigParser):
    """Keys keep their case (configparser lower-cases them by default)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


# Each section's values are collected in a ``dict[str, Any]`` and passed to its dataclass:
# every value was produced by the parser for its key just above, with the field's type.
def parse_config(text: str, *, source: str = "<string>") -> Config:
    parser = _CaseKeepingParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for section in parser.sections():
        if section not in _KEYS:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if section in ("extensions", "extension_algorithms", "extension_srtp"):
            continue
        for key in parser[section]:
            if key not in _KEYS[section]:
                raise ConfigError(f"{source}: unknown key {_where(section, key)}")

    def get(section: str, key: str) -> str | None:
        if parser.has_section(section) and key in parser[section]:
            return parser[section][key]
        return None

    trunk = TrunkConfig()
    t: dict[str, Any] = {}
    if (v := get("trunk", "registrar")) is not None and v.strip():
        t["registrar"] = parse_next_hop("trunk", "registrar", v)
    if (v := get("trunk", "outbound_proxy")) is not None and v.strip():
        t["outbound_proxy"] = parse_next_hop("trunk", "outbound_proxy", v)
    if (v := get("trunk", "ca_file")) is not None:
        t["ca_file"] = _plain("trunk", "ca_file", v)
    if (v := get("trunk", "keepalive")) is not None:
        t["keepalive"] = _number("trunk", "keepalive", v)
    for key in ("domain", "username", "password"):
        if (v := get("trunk", key)) is not None:
            t[key] = _plain("trunk", key, v)
    if (v := get("trunk", "transport")) is not None:
        t["transport"] = _choice("trunk", "transport", v, ("udp", "tcp", "tls"))
    if (v := get("trunk", "expires")) is not None:
        t["expires"] = int(_number("trunk", "expires", v, minimum=1))
    if (v := get("trunk", "register")) is not None:
        t["register"] = _bool("trunk", "register", v)
    if (v := get("trunk", "srtp")) is not None:
        t["srtp"] = _choice("trunk", "srtp", v, SRTP_POLICIES)
    trunk = TrunkConfig(**t)
    if trunk.registrar and not trunk.domain:
        trunk = TrunkConfig(**{**t, "domain": trunk.registrar[0]})

    s: dict[str, Any] = {}
    if (v := get("sip", "listen")) is not None:
        s["listen"] = parse_hostport("sip", "listen", v, default_port=5060)
    if (v := get("sip", "public_host")) is not None:
        s["public_host"] = _plain("sip", "public_host", v)
    if (v := get("sip", "rtp_ports")) is not None:
        s["rtp_ports"] = _port_range("sip", "rtp_ports", v)
    for key in ("t1", "t2", "t4"):
        if (v := get("sip", key)) is not None:
            s[key] = _number("sip", key, v, minimum=0.001)
    if (v := get("sip", "user_agent")) is not None:
        s["user_agent"] = _plain("sip", "user_agent", v)
    if (v := get("sip", "nameservers")) is not None:
        servers: list[HostPort] = []
        for entry in filter(None, (e.strip() for e in _plain("sip", "nameservers", v).split(","))):
            bare = entry.count(":") > 1 and not entry.startswith("[")  # IPv6 without a port
            host, port = (entry, 53) if bare else parse_hostport("sip", "nameservers", entry, 53)
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(
                    f"[sip] nameservers: expected IP[:PORT] (an IP address, not a name), "
                    f"got {entry!r}"
                ) from None
            if port == 0:
                raise ConfigError(f"[sip] nameservers: port 0 in {entry!r}")
            servers.append((str(address), port))
        s["nameservers"] = tuple(servers)
    if (v := get("sip", "tls_listen")) is not None and v.strip():
        s["tls_listen"] = parse_hostport("sip", "tls_listen", v, default_port=5061)
    for key in ("tls_cert", "tls_key"):
        if (v := get("sip", key)) is not None:
            s[key] = _plain("sip", key, v)
    if "tls_listen" in s and not (s.get("tls_cert") and s.get("tls_key")):
        raise ConfigError("[sip] tls_cert: tls_listen needs tls_cert and tls_key (PEM files)")
    listen: HostPort = s.get("listen", SipConfig.listen)
    listen_host = listen[0]
    public = s.get("public_host", "")
    if listen_host in ("0.0.0.0", "::") and not public:
        # Via, Contact and SDP would advertise an address nobody can send to
        raise ConfigError(
            "[sip] public_host: required when [sip] listen is a wildcard address "
            "(the address peers must send SIP and RTP to)"
        )
    if public:
        try:
            ipaddress.ip_address(str(public))
        except ValueError:
            raise ConfigError("[sip] public_host: must be an IP address") from None

    h: dict[str, Any] = {}
    if (v := get("http", "listen")) is not None:
        h["listen"] = parse_hostport("http", "listen", v, default_port=8080)
    if (v := get("http", "public_url")) is not None:
        url = _plain("http", "public_url", v).rstrip("/")
        if url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
            raise ConfigError(
                f"[http] public_url: expected http(s)://HOST[:PORT][/PATH], got {v!r}"
            )
        h["public_url"] = url
    if (v := get("http", "api_tokens")) is not None:
        tokens = tuple(x.strip() for x in _plain("http", "api_tokens", v).split(",") if x.strip())
        for token in tokens:
            if not re.fullmatch(r"[\x21-\x7e]+", token):
                raise ConfigError("[http] api_tokens: printable ASCII without spaces only")
        h["api_tokens"] = tokens
    if (v := get("http", "max_body_bytes")) is not None:
        h["max_body_bytes"] = _integer("http", "max_body_bytes", v, minimum=1024, maximum=2**24)

    r: dict[str, Any] = {}
    if (v := get("redis", "url")) is not None:
        r["url"] = _plain("redis", "url", v)
    if (v := get("redis", "key_prefix")) is not None:
        prefix = _plain("redis", "key_prefix", v)
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", prefix):
            raise ConfigError("[redis] key_prefix: letters, digits and _.:- only")
        r["key_prefix"] = prefix
    if (v := get("redis", "legacy_c2d")) is not None:
        r["legacy_c2d"] = _bool("redis", "legacy_c2d", v)
    if (v := get("redis", "outbox")) is not None:
        r["outbox"] = _plain("redis", "outbox", v)
    if (v := get("redis", "health_grace")) is not None:
        r["health_grace"] = _number("redis", "health_grace", v)

    c: dict[str, Any] = {
        key: _number("calls", key, v, minimum=1)
        for key in _KEYS["calls"]
        if key not in ("agent_caller_id", "max_concurrent", "unregistered_extension")
        and (v := get("calls", key)) is not None
    }
    if (v := get("calls", "max_concurrent")) is not None:
        c["max_concurrent"] = _integer("calls", "max_concurrent", v, minimum=1, maximum=100000)
    if (v := get("calls", "agent_caller_id")) is not None:
        c["agent_caller_id"] = _choice("calls", "agent_caller_id", v, ("callee", "outbound_id"))
    if (v := get("calls", "unregistered_extension")) is not None:
        c["unregistered_extension"] = _choice(
            "calls", "unregistered_extension", v, ("fail", "trunk")
        )

    g: dict[str, Any] = {}
    if (v := get("registrar", "realm")) is not None:
        realm = _plain("registrar", "realm", v)
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,64}", realm):
            raise ConfigError("[registrar] realm: letters, digits, '.' and '-' only")
        g["realm"] = realm
    if (v := get("registrar", "algorithms")) is not None:
        g["algorithms"] = _algorithms("registrar", "algorithms", v)
    if (v := get("registrar", "store")) is not None:
        g["store"] = _plain("registrar", "store", v)
    if (v := get("registrar", "srtp")) is not None:
        g["srtp"] = _choice("registrar", "srtp", v, SRTP_POLICIES)
    for key in ("min_expires", "max_expires"):
        if (v := get("registrar", key)) is not None:
            g[key] = _integer("registrar", key, v, minimum=1, maximum=86400)
    if int(g.get("min_expires", 60)) > int(g.get("max_expires", 3600)):
        raise ConfigError("[registrar] min_expires: must not exceed max_expires")

    rec: dict[str, Any] = {}
    if (v := get("recording", "directory")) is not None:
        rec["directory"] = _plain("recording", "directory", v)
    if (v := get("recording", "enabled")) is not None:
        rec["enabled"] = _bool("recording", "enabled", v)
    if (v := get("recording", "retention_days")) is not None:
        rec["retention_days"] = _number("recording", "retention_days", v)

    lg: dict[str, Any] = {}
    if (v := get("log", "level")) is not None:
        lg["level"] = _choice("log", "level", v, ("debug", "info", "warning", "error")).upper()

    media: dict[str, Any] = {}
    low, high = s.get("rtp_ports", SipConfig.rtp_ports)
    evens = (high - (low + (low & 1))) // 2 + 1
    v = get("media", "workers")
    if v is None or v.strip().lower() == "auto":
        media["workers"] = min(usable_cpus(), evens // 2, 64)
    else:
        media["workers"] = _integer("media", "workers", v, minimum=0, maximum=64)
        if media["workers"] > evens // 2:
            raise ConfigError(
                f"[media] workers: {media['workers']} workers need at least two even ports "
                f"each, [sip] rtp_ports {low}-{high} has {evens}"
            )

    extensions: dict[str, str] = {}
    if parser.has_section("extensions"):
        for ext, password in parser["extensions"].items():
            if not _EXTENSION.match(ext):
                raise ConfigError(f"[extensions] {ext}: an extension is 3 or 4 digits")
            if not password.strip():
                raise ConfigError(f"[extensions] {ext}: the password must not be empty")
            extensions[ext] = _plain("extensions", ext, password)

    extension_algorithms: dict[str, tuple[str, ...]] = {}
    if parser.has_section("extension_algorithms"):
        for ext, value in parser["extension_algorithms"].items():
            if ext not in extensions:
                raise ConfigError(f"[extension_algorithms] {ext}: not an extension of [extensions]")
            extension_algorithms[ext] = _algorithms("extension_algorithms", ext, value)

    extension_srtp: dict[str, str] = {}
    if parser.has_section("extension_srtp"):
        for ext, value in parser["extension_srtp"].items():
            if ext not in extensions:
                raise ConfigError(f"[extension_srtp] {ext}: not an extension of [extensions]")
            extension_srtp[ext] = _choice("extension_srtp", ext, value, SRTP_POLICIES)

    return Config(
        trunk=trunk,
        sip=SipConfig(**s),
        http=HttpConfig(**h),
        redis=RedisConfig(**r),
        calls=CallsConfig(**c),
        recording=RecordingConfig(**rec),
        log=LogConfig(**lg),
        media=MediaConfig(**media),
        registrar=RegistrarConfig(**g),
        extensions=extensions,
        extension_algorithms=extension_algorithms,
        extension_srtp=extension_srtp,
    )


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_config(text, source=str(path))
