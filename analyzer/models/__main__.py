"""``python -m analyzer.models build|path|info``: build, locate or describe the ONNX models
(the detector, the sentence-embedding model and the ImageNet classifier)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from analyzer.models import ModelSettings, read_sidecar
from livestream.errors import LivestreamError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyzer.models", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the ONNX models unless verified copies are cached")
    build.add_argument("--force", action="store_true", help="rebuild even if cached models are present")
    build.add_argument(
        "--keep-venv", action="store_true", help="keep the TensorFlow and PyTorch conversion venvs"
    )
    commands.add_parser("path", help="print where the models are (or would be) stored")
    commands.add_parser("info", help="print the models' sidecars (source, sha256, signature)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ModelSettings()
    model_paths = [settings.model_path, settings.text_model_path, settings.classifier_model_path]
    if args.command == "path":
        # The detector first, alone on the first line: scripts read that line.
        print("\n".join(str(path) for path in model_paths))
        return 0
    if args.command == "info":
        missing = 0
        for path in model_paths:
            sidecar = read_sidecar(path)
            if sidecar is None:
                print(f"no model built at {path}; run `make models`", file=sys.stderr)
                missing += 1
            else:
                print(json.dumps(sidecar, indent=2))
        return 1 if missing else 0

    from analyzer.models.build import build_all  # imports numpy; keep `path` instant

    started = time.monotonic()
    try:
        results = build_all(settings, force=args.force, keep_venv=args.keep_venv)
    except LivestreamError as exc:
        logging.getLogger("analyzer.models").error("%s", exc)
        return 1
    for result in results:
        action = "built" if result.built else "cached"
        print(f"{action}: {result.model_path} ({result.seconds:.1f} s)")
    print(f"models ready in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
