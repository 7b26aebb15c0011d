"""CPU a request of ingest's HTTP client, against the client it replaced.

A loopback HLS origin in a process of its own (a raw asyncio HTTP/1.1 server with keep-alive)
serves a live playlist (6 segments, ~200 bytes) and a 250 KB segment (what a 2 s 720p segment
of the test source weighs). Concurrent "sessions" (``--sessions``, default 12) each alternate a
playlist reload and a segment download, which is what ingest does per segment of every stream.
The CPU seconds of this process (the client alone) over the requests made, the fastest of
``--passes`` passes:

* ``ingest.fetch.HttpFetcher`` (aiohttp): ingest's client with everything it does per request
  (egress-checked URL parse, limits, total deadline, capped body read);
* ``httpx.AsyncClient (before)``: the client ingest used before, httpx over httpcore and anyio,
  as plain as it gets (its egress-pinned network backend only acted at connect time, so leaving
  it out flatters it).

    python bench/bench_fetch.py [--sessions 12] [--rounds 40] [--passes 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from ingest.fetch import FetchPolicy, HttpFetcher
from livestream.egress import EgressPolicy

SEGMENT = os.urandom(250_000)
PLAYLIST = b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:100\n" + b"".join(
    b"#EXTINF:2.0,\nsegment_%06d.ts\n" % i for i in range(100, 106)
)

Get = Callable[[str], Awaitable[bytes]]


def serve(sock: socket.socket) -> None:
    """The origin: every request on a connection answered in order, kept alive."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                body = PLAYLIST if path.endswith(b".m3u8") else SEGMENT
                kind = b"application/vnd.apple.mpegurl" if body is PLAYLIST else b"video/mp2t"
                status_and_headers = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                writer.write(status_and_headers % (kind, len(body)) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, sock=sock)
        await server.serve_forever()

    asyncio.run(main())


async def measure(get: Get, base: str, sessions: int, rounds: int) -> float:
    """CPU ms of this process a request, over ``sessions`` x ``rounds`` x 2 requests."""

    async def session(index: int) -> None:
        for _ in range(rounds):
            await get(f"{base}/s{index}/live.m3u8")
            assert len(await get(f"{base}/s{index}/segment_000105.ts")) == len(SEGMENT)

    await asyncio.gather(*(get(f"{base}/s{i}/live.m3u8") for i in range(sessions)))  # connections up
    started = time.process_time()
    await asyncio.gather(*(session(i) for i in range(sessions)))
    return 1000 * (time.process_time() - started) / (sessions * rounds * 2)


async def ingest_fetcher(base: str, sessions: int, rounds: int) -> float:
    fetcher = HttpFetcher(FetchPolicy(egress=EgressPolicy.build(allow_private=True)))
    try:

        async def get(url: str) -> bytes:  # ingest names the kind of each fetch, as here
            return (await fetcher.get(url, kind="playlist" if url.endswith(".m3u8") else "segment")).content

        return await measure(get, base, sessions, rounds)
    finally:
        await fetcher.aclose()


async def httpx_client(base: str, sessions: int, rounds: int) -> float:
    async with httpx.AsyncClient(trust_env=False, headers={"Accept-Encoding": "identity"}) as client:

        async def get(url: str) -> bytes:
            response = await client.get(url)
            response.raise_for_status()
            return response.content

        return await measure(get, base, sessions, rounds)


CLIENTS = {
    "ingest.fetch.HttpFetcher (aiohttp)": ingest_fetcher,
    "httpx.AsyncClient (before)": httpx_client,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    listener = socket.create_server(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    origin = multiprocessing.get_context("spawn").Process(target=serve, args=(listener,), daemon=True)
    origin.start()
    try:
        best = {name: min(asyncio.run(client(base, args.sessions, args.rounds)) for _ in range(args.passes))
                for name, client in CLIENTS.items()}  # fmt: skip
    finally:
        origin.terminate()
        listener.close()
    rows = [{"client": name, "cpu_ms_per_request": round(ms, 3)} for name, ms in best.items()]
    for row in rows:
        print(f"{row['client']:38s} {row['cpu_ms_per_request']:.3f} ms of CPU a request")
    result = {
        "sessions": args.sessions,
        "requests_per_pass": args.sessions * args.rounds * 2,
        "segment_bytes": len(SEGMENT),
        "playlist_bytes": len(PLAYLIST),
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
