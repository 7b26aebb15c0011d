"""Egress policy for source URLs: which hosts and addresses ingest may fetch from.

Anyone holding an API key chooses the URL ingest fetches, so by default a source must be on the
public internet: loopback, private, link-local, CGNAT, multicast, unspecified, reserved and
other special-purpose addresses are refused, also when written as an IPv4-mapped, IPv4-compatible,
6to4 or NAT64 IPv6 address. ``LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES=true`` lifts that (local
cameras, the test source); allow and deny lists (CIDRs and host names) refine it.

Three layers, each usable alone:

* ``classify_address``: pure, on ``ipaddress`` objects (what is wrong with an address, if anything);
* ``EgressPolicy.check_addresses``: the decision for one host and *all* its resolved addresses;
* ``resolve_checked`` / ``check_source_url``: parse, normalize, resolve (``getaddrinfo`` in a
  thread, or an injected resolver) and decide. Ingest connects to the addresses this returns
  (``ingest.fetch``), so a name that resolves differently a moment later (DNS rebinding) cannot
  slip a forbidden address past the check.

The spelling of a host does not matter: the decision is made on the addresses the host resolves
to, exactly as the connection would (``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``
and ``localhost.`` all end up as 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Protocol

import httpx
from pydantic import AfterValidator, BeforeValidator
from pydantic_settings import NoDecode

from livestream.errors import ConfigurationError, LivestreamError
from livestream.redact import redact_url

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses the host resolves to, in preference order.
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

ALLOW_PRIVATE_SETTING = "LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES"
_HINT = f"set {ALLOW_PRIVATE_SETTING}=true to allow local sources"

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_RFC1918 = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
)
_ULA = ipaddress.IPv6Network("fc00::/7")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class EgressError(LivestreamError):
    """A source URL that must not be fetched (refused by the policy, or not a usable URL)."""


class InvalidSourceURLError(EgressError):
    """A source URL that cannot be parsed into an http(s) URL with a host."""


class EgressRefusedError(EgressError):
    """A source whose host or addresses the egress policy refuses."""


# ---------------------------------------------------------------------------- classification


def _classify_v4(ip: ipaddress.IPv4Address) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _CGNAT:
        return "shared (CGNAT)"
    if ip == _BROADCAST:
        return "broadcast"
    if any(ip in net for net in _RFC1918):
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:  # documentation, benchmarking, 0/8, 192.0.0/24 ...
        return "special-purpose"
    return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if any(ip in net for net in _NAT64):
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    # "::" and "::1" are IPv6's own unspecified and loopback addresses, classified as such.
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return "IPv4-compatible", ipaddress.IPv4Address(int(ip))
    return None


def classify_address(ip: IPAddress) -> str | None:
    """What makes ``ip`` a non-public address ("loopback", "private"...), or None for a public one."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _classify_v4(ip)
    if ip.scope_id:  # fe80::1%eth0: an interface-scoped address is local by definition
        return "link-local"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    embedded = embedded_ipv4(ip)
    if embedded is not None:
        return _classify_v4(embedded[1])
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _ULA:
        return "private"
    if ip.is_site_local:
        return "site-local"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:  # documentation, Teredo, ORCHID, benchmarking ...
        return "special-purpose"
    return None


def _shown(ip: IPAddress) -> str:
    """``ip`` as a reason shows it: with the IPv4 address an IPv6 form embeds, if any."""
    if isinstance(ip, ipaddress.IPv6Address) and (embedded := embedded_ipv4(ip)) is not None:
        form, v4 = embedded
        return f"{ip}, {form} {v4}"
    return str(ip)


def is_forbidden(ip: IPAddress) -> bool:
    """True for every address a source may not have while private sources are refused."""
    return classify_address(ip) is not None


# ---------------------------------------------------------------------------- host spellings


def _parse_ipv4_part(part: str) -> int | None:
    """One part of a classic ``inet_aton`` address: decimal, ``0x`` hex or leading-zero octal."""
    try:
        if part[:2].lower() == "0x":
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10) if part.isdigit() else None
    except ValueError:
        return None


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """The address ``inet_aton`` (hence ``getaddrinfo``) makes of ``host``: 127.1, 2130706433, 0x7f.1..."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or any(not part for part in parts):
        return None
    values = [_parse_ipv4_part(part) for part in parts]
    if any(value is None for value in values):
        return None
    numbers = [value for value in values if value is not None]
    *leading, last = numbers
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    total = 0
    for value in leading:
        total = (total << 8) | value
    return ipaddress.IPv4Address((total << (8 * (5 - len(numbers)))) | last)


_HOST_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")


def normalize_host(host: str) -> str:
    """Lower case, IDNA (ASCII) form, no brackets, no trailing dot: the form rules are matched on."""
    text = host.strip().strip("[]").rstrip(".").lower()
    if not text.isascii():
        try:
            text = httpx.URL(f"http://{text}/").raw_host.decode("ascii")
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise InvalidSourceURLError(f"host {host!r} is not a valid host name") from exc
    if ":" in text:  # an IPv6 literal (the only hosts with colons)
        try:
            ipaddress.IPv6Address(text)
        except ValueError as exc:
            raise InvalidSourceURLError(f"host {host!r} is not a valid IPv6 address") from exc
    elif not text or not set(text) <= _HOST_NAME_CHARACTERS:
        # e.g. percent-encoded hosts: no resolver should be asked to make sense of them.
        raise InvalidSourceURLError(f"host {host!r} is not a valid host name")
    return text


def literal_address(host: str) -> IPAddress | None:
    """The address a host written as an IP literal (any spelling ``getaddrinfo`` accepts) stands for."""
    text = normalize_host(host)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    return _inet_aton(text)


def _is_localhost_name(host: str) -> bool:
    # RFC 6761: "localhost" and its subdomains are loopback whatever a resolver says.
    return host == "localhost" or host.endswith(".localhost")


# ---------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class HostRule:
    """``example.com`` matches that host only; ``*.example.com`` (or ``.example.com``) its subdomains."""

    name: str
    subdomains: bool

    def matches(self, host: str) -> bool:
        if self.subdomains:
            return host.endswith("." + self.name)
        return host == self.name


@dataclass(frozen=True)
class Rules:
    networks: tuple[IPNetwork, ...] = ()
    hosts: tuple[HostRule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.networks or self.hosts)

    def matches_host(self, host: str) -> bool:
        return any(rule.matches(host) for rule in self.hosts)

    def matches_address(self, ip: IPAddress) -> bool:
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (embedded := embedded_ipv4(ip)) is not None:
            candidates.append(embedded[1])
        return any(candidate in net for candidate in candidates for net in self.networks)

    @classmethod
    def parse(cls, entries: Iterable[str], setting: str = "") -> Rules:
        networks: list[IPNetwork] = []
        hosts: list[HostRule] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            subdomains = entry.startswith(("*.", "."))
            name = entry.removeprefix("*").removeprefix(".")
            try:
                name = normalize_host(name)
            except InvalidSourceURLError as exc:
                raise ConfigurationError(f"not a CIDR or host name: {entry!r}", setting=setting) from exc
            if not name or any(ch in name for ch in "/:@ *"):
                raise ConfigurationError(f"not a CIDR or host name: {entry!r}", setting=setting)
            hosts.append(HostRule(name=name, subdomains=subdomains))
        return cls(networks=tuple(networks), hosts=tuple(hosts))


class EgressSettings(Protocol):
    """What the policy reads from settings (``IngestSettings`` has these fields)."""

    @property
    def allow_private_sources(self) -> bool: ...

    @property
    def source_allow(self) -> tuple[str, ...]: ...

    @property
    def source_deny(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class EgressPolicy:
    """Which sources may be fetched. The deny list wins; an allow list, when set, admits only what it
    matches (even private addresses); otherwise every address must be public unless
    ``allow_private`` is set."""

    allow_private: bool = False
    allow: Rules = Rules()
    deny: Rules = Rules()

    @classmethod
    def build(
        cls, *, allow_private: bool, allow: Iterable[str] = (), deny: Iterable[str] = ()
    ) -> EgressPolicy:
        return cls(
            allow_private=allow_private,
            allow=Rules.parse(allow, "LIVESTREAM_INGEST_SOURCE_ALLOW"),
            deny=Rules.parse(deny, "LIVESTREAM_INGEST_SOURCE_DENY"),
        )

    @classmethod
    def from_settings(cls, settings: EgressSettings) -> EgressPolicy:
        return cls.build(
            allow_private=settings.allow_private_sources,
            allow=settings.source_allow,
            deny=settings.source_deny,
        )

    @property
    def unrestricted(self) -> bool:
        return self.allow_private and not self.allow and not self.deny

    def check_host(self, host: str) -> None:
        """The decisions that need no resolution: denied names, ``localhost``, IP literals."""
        name = normalize_host(host)
        if self.deny.matches_host(name):
            raise EgressRefusedError(f"source host {name!r} is on the deny list of the egress policy")
        if self.allow:
            if self.allow.matches_host(name):
                return
            literal = literal_address(name)
            if literal is not None:
                self.check_addresses(name, [literal])
            return  # a name not on the allow list may still resolve into an allowed network
        if not self.allow_private and _is_localhost_name(name):
            raise EgressRefusedError(
                f"source host {name!r} is a loopback name, refused by the egress policy; {_HINT}"
            )
        literal = literal_address(name)
        if literal is not None:
            self.check_addresses(name, [literal])

    def check_addresses(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """Decide on ``host`` and every address it resolved to; raise ``EgressRefusedError`` if refused."""
        name = normalize_host(host)
        if not addresses:
            raise EgressRefusedError(f"source host {name!r} resolves to no address")
        for ip in addresses:
            if self.deny.matches_address(ip):
                raise EgressRefusedError(
                    f"source host {name!r} resolves to {ip}, on the deny list of the egress policy"
                )
        if self.deny.matches_host(name):
            raise EgressRefusedError(f"source host {name!r} is on the deny list of the egress policy")
        if self.allow:
            if self.allow.matches_host(name):
                return
            outside = [ip for ip in addresses if not self.allow.matches_address(ip)]
            if outside:
                raise EgressRefusedError(
                    f"source host {name!r} resolves to {outside[0]}, not on the allow list of the "
                    "egress policy (LIVESTREAM_INGEST_SOURCE_ALLOW)"
                )
            return
        if self.allow_private:
            return
        if _is_localhost_name(name):
            raise EgressRefusedError(
                f"source host {name!r} is a loopback name, refused by the egress policy; {_HINT}"
            )
        for ip in addresses:
            category = classify_address(ip)
            if category is not None:
                article = "an" if category[0] in "aeiou" else "a"
                raise EgressRefusedError(
                    f"source resolves to {article} {category} address ({_shown(ip)}), refused by the egress "
                    f"policy; {_HINT}"
                )


# ---------------------------------------------------------------------------- settings fields


def _split_entries(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple):
        return tuple(str(part).strip() for part in value if str(part).strip())
    return value


def _validate_entries(value: tuple[str, ...]) -> tuple[str, ...]:
    try:  # fail at start-up on an entry that is neither a CIDR nor a host name
        Rules.parse(value)
    except ConfigurationError as exc:
        raise ValueError(exc.message) from exc
    return value


# An allow or deny list in settings: comma-separated CIDRs and host names in the environment.
SourceRuleList = Annotated[
    tuple[str, ...], NoDecode, BeforeValidator(_split_entries), AfterValidator(_validate_entries)
]


# ---------------------------------------------------------------------------- resolution


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """``getaddrinfo`` in a worker thread (it blocks); unique addresses in the order it gave them."""
    infos = await asyncio.to_thread(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if family == socket.AF_INET6 and sockaddr[3]:
            ip = ipaddress.IPv6Address(f"{ip}%{sockaddr[3]}")
        if ip not in addresses:
            addresses.append(ip)
    return addresses


async def resolve_checked(
    host: str, port: int, policy: EgressPolicy, resolver: Resolver = system_resolver
) -> list[IPAddress]:
    """The addresses of ``host`` once the policy admits the host and every one of them.

    IP literals (any spelling) are not resolved. ``localhost`` names refused by the policy are
    refused before any resolution. Raises ``EgressRefusedError`` or ``OSError`` (resolution).
    """
    name = normalize_host(host)
    policy.check_host(name)
    literal = literal_address(name)
    addresses = [literal] if literal is not None else list(await resolver(name, port))
    policy.check_addresses(name, addresses)
    return addresses


def parse_source_url(url: str) -> httpx.URL:
    """``url`` parsed the way ingest's HTTP client parses it; an http(s) URL with a host."""
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise InvalidSourceURLError(f"source_url is not a valid URL: {exc}", url=redact_url(url)) from exc
    if parsed.scheme not in ("http", "https"):
        raise InvalidSourceURLError("source_url must be an http:// or https:// URL", url=redact_url(url))
    if not parsed.raw_host:
        raise InvalidSourceURLError("source_url has no host", url=redact_url(url))
    return parsed


async def check_source_url(url: str, policy: EgressPolicy, resolver: Resolver = system_resolver) -> None:
    """Raise ``EgressError`` (a readable message) unless ingest may fetch ``url`` under ``policy``.

    The API calls this when a session starts; ingest checks again when it connects (every
    request, every redirect hop), since DNS answers can change in between.
    """
    parsed = parse_source_url(url)
    if policy.unrestricted:
        return
    host = parsed.raw_host.decode("ascii")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        await resolve_checked(host, port, policy, resolver)
    except OSError as exc:
        raise EgressRefusedError(
            f"source host {normalize_host(host)!r} cannot be resolved ({exc.strerror or exc})"
        ) from exc
