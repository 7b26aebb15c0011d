#!/usr/bin/env bash
# Run bench/bench_gpu.py on a lent GPU machine (the `device` tool's machine: CUDA and torch, but
# no onnxruntime-gpu, no onnx package, no models, no network). What it needs travels in parts of
# at most 56 MB over consecutive calls while the machine stays warm (it is released 30 s after a
# call); parts wait in a temporary folder there that outlives each call.
#
#   here:    bench/gpu.sh bundle parts/                  # bench_gpu.py prepare + split into parts/
#            bench/gpu.sh split onnxruntime_gpu-1.31.1-*.whl parts/
#   device:  bench/gpu.sh receive parts/<some parts>     # one call per <= 56 MB, while warm
#   device:  bench/gpu.sh run [bench_gpu.py run args]    # assemble, check sha256, pip --target, measure
#
# Every wheel sent is installed (--no-deps) into the stage's site folder: onnxruntime-gpu needs
# numpy, so where the device's python has none (`python3 -c 'import numpy'` fails there), split
# and send a numpy wheel for its Python too (`pip download numpy --only-binary :all:
# --python-version 3.X --platform manylinux_2_28_x86_64 --no-deps`). PYTHON picks the interpreter.
set -euo pipefail

STAGE="${GPU_STAGE_DIR:-/tmp/livestream-gpu}"
PYTHON="${PYTHON:-python3}"
PART_BYTES=$((56 * 1000 * 1000))

split_file() {  # FILE DIR: parts FILE.part-01.. in DIR, its sha256 appended to DIR/SHA256SUMS
  local file="$1" out="$2"
  mkdir -p "$out"
  split --bytes="$PART_BYTES" --numeric-suffixes=1 --suffix-length=2 "$file" "$out/$(basename "$file").part-"
  (cd "$(dirname "$file")" && sha256sum "$(basename "$file")") >> "$out/SHA256SUMS"
}

case "${1:-}" in
  bundle)
    out="$2"
    bundle="$(mktemp -d)"
    .venv/bin/python bench/bench_gpu.py prepare "$bundle"
    for file in "$bundle"/*; do split_file "$file" "$out"; done
    ls -l "$out"
    ;;
  split)
    split_file "$2" "$3"
    ls -l "$3"
    ;;
  receive)
    mkdir -p "$STAGE"
    for part in "${@:2}"; do cp "$part" "$STAGE/"; done
    ls -l "$STAGE"
    ;;
  run)
    shift
    cd_back="$PWD"
    cd "$STAGE"
    [ -f SHA256SUMS ] || { echo "no SHA256SUMS in $STAGE: send it with the parts" >&2; exit 2; }
    while read -r _ name; do
      [ -f "$name" ] || cat "$name".part-* > "$name"
    done < SHA256SUMS
    sha256sum --check SHA256SUMS
    mkdir -p bundle
    for name in network.onnx anchors.npy frames.npy; do mv -f "$name" bundle/ 2>/dev/null || true; done
    for wheel in *.whl; do
      [ -f "$wheel" ] || continue
      [ -f "site/.installed-$wheel" ] && continue
      # Offline, as the device is: no index, no version check.
      "$PYTHON" -m pip install --quiet --no-deps --no-index --disable-pip-version-check --target site "$wheel"
      touch "site/.installed-$wheel"
    done
    cd "$cd_back"
    PYTHONPATH="$STAGE/site:$PWD" "$PYTHON" bench/bench_gpu.py run "$STAGE/bundle" "$@"
    ;;
  *)
    echo "usage: bench/gpu.sh bundle DIR | split FILE DIR | receive PART... | run [args]" >&2
    exit 2
    ;;
esac
