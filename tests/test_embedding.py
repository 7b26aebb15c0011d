"""The real sentence-embedding model (all-MiniLM-L6-v2, ONNX) through ``SentenceEmbedder``.

Marked ``model``: needs the model built by ``make models`` (``make test`` builds it first). A
missing model fails loudly (the loader says to run ``make models``) rather than skipping.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from analyzer.embedding import SentenceEmbedder
from analyzer.errors import ModelNotFoundError
from analyzer.models import TEXT_EMBEDDING_DIM, ModelSettings
from analyzer.models.build_text import RECIPE_VERSION, SOURCE_VERSION, cached_sidecar
from analyzer.models.coco_labels import COCO_CLASS_NAMES

SETTINGS = ModelSettings()


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder.load(intra_op_threads=2)


def similarity(embedder: SentenceEmbedder, a: str, b: str) -> float:
    first, second = embedder.embed([a, b])
    return float(first @ second)


@pytest.mark.model
def test_rows_are_normalised_float32_and_deterministic(embedder: SentenceEmbedder) -> None:
    texts = ["a person picking up an apple", "car", "", "A RED CAR stopping at the gate."]
    first = embedder.embed(texts)
    assert first.shape == (len(texts), TEXT_EMBEDDING_DIM) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(first, embedder.embed(texts))
    assert embedder.embed([]).shape == (0, TEXT_EMBEDDING_DIM)


@pytest.mark.model
def test_batching_and_padding_do_not_change_a_text(embedder: SentenceEmbedder) -> None:
    texts = ["dog", "two people standing next to a parked bicycle near the front door of the house"]
    batched = embedder.embed(texts)
    alone = np.concatenate([embedder.embed([text]) for text in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


@pytest.mark.model
def test_safe_to_call_from_several_threads(embedder: SentenceEmbedder) -> None:
    texts = [f"a {name} near the door" for name in COCO_CLASS_NAMES[:16]]
    expected = embedder.embed(texts)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: embedder.embed(texts), range(8)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


@pytest.mark.model
def test_meaning_orders_similarities(embedder: SentenceEmbedder) -> None:
    assert similarity(embedder, "a puppy", "a dog") > similarity(embedder, "a puppy", "a car") + 0.1
    assert similarity(embedder, "a man", "a person") > similarity(embedder, "a man", "a banana")
    assert similarity(embedder, "someone riding a bike", "bicycle") > similarity(
        embedder, "someone riding a bike", "refrigerator"
    )


@pytest.mark.model
@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("automobile", "car"),
        ("puppy", "dog"),
        ("kitten", "cat"),
        ("sofa", "couch"),
        ("mobile phone", "cell phone"),
    ],
)
def test_synonyms_land_on_their_coco_class(embedder: SentenceEmbedder, phrase: str, expected: str) -> None:
    labels = embedder.embed(list(COCO_CLASS_NAMES))
    [query] = embedder.embed([phrase])
    scores = labels @ query
    assert COCO_CLASS_NAMES[int(scores.argmax())] == expected, sorted(
        zip(scores.round(3), COCO_CLASS_NAMES, strict=True), reverse=True
    )[:5]


@pytest.mark.model
def test_cost_per_text(embedder: SentenceEmbedder, capsys: pytest.CaptureFixture[str]) -> None:
    texts = [f"a {name} near the door" for name in COCO_CLASS_NAMES]  # 80 short query-like texts
    embedder.embed(texts[:8])  # warm-up
    started = time.perf_counter()
    embedder.embed(texts)
    per_text_ms = (time.perf_counter() - started) * 1000 / len(texts)
    with capsys.disabled():
        print(f"\nsentence embedding: {per_text_ms:.2f} ms per text (batches of 32, 2 threads)")
    assert per_text_ms < 100  # generous: a 2-core CI machine does a few ms


@pytest.mark.model
def test_cached_build_of_this_recipe() -> None:
    sidecar = cached_sidecar(SETTINGS.text_model_path)
    assert sidecar is not None and sidecar["recipe_version"] == RECIPE_VERSION
    assert sidecar["verification"]["min_cosine"] > 0.999
    assert SETTINGS.text_tokenizer_path.name in sidecar["files"]


def test_missing_model_tells_to_run_make_models(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="make models"):
        SentenceEmbedder.load(tmp_path / "absent.onnx", tmp_path / "absent.tokenizer.json")


def test_cache_check_rejects_a_changed_tokenizer(tmp_path: Path) -> None:
    model, tokenizer = tmp_path / "m.onnx", tmp_path / "m.tokenizer.json"
    model.write_bytes(b"model bytes")
    tokenizer.write_bytes(b"{}")
    sidecar = {
        "recipe_version": RECIPE_VERSION,
        "source": {"version": SOURCE_VERSION},
        "size_bytes": model.stat().st_size,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "files": {tokenizer.name: {"size_bytes": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}},
    }
    (tmp_path / "m.json").write_text(json.dumps(sidecar))
    assert cached_sidecar(model) == sidecar
    tokenizer.write_bytes(b"[]")
    assert cached_sidecar(model) is None
    tokenizer.unlink()
    assert cached_sidecar(model) is None
