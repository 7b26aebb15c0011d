"""``python -m livestream.testsource``: serve the default (or a YAML/JSON) script as live HLS.

Prints the playlist URLs and the ground-truth table, then streams; after ``#EXT-X-ENDLIST``
it keeps serving the ended playlist until interrupted (or exits with ``--exit-when-done``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from livestream.testsource.errors import TestSourceError
from livestream.testsource.script import default_script, load_script
from livestream.testsource.server import LiveHlsSource


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m livestream.testsource", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--segment-seconds", type=float, default=2.0, help="segment duration (default: 2)")
    parser.add_argument("--fps", type=int, default=12, help="frame rate (default: 12)")
    parser.add_argument("--window", type=int, default=6, help="segments listed in the playlist (default: 6)")
    parser.add_argument("--no-realtime", action="store_true", help="publish segments as fast as encoded")
    parser.add_argument("--loop", action="store_true", help="repeat the script until interrupted")
    parser.add_argument("--script", type=Path, help="a YAML or JSON script description")
    parser.add_argument("--out-dir", type=Path, help="where segments are written (default: a temp folder)")
    parser.add_argument("--exit-when-done", action="store_true", help="exit once the stream has ended")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. from a supervisor) ends like Ctrl-C, so the temp folder is cleaned up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        script = load_script(args.script) if args.script else default_script()
        source = LiveHlsSource(
            script,
            out_dir=args.out_dir,
            segment_seconds=args.segment_seconds,
            fps=args.fps,
            window=args.window,
            realtime=not args.no_realtime,
            loop=args.loop,
            host=args.host,
            port=args.port,
        )
        source.start(wait_ready=False)
    except TestSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"media playlist:  {source.playlist_url}")
    print(f"master playlist: {source.master_url}")
    print(
        f"{script.duration:.1f} s at {source.fps} fps, {source.width}x{source.height}, "
        f"{source.segment_seconds:g} s segments" + (", looping" if args.loop else "")
    )
    print(script.truth_table())
    truth = ", ".join(f"{label} {start:g}-{end:g}s" for label, start, end in script.truth())
    print(f"truth: {truth}", flush=True)
    try:
        source.wait_finished()
        print("stream ended (#EXT-X-ENDLIST)", flush=True)
        if not args.exit_when_done:
            threading.Event().wait()  # keep serving the ended playlist until interrupted
    except KeyboardInterrupt:
        pass
    except TestSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        source.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
