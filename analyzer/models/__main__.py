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
        # The detector first, alone on the first line: scripts read that line. The int8 variant
        # (optional: only LIVESTREAM_ANALYZER_DETECTOR_PRECISION=int8 needs it) last.
        print("\n".join(str(path) for path in [*model_paths, settings.int8_model_path]))
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
        int8 = read_sidecar(settings.int8_model_path)
        absent = f"(optional) no int8 detector at {settings.int8_model_path}"
        print(json.dumps(int8, indent=2) if int8 else absent)
        return 1 if missing else 0

    from analyzer.models.build import build_all  # imports numpy; keep `path` instant
    from analyzer.models.build_int8 import build_int8_model, calibration_available

    started = time.monotonic()
    try:
        results = build_all(settings, force=args.force, keep_venv=args.keep_venv)
        # The detector's int8 variant is quantised from the float detector built above, offline
        # (~15-40 s on 2 cores; cached, and redone when the float model changes).
        if calibration_available():
            results.append(build_int8_model(settings, force=args.force))
        else:
            logging.getLogger("analyzer.models").warning(
                "not building the int8 detector: its calibration frames need the media extra "
                "(pip install -e '.[media]'); LIVESTREAM_ANALYZER_DETECTOR_PRECISION=int8 will not start"
            )
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
