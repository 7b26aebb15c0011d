"""``python -m analyzer.models build|path|info``: build, locate or describe the ONNX detector."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from analyzer.models import ModelSettings, read_sidecar
from livestream.errors import LivestreamError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analyzer.models", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the ONNX detector unless a verified copy is cached")
    build.add_argument("--force", action="store_true", help="rebuild even if a cached model is present")
    build.add_argument("--keep-venv", action="store_true", help="keep the TensorFlow conversion venv")
    commands.add_parser("path", help="print where the model is (or would be) stored")
    commands.add_parser("info", help="print the model's sidecar (source, sha256, signature)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ModelSettings()
    if args.command == "path":
        print(settings.model_path)
        return 0
    if args.command == "info":
        sidecar = read_sidecar(settings.model_path)
        if sidecar is None:
            print(f"no model built at {settings.model_path}; run `make models`", file=sys.stderr)
            return 1
        print(json.dumps(sidecar, indent=2))
        return 0

    from analyzer.models.build import build_model  # imports numpy; keep `path` instant

    try:
        result = build_model(settings, force=args.force, keep_venv=args.keep_venv)
    except LivestreamError as exc:
        logging.getLogger("analyzer.models").error("%s", exc)
        return 1
    action = "built" if result.built else "cached"
    print(f"{action}: {result.model_path} ({result.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
