"""The analyzer's JPEG decoding: libjpeg-turbo through simplejpeg, the same pixels as PIL's."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from analyzer.models import MODEL_INPUT_SIZE
from analyzer.service import _decode_jpeg
from ingest.picture import encode_picture_jpeg, picture_from_rgb


def pil_decode(data: bytes, *, full_size: bool) -> np.ndarray:
    """What the analyzer did before: PIL, with ``draft`` unless the full size is wanted."""
    with Image.open(io.BytesIO(data)) as image:
        if not full_size:
            image.draft("RGB", (MODEL_INPUT_SIZE, MODEL_INPUT_SIZE))
        return np.asarray(image.convert("RGB"))


def scene(width: int, height: int) -> np.ndarray:
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([columns % 256, rows % 256, (rows * columns) % 253], axis=-1).astype(np.uint8)
    image[height // 4 : height // 2, width // 4 : width // 2] = (200, 40, 40)
    return image


def jpeg_of(image: np.ndarray, mode: str = "RGB", subsampling: int = 2) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(image).convert(mode)
    picture.save(buffer, format="JPEG", quality=85, subsampling=subsampling)
    return buffer.getvalue()


@pytest.mark.parametrize("full_size", [False, True])
@pytest.mark.parametrize(
    ("width", "height"), [(640, 360), (1280, 720), (1920, 1080), (2560, 1440), (200, 120), (641, 361)]
)
def test_frames_decode_to_pils_pixels_at_pils_scale(width: int, height: int, full_size: bool) -> None:
    for data in (
        encode_picture_jpeg(picture_from_rgb(scene(width, height)), 85),  # ingest's encoder
        jpeg_of(scene(width, height)),  # 4:2:0 from PIL
        jpeg_of(scene(width, height), subsampling=0),  # 4:4:4
    ):
        ours, theirs = _decode_jpeg(data, full_size=full_size), pil_decode(data, full_size=full_size)
        assert ours.shape == theirs.shape and ours.dtype == np.uint8
        assert np.array_equal(ours, theirs)
        if not full_size:
            assert min(ours.shape[:2]) >= min(MODEL_INPUT_SIZE, height)


def test_grayscale_and_cmyk_frames_decode_to_rgb_as_pil_does() -> None:
    image = scene(640, 360)
    for mode in ("L", "CMYK"):
        data = jpeg_of(image, mode)
        ours = _decode_jpeg(data)
        assert ours.shape == (360, 640, 3)
        assert np.array_equal(ours, pil_decode(data, full_size=False))


@pytest.mark.parametrize("data", [b"", b"not a jpeg at all", b"\xff\xd8\xff\xe0" + b"\x00" * 40])
def test_undecodable_frames_raise_what_the_analyzer_handles(data: bytes) -> None:
    with pytest.raises((ValueError, OSError)):
        _decode_jpeg(data)


def test_a_truncated_frame_is_refused() -> None:
    data = encode_picture_jpeg(picture_from_rgb(scene(640, 360)), 85)
    with pytest.raises((ValueError, OSError)):
        _decode_jpeg(data[: len(data) // 2])
