"""``bench/gpu.sh``, the GPU benchmark's whole flow, rehearsed on the CPU provider.

A session lent the device has minutes, not hours, so the flow it runs there is kept working
here: the bundle cut from the built detector and split into parts, the parts received one at
a time into the stage folder, checked and reassembled, every wheel in it installed with
``pip --target`` (a small pure-Python one stands in for onnxruntime-gpu's), and ``run``
measuring both paths at two batch sizes with this interpreter's onnxruntime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from analyzer.models import default_model_path

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[1]


def stand_in_wheel(folder: Path) -> Path:
    """A minimal valid wheel: installing it proves the stage installs what it receives."""
    wheel = folder / "gpu_stand_in-1.0-py3-none-any.whl"
    info = "gpu_stand_in-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("gpu_stand_in/__init__.py", "RECEIVED = True\n")
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: gpu-stand-in\nVersion: 1.0\n")
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel


def gpu_sh(*args: str, stage: Path) -> str:
    result = subprocess.run(
        ["bash", "bench/gpu.sh", *args],
        cwd=REPO,
        env={**os.environ, "GPU_STAGE_DIR": str(stage), "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_gpu_benchmark_runs_its_device_flow_on_cpu(tmp_path: Path) -> None:
    if not default_model_path().is_file():
        pytest.fail("the detector is not built: run `make models`")
    parts, stage = tmp_path / "parts", tmp_path / "stage"
    gpu_sh("bundle", str(parts), stage=stage)
    gpu_sh("split", str(stand_in_wheel(tmp_path)), str(parts), stage=stage)
    names = sorted(path.name for path in parts.iterdir())
    assert "SHA256SUMS" in names and any(name.startswith("network.onnx.part-") for name in names)
    for name in names:  # one call per part, as on the device
        gpu_sh("receive", str(parts / name), stage=stage)
    figures = tmp_path / "figures.json"
    out = gpu_sh(
        "run", "--providers", "CPUExecutionProvider", "--batches", "1,4", "--seconds", "0.3",
        "--json", str(figures), stage=stage,
    )  # fmt: skip
    assert "network.onnx: OK" in out
    assert (stage / "site" / "gpu_stand_in" / "__init__.py").is_file()
    report = json.loads(figures.read_text())
    assert report["providers"] == ["CPUExecutionProvider"]
    assert [row["batch"] for row in report["rows"]] == [1, 4]
    for row in report["rows"]:
        assert row["analyzer_path_fps"] > 0 and row["raw_network_fps"] > 0
