"""The egress policy's pure parts: address classification, host spellings, rules, URL checks.

No test here sends traffic anywhere: addresses are ``ipaddress`` objects or strings handed to
pure functions, and URL checks run with an injected resolver (never the system's) for names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.settings import IngestSettings
from livestream.egress import (
    EgressPolicy,
    EgressRefusedError,
    InvalidSourceURLError,
    IPAddress,
    check_source_url,
    classify_address,
    is_forbidden,
    literal_address,
)
from livestream.errors import ConfigurationError
from livestream.redact import redact_url

ip = ipaddress.ip_address
REFUSING = EgressPolicy.build(allow_private=False)


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "special-purpose"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%2", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("2001:db8::1", "special-purpose"),
        # IPv4 hidden in IPv6: judged by the IPv4 address it stands for.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),
        ("2002:a00:1::1", "private"),
        ("64:ff9b::127.0.0.1", "loopback"),
        ("64:ff9b::10.0.0.1", "private"),
        ("64:ff9b:1::a9fe:a9fe", "link-local"),
    ],
)
def test_non_public_addresses_are_classified(address: str, category: str) -> None:
    assert classify_address(ip(address)) == category
    assert is_forbidden(ip(address))


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::"],
)
def test_public_addresses_pass(address: str) -> None:
    assert classify_address(ip(address)) is None


@pytest.mark.parametrize(
    "spelling",
    [
        "127.0.0.1",
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0X7F.0.0.1",
        "0177.0.0.1",
        "0x7f.1",
        "[::ffff:127.0.0.1]",
    ],
)
def test_ip_literal_spellings_are_read_as_getaddrinfo_reads_them(spelling: str) -> None:
    expected = ip("::ffff:127.0.0.1") if "::" in spelling else ip("127.0.0.1")
    assert literal_address(spelling) == expected
    assert is_forbidden(expected)


@pytest.mark.parametrize("host", ["example.com", "1.2.3.4.5", "256.1.1.1", "127.0.0.1a", "08.1.1.1"])
def test_names_are_not_literals(host: str) -> None:
    assert literal_address(host) is None


def _spell(value: int, style: str) -> str:
    octets = value.to_bytes(4, "big")
    if style == "decimal":
        return str(value)
    if style == "hex":
        return hex(value)
    if style == "octal":
        return ".".join("0" + format(octet, "o") for octet in octets)
    if style == "short":  # a.b.c with the last part 16 bits wide
        return f"{octets[0]}.{octets[1]}.{int.from_bytes(octets[2:], 'big')}"
    return ".".join(str(octet) for octet in octets)


FORBIDDEN_V4 = [
    ipaddress.ip_network(net)
    for net in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
    )
]


@settings(max_examples=300, deadline=None)
@given(
    network=st.sampled_from(FORBIDDEN_V4),
    offset=st.integers(min_value=0, max_value=2**32),
    style=st.sampled_from(["decimal", "hex", "octal", "short", "dotted"]),
    trailing_dot=st.booleans(),
    upper=st.booleans(),
)
def test_every_spelling_of_a_forbidden_address_is_refused(
    network: ipaddress.IPv4Network, offset: int, style: str, trailing_dot: bool, upper: bool
) -> None:
    address = network.network_address + offset % network.num_addresses
    spelling = _spell(int(address), style) + ("." if trailing_dot else "")
    spelling = spelling.upper() if upper else spelling
    assert literal_address(spelling) == address
    with pytest.raises(EgressRefusedError):
        REFUSING.check_host(spelling)


class FakeResolver:
    """Answers from a table; fails the test if asked about anything else (no real DNS)."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        assert host in self.table, f"unexpected resolution of {host!r}"
        return [ip(answer) for answer in self.table[host]]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/live.m3u8",
        "http://127.1/live.m3u8",
        "http://2130706433/live.m3u8",
        "http://0x7f000001/live.m3u8",
        "http://localhost/live.m3u8",
        "http://LOCALHOST./live.m3u8",
        "http://cam.localhost/live.m3u8",
        "http://[::1]:8080/live.m3u8",
        "http://[::ffff:127.0.0.1]/live.m3u8",
        "http://[::ffff:7f00:1]/live.m3u8",
        "http://good.example@127.0.0.1/live.m3u8",
        "http://good.example:pw@127.0.0.1:80/live.m3u8",
        "http://0.0.0.0/",
        "http://0/",
        "http://127。0。0。1/",  # ideographic full stops: IDNA maps them to dots
    ],
)
async def test_api_check_refuses_local_sources_in_any_spelling(url: str) -> None:
    resolver = FakeResolver({})
    with pytest.raises(EgressRefusedError) as refused:
        await check_source_url(url, REFUSING, resolver)
    assert "egress policy" in str(refused.value)
    assert resolver.asked == []  # literals and localhost names are judged without any resolution


async def test_names_are_judged_by_every_address_they_resolve_to() -> None:
    resolver = FakeResolver({"cam.example": ["93.184.216.34", "10.0.0.7"], "pub.example": ["8.8.8.8"]})
    with pytest.raises(EgressRefusedError, match=r"private address \(10\.0\.0\.7\)"):
        await check_source_url("http://cam.example/live.m3u8", REFUSING, resolver)
    await check_source_url("https://pub.example/live.m3u8", REFUSING, resolver)
    await check_source_url("https://xn--bcher-kva.example/live.m3u8", EgressPolicy.build(allow_private=True))


async def test_idna_hosts_are_resolved_in_their_ascii_form() -> None:
    resolver = FakeResolver({"xn--bcher-kva.example": ["127.0.0.1"]})
    with pytest.raises(EgressRefusedError, match="loopback"):
        await check_source_url("http://bücher.example/live.m3u8", REFUSING, resolver)
    assert resolver.asked == ["xn--bcher-kva.example"]


def test_refusal_reason_is_readable() -> None:
    with pytest.raises(EgressRefusedError) as refused:
        REFUSING.check_addresses("cam.example", [ip("127.0.0.1")])
    assert str(refused.value) == (
        "source resolves to a loopback address (127.0.0.1), refused by the egress policy; "
        "set LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES=true to allow local sources"
    )
    with pytest.raises(EgressRefusedError, match=r"::ffff:7f00:1, IPv4-mapped 127\.0\.0\.1"):
        REFUSING.check_addresses("cam.example", [ip("::ffff:127.0.0.1")])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://cam.example/live.m3u8",
        "http:///live.m3u8",
        "not a url",
        "http://0177.0.0.1/",
        "http://%31%32%37.0.0.1/",
    ],
)
async def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises((InvalidSourceURLError, EgressRefusedError)):
        await check_source_url(url, REFUSING, FakeResolver({}))


def test_allow_list_admits_only_what_it_matches_even_private() -> None:
    policy = EgressPolicy.build(allow_private=False, allow=["10.1.0.0/16", "cams.example", "*.cdn.example"])
    policy.check_addresses("cam", [ip("10.1.2.3")])
    policy.check_addresses("cams.example", [ip("192.168.0.1")])  # an allowed name, whatever it resolves to
    policy.check_addresses("a.b.cdn.example", [ip("8.8.8.8")])
    with pytest.raises(EgressRefusedError, match="allow list"):
        policy.check_addresses("cam", [ip("10.1.2.3"), ip("10.2.0.1")])  # every address must match
    with pytest.raises(EgressRefusedError, match="allow list"):
        policy.check_addresses("pub.example", [ip("8.8.8.8")])
    with pytest.raises(EgressRefusedError, match="allow list"):
        policy.check_addresses("cdn.example", [ip("8.8.8.8")])  # *.cdn.example: subdomains only


def test_deny_list_wins() -> None:
    policy = EgressPolicy.build(
        allow_private=True, allow=["10.0.0.0/8", "cams.example"], deny=["10.9.0.0/16", "cams.example"]
    )
    policy.check_addresses("cam", [ip("10.1.0.1")])
    with pytest.raises(EgressRefusedError, match="deny list"):
        policy.check_addresses("cam", [ip("10.9.0.1")])
    with pytest.raises(EgressRefusedError, match="deny list"):
        policy.check_host("CAMS.example.")
    with pytest.raises(EgressRefusedError, match="deny list"):  # mapped forms match v4 rules too
        policy.check_addresses("cam", [ip("::ffff:10.9.0.1")])


def test_allow_private_admits_local_addresses() -> None:
    policy = EgressPolicy.build(allow_private=True)
    policy.check_host("localhost")
    policy.check_addresses("localhost", [ip("127.0.0.1"), ip("::1")])
    assert policy.unrestricted


def test_settings_read_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES", "false")
    monkeypatch.setenv("LIVESTREAM_INGEST_SOURCE_ALLOW", "10.0.0.0/8, cams.example")
    monkeypatch.setenv("LIVESTREAM_INGEST_SOURCE_DENY", "10.9.0.0/16")
    settings = IngestSettings()
    assert settings.source_allow == ("10.0.0.0/8", "cams.example")
    policy = EgressPolicy.from_settings(settings)
    assert not policy.allow_private
    assert policy.allow.matches_address(ip("10.2.3.4"))
    assert policy.deny.matches_address(ip("10.9.3.4"))


def test_default_policy_refuses_private_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVESTREAM_INGEST_ALLOW_PRIVATE_SOURCES", raising=False)
    assert IngestSettings().allow_private_sources is False


def test_bad_rule_entries_fail_at_startup() -> None:
    with pytest.raises(ConfigurationError):
        EgressPolicy.build(allow_private=False, allow=["http://cam/"])
    with pytest.raises(ValueError):
        IngestSettings(source_deny="10.0.0.0/8,user@host")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pass@cam.example/live.m3u8", "https://***@cam.example/live.m3u8"),
        ("https://cam.example/live.m3u8?token=abc&x=1", "https://cam.example/live.m3u8?token=***&x=1"),
        (
            "https://cdn.example/a.m3u8?X-Amz-Signature=s1&X-Amz-Credential=c1&hdnts=h1&api_key=k1&Password=p1",
            "https://cdn.example/a.m3u8?X-Amz-Signature=***&X-Amz-Credential=***&hdnts=***&api_key=***&Password=***",
        ),
        ("http://[::1]:8080/live.m3u8", "http://[::1]:8080/live.m3u8"),
        ("http://cam.example/live.m3u8", "http://cam.example/live.m3u8"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_never_raises_or_leaks() -> None:
    assert redact_url("http://[::1/x?token=secret") == "<unparseable URL>"
    assert "secret" not in redact_url("https://a:secret@b@host/?sig=secret")
