"""Pinned connections keep TLS honest: the connection goes to the checked IP, the certificate is
verified for the URL's host name. An HTTPS source on 127.0.0.2 with a certificate for
``cam.test`` from a throw-away CA (made with the ``openssl`` command); names resolve through an
injected resolver, so nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ingest.errors import FetchError
from ingest.fetch import FetchPolicy, HttpFetcher
from livestream.egress import EgressPolicy, IPAddress

HOST = "127.0.0.2"
PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n"


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certificates]:
    folder = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _openssl("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=cam.test", cwd=folder)
    (folder / "leaf.ext").write_text(
        "subjectAltName=DNS:cam.test\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "leaf.pem", "-days", "2", "-extfile", "leaf.ext",
        cwd=folder,
    )  # fmt: skip
    yield Certificates(ca=folder / "ca.pem", cert=folder / "leaf.pem", key=folder / "leaf.key")


@dataclass
class TlsSource:
    port: int
    requests: list[str]
    server_names: list[str | None]


@pytest.fixture
async def source(certificates: Certificates) -> AsyncIterator[TlsSource]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert, certificates.key)
    state = TlsSource(port=0, requests=[], server_names=[])

    def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        state.server_names.append(name)

    context.sni_callback = sni  # type: ignore[assignment]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            state.requests.append(head.split(b"\r\n")[0].decode())
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(PLAYLIST)
            )
            writer.write(PLAYLIST)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


def _fetcher(certificates: Certificates) -> HttpFetcher:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        assert host in ("cam.test", "other.test"), host
        return [ipaddress.ip_address(HOST)]

    policy = FetchPolicy(retries=0, egress=EgressPolicy.build(allow_private=False, allow=[f"{HOST}/32"]))
    return HttpFetcher(
        policy, resolver=resolver, ssl_context=ssl.create_default_context(cafile=certificates.ca)
    )


async def test_tls_is_verified_for_the_host_name_while_connecting_to_the_checked_ip(
    source: TlsSource, certificates: Certificates
) -> None:
    fetcher = _fetcher(certificates)
    try:
        fetched = await fetcher.get(f"https://cam.test:{source.port}/live.m3u8")
    finally:
        await fetcher.aclose()
    assert fetched.content == PLAYLIST
    assert source.server_names == ["cam.test"]  # SNI is the name, not the pinned IP


@pytest.mark.parametrize("host", ["other.test", HOST])
async def test_a_certificate_for_another_name_is_refused(
    source: TlsSource, certificates: Certificates, host: str
) -> None:
    fetcher = _fetcher(certificates)
    try:
        with pytest.raises(FetchError, match="TLS failed") as failed:
            await fetcher.get(f"https://{host}:{source.port}/live.m3u8")
    finally:
        await fetcher.aclose()
    assert "mismatch" in str(failed.value) or "IP address" in str(failed.value), str(failed.value)
    assert source.requests == []
