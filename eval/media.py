"""New kinds of scenes for the evaluation, rendered from the shipped photos as RGB arrays that
``Photo(image=array)`` accepts: an object recoloured, two photos side by side.

Everything is derived from scikit-image's bundled photos (no download), deterministically.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from livestream.testsource.media import load_image
from livestream.testsource.script import SKIMAGE_PREFIX

# The cup and its saucer in scikit-image's ``coffee`` (600x400): (left, top, right, bottom).
# Measured on the photo; the region leaves most of the wooden table outside, so a recolouring
# changes the object and not the scene.
COFFEE_CUP_REGION = (70, 10, 490, 395)


@functools.cache
def photo(name: str) -> np.ndarray:
    """A scikit-image photo as RGB uint8 (cached: every case of a script reuses it)."""
    return load_image(SKIMAGE_PREFIX + name)


def hue_shifted(
    image: np.ndarray, degrees: float, region: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """``image`` with the hue of ``region`` (or the whole image) rotated by ``degrees``.

    Saturation and value are kept, so the object keeps its shading and only its colour name
    changes (the red-brown cup of ``coffee`` rotated by 225 degrees is blue).
    """
    left, top, right, bottom = region or (0, 0, image.shape[1], image.shape[0])
    patch = Image.fromarray(image[top:bottom, left:right]).convert("HSV")
    hsv = np.asarray(patch).copy()
    # PIL's hue channel spans 0-255 for a full turn.
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(degrees / 360 * 256)) % 256).astype(np.uint8)
    recoloured = np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))
    out = image.copy()
    out[top:bottom, left:right] = recoloured
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 16) -> np.ndarray:
    """Two photos scaled to the same height next to each other on a gray background."""
    height = min(left.shape[0], right.shape[0])

    def scaled(image: np.ndarray) -> np.ndarray:
        width = round(image.shape[1] * height / image.shape[0])
        return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))

    a, b = scaled(left), scaled(right)
    canvas = np.full((height, a.shape[1] + gap + b.shape[1], 3), 128, np.uint8)
    canvas[:, : a.shape[1]] = a
    canvas[:, a.shape[1] + gap :] = b
    return canvas


def mirrored(image: np.ndarray) -> np.ndarray:
    """The photo flipped left-right: a second instance that is not a pixel copy of the first."""
    return np.ascontiguousarray(image[:, ::-1])


def recoloured_cup(degrees: float) -> np.ndarray:
    return hue_shifted(photo("coffee"), degrees, COFFEE_CUP_REGION)


def two_cats() -> np.ndarray:
    return side_by_side(photo("chelsea"), mirrored(photo("chelsea")))


def two_people() -> np.ndarray:
    return side_by_side(photo("astronaut"), mirrored(photo("astronaut")))


def cat_next_to_cup() -> np.ndarray:
    return side_by_side(photo("chelsea"), photo("coffee"))
