"""Named colours of an object, from the HSV statistics of its box's pixels. Pure (numpy + Pillow).

The names are those of the query grammar (``analyzer.understanding.grammar.COLOURS``' values):
red, orange, yellow, green, blue, purple, pink, brown, black, white, gray.

Only the central region of a box is read (``CENTRAL_FRACTION`` of its width and height): a
detector's box is a rectangle around an object, and its border is mostly background.

Each pixel gets a name (HSV with H in degrees, S and V in [0, 1]):

======================  ==========================================================
pixel                    name
======================  ==========================================================
V < 0.20                 black (too dark for its hue to mean anything)
S < 0.20                 white when V >= 0.80, gray when 0.20 <= V < 0.80 (and
                         black when V < 0.35: dark unsaturated pixels read as black)
H < 15 or H >= 330       red; pink when S < 0.50 and V >= 0.70 (light red)
15 <= H < 40             orange; brown when V < 0.60 (dark orange)
40 <= H < 70             yellow; brown when V < 0.45 (dark yellow: olive / khaki)
70 <= H < 165            green
165 <= H < 260           blue (cyan included: nobody queries "a cyan car")
260 <= H < 290           purple
290 <= H < 330           pink (magenta)
======================  ==========================================================

The box's colour: when at least ``CHROMATIC_MIN_SHARE`` of its central pixels are chromatic
(any hue name above), the most common chromatic name, so a red car with dark windows and
tyres is red; otherwise the most common of black / white / gray, so a white van with a
red logo is white. A target's colour matches when it is that name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]

# Half of each side, centred: the object rather than the background behind its corners.
CENTRAL_FRACTION = 0.5
# Boxes smaller than this (pixels per side, after the central cut) are too small to judge.
MIN_PIXELS_PER_SIDE = 2
# At most about this many pixels of a region are read (an even stride over it).
MAX_SAMPLED_PIXELS = 4096
# A box whose central pixels are at least this chromatic is named by its hue.
CHROMATIC_MIN_SHARE = 0.25

BLACK_MAX_VALUE = 0.20
ACHROMATIC_MAX_SATURATION = 0.20
WHITE_MIN_VALUE = 0.80
DARK_GRAY_IS_BLACK_BELOW = 0.35
# (upper hue bound in degrees, name); the first bound above the hue wins; red wraps at 330.
HUE_NAMES: tuple[tuple[float, str], ...] = (
    (15.0, "red"),
    (40.0, "orange"),
    (70.0, "yellow"),
    (165.0, "green"),
    (260.0, "blue"),
    (290.0, "purple"),
    (330.0, "pink"),
    (360.0, "red"),
)
PINK_MAX_SATURATION = 0.50
PINK_MIN_VALUE = 0.70
BROWN_FROM_ORANGE_BELOW_VALUE = 0.60
BROWN_FROM_YELLOW_BELOW_VALUE = 0.45

ACHROMATIC = frozenset({"black", "white", "gray"})
COLOUR_NAMES = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
    "gray",
)
CODE = {name: code for code, name in enumerate(COLOUR_NAMES)}


@dataclass(frozen=True)
class ColourReading:
    """The named colour of a box and the share of its central pixels behind it."""

    name: str
    share: float  # of the central pixels that carry the name
    chromatic_share: float  # of the central pixels that have a hue


def central_region(image: np.ndarray, box: Box, fraction: float = CENTRAL_FRACTION) -> np.ndarray:
    """The central ``fraction`` (per side) of the normalised ``box`` in an HxWx3 image."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (min(1.0, max(0.0, v)) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = (x1 - x0) * fraction / 2, (y1 - y0) * fraction / 2
    left, right = round((cx - half_w) * width), round((cx + half_w) * width)
    top, bottom = round((cy - half_h) * height), round((cy + half_h) * height)
    return image[max(0, top) : min(height, bottom), max(0, left) : min(width, right)]


def pixel_codes(rgb: np.ndarray) -> np.ndarray:
    """The colour of every pixel of an HxWx3 uint8 RGB array, as indexes into ``COLOUR_NAMES`` (flat)."""
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("HSV"), dtype=np.float32)
    hue = hsv[..., 0].ravel() * (360.0 / 256.0)
    sat = hsv[..., 1].ravel() / 255.0
    val = hsv[..., 2].ravel() / 255.0
    bounds = np.array([bound for bound, _ in HUE_NAMES])
    hue_codes = np.array([CODE[name] for _, name in HUE_NAMES], dtype=np.uint8)
    codes = hue_codes[np.minimum(np.searchsorted(bounds, hue, side="right"), len(bounds) - 1)]
    codes[(codes == CODE["red"]) & (sat < PINK_MAX_SATURATION) & (val >= PINK_MIN_VALUE)] = CODE["pink"]
    codes[(codes == CODE["orange"]) & (val < BROWN_FROM_ORANGE_BELOW_VALUE)] = CODE["brown"]
    codes[(codes == CODE["yellow"]) & (val < BROWN_FROM_YELLOW_BELOW_VALUE)] = CODE["brown"]
    achromatic = sat < ACHROMATIC_MAX_SATURATION
    codes[achromatic] = np.where(val[achromatic] >= WHITE_MIN_VALUE, CODE["white"], CODE["gray"])
    codes[achromatic & (val < DARK_GRAY_IS_BLACK_BELOW)] = CODE["black"]
    codes[val < BLACK_MAX_VALUE] = CODE["black"]
    return codes


def pixel_names(rgb: np.ndarray) -> list[str]:
    """The colour name of every pixel of an HxWx3 uint8 RGB array (flat, row by row)."""
    return [COLOUR_NAMES[code] for code in pixel_codes(rgb)]


def read_colour(image: np.ndarray, box: Box) -> ColourReading | None:
    """The named colour of ``box`` in ``image`` by the rule of the module docstring; None if too small."""
    region = central_region(image, box)
    height, width = region.shape[:2]
    if height < MIN_PIXELS_PER_SIDE or width < MIN_PIXELS_PER_SIDE:
        return None
    # Shares need no more than a few thousand pixels: an evenly strided sample keeps big boxes cheap.
    step = max(1, math.ceil(math.sqrt(height * width / MAX_SAMPLED_PIXELS)))
    codes = pixel_codes(region[::step, ::step])
    total = len(codes)
    tally = np.bincount(codes, minlength=len(COLOUR_NAMES))
    counts = {COLOUR_NAMES[code]: int(n) for code, n in enumerate(tally) if n}
    chromatic = {name: n for name, n in counts.items() if name not in ACHROMATIC}
    chromatic_share = sum(chromatic.values()) / total
    pool = (
        chromatic
        if chromatic_share >= CHROMATIC_MIN_SHARE
        else {name: n for name, n in counts.items() if name in ACHROMATIC}
    )
    # Ties go to the first name of COLOUR_NAMES: deterministic whatever the pixel order.
    name = max(pool, key=lambda k: (pool[k], -COLOUR_NAMES.index(k)))
    return ColourReading(
        name=name, share=round(pool[name] / total, 3), chromatic_share=round(chromatic_share, 3)
    )
