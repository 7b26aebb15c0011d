"""`make run`'s job: `livestream demo` on the scripted live source, as a user runs it."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from livestream.cli import iter_sse
from livestream.testsource import default_script

pytestmark = [pytest.mark.kafka, pytest.mark.model]

EVENT_LINE = re.compile(
    r"stream_time=\s*[\d.]+s\s+(?P<label>\S(?:.*?\S)?)\s+confidence=(?P<conf>[\d.]+)"
    r"\s+\(script time\s+(?P<t>[\d.]+)s\)"
)


def test_sse_parser_reads_events_comments_and_multiline_data() -> None:
    body = b': ping\n\nevent: detection\nid: e1\ndata: {"a":\ndata: 1}\n\nevent: end\ndata: {}\n\n'
    response = httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    assert list(iter_sse(response)) == [("detection", '{"a":\n1}'), ("end", "{}")]


def test_demo_prints_scripted_events_and_exits_zero_when_finished(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    env = dict(
        os.environ,
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        LIVESTREAM_TOPIC_PREFIX=f"demo{secrets.token_hex(3)}",
    )
    env.pop("LIVESTREAM_API_KEYS", None)
    done = subprocess.run(
        [sys.executable, "-m", "livestream", "--run-dir", str(tmp_path), "demo", "--query", "a cat or a cup"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"session FINISHED: chunk_count=\d+ events=\d+", done.stdout), done.stdout
    printed = [m.groupdict() for m in map(EVENT_LINE.search, done.stdout.splitlines()) if m]
    assert {p["label"] for p in printed} == {"cat", "cup"}, done.stdout
    # Each printed event starts inside a scene showing its label, give or take one chunk.
    truth = default_script().truth()
    for p in printed:
        windows = [(start, end) for label, start, end in truth if label == p["label"]]
        assert any(start - 4 <= float(p["t"]) <= end for start, end in windows), (p, windows)
