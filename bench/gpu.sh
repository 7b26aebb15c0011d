#!/usr/bin/env bash
# Run bench/bench_gpu.py on a lent GPU machine (the `device` tool's machine: CUDA, torch, but no
# onnxruntime-gpu). The onnxruntime-gpu wheel (1.31.1, CUDA 13 build, ~256 MB) cannot travel in
# one call: split it here into parts of at most 56 MB (`bench/gpu.sh split WHEEL DIR`), send one
# part per call while the machine stays warm (each call carries its part under $PART_DIR and
# runs `bench/gpu.sh receive`, which moves it to a temporary folder that outlives the call), then
# `bench/gpu.sh run` reassembles the wheel, checks its sha256, installs it with `pip --target`
# beside this checkout and runs the benchmark with the CUDA provider. The model travels the
# same way if the machine has no `make models` cache (its ONNX file is ~66 MB: two parts).
#
#   here:    bench/gpu.sh split onnxruntime_gpu-1.31.1-...whl parts/   # writes parts/ + SHA256
#   device:  bench/gpu.sh receive parts/<part>                          # once per part, while warm
#   device:  bench/gpu.sh run [bench_gpu.py args]                       # assemble, install, measure
set -euo pipefail

STAGE="${GPU_STAGE_DIR:-/tmp/livestream-gpu}"
PART_BYTES=$((56 * 1000 * 1000))

case "${1:-}" in
  split)
    wheel="$2"; out="$3"
    mkdir -p "$out"
    split --bytes="$PART_BYTES" --numeric-suffixes=1 --suffix-length=2 "$wheel" "$out/$(basename "$wheel").part-"
    (cd "$(dirname "$wheel")" && sha256sum "$(basename "$wheel")") > "$out/SHA256"
    ls -l "$out"
    ;;
  receive)
    mkdir -p "$STAGE"
    for part in "${@:2}"; do cp "$part" "$STAGE/"; done
    ls -l "$STAGE"
    ;;
  run)
    shift
    sums="$STAGE/SHA256"
    [ -f "$sums" ] || { echo "no $sums: send the SHA256 file with the parts" >&2; exit 2; }
    wheel_name="$(awk '{print $2}' "$sums")"
    cat "$STAGE/$wheel_name".part-* > "$STAGE/$wheel_name"
    (cd "$STAGE" && sha256sum --check SHA256)
    target="$STAGE/site"
    if [ ! -d "$target/onnxruntime" ]; then
      python -m pip install --quiet --no-deps --target "$target" "$STAGE/$wheel_name"
    fi
    PYTHONPATH="$target:$PWD" python bench/bench_gpu.py "$@"
    ;;
  *)
    echo "usage: bench/gpu.sh split WHEEL DIR | receive PART... | run [bench_gpu.py args]" >&2
    exit 2
    ;;
esac
