"""The sampled frame as ingest holds it: a JPEG-ready YCbCr 4:2:0 picture, and its JPEG encoding.

A decoded H.264 frame is already YUV 4:2:0. Ingest used to convert each kept frame to RGB
(swscale), copy it into PIL and let libjpeg convert it back to YCbCr and subsample its chroma
again. Now swscale scales the frame once, straight into the colour space JPEG (JFIF) defines
(BT.601 matrix, full range, 4:2:0), and libjpeg-turbo (``simplejpeg``) compresses those planes
as they are: no RGB picture, no colour conversion and no chroma subsampling in the encoder.
Source frames tagged with another matrix (BT.709, as most HD video is) or limited range are
converted by swscale on the way, as the RGB path did.

Measured on 720p25 H.264 (``bench/bench_encode.py``, one core, ``bench/results/encode.json``):
from a decoded frame to JPEG bytes at 640x360, quality 85, 3.46 ms of CPU a frame the RGB way
(3.16 with one cached scaler on one thread) against 1.02 this way. After decoding, the pictures
are 1.36 of 255 from the uncompressed frame (mean absolute difference), against 0.84 for the
RGB path; ``make eval`` gives the same precision, recall and temporal IoU means.

``PictureScaler`` holds one swscale context for the frames of a segment (building one costs
as much as scaling a frame) and scales on the calling thread: ingest decodes on a worker thread
already, and swscale's own threads (PyAV's default) would spawn per context and compete with
the other sessions' work for the same cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
import simplejpeg
from av.video.reformatter import VideoReformatter
from PIL import Image

PICTURE_FORMAT = "yuv420p"
# JFIF's YCbCr: BT.601 coefficients over the full 0-255 range (what every JPEG decoder assumes).
PICTURE_COLORSPACE = "ITU601"
PICTURE_RANGE = "JPEG"


@dataclass(frozen=True)
class Picture:
    """A frame as three 8-bit planes of full-range BT.601 YCbCr, chroma at half width and height
    (rounded up). Plain C-contiguous numpy arrays: they outlive the decoder's frame buffers."""

    y: np.ndarray  # (height, width)
    cb: np.ndarray  # ((height + 1) // 2, (width + 1) // 2)
    cr: np.ndarray

    def __post_init__(self) -> None:
        height, width = self.y.shape
        chroma = ((height + 1) // 2, (width + 1) // 2)
        if self.cb.shape != chroma or self.cr.shape != chroma:
            raise ValueError(
                f"chroma planes {self.cb.shape}, {self.cr.shape} do not fit {width}x{height} 4:2:0"
            )
        for plane in (self.y, self.cb, self.cr):
            if plane.dtype != np.uint8:
                raise ValueError(f"planes are uint8, not {plane.dtype}")

    @property
    def width(self) -> int:
        return int(self.y.shape[1])

    @property
    def height(self) -> int:
        return int(self.y.shape[0])

    def resized(self, width: int, height: int) -> Picture:
        """This picture scaled to ``width`` x ``height`` (bilinear, each plane on its own)."""
        if (width, height) == (self.width, self.height):
            return self
        size = (width, height)
        chroma = ((width + 1) // 2, (height + 1) // 2)
        return Picture(
            _resize_plane(self.y, size), _resize_plane(self.cb, chroma), _resize_plane(self.cr, chroma)
        )

    def to_rgb(self) -> np.ndarray:
        """RGB uint8 (height, width, 3), as a JPEG decoder would show it (chroma upsampled)."""
        size, bilinear = (self.width, self.height), Image.Resampling.BILINEAR
        chroma = [Image.fromarray(plane).resize(size, bilinear) for plane in (self.cb, self.cr)]
        planes = [Image.fromarray(self.y), *chroma]
        return np.asarray(Image.merge("YCbCr", planes).convert("RGB"))


def _resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(plane).resize(size, Image.Resampling.BILINEAR))


class PictureScaler:
    """Decoded video frames to ``Picture``s of a given size; one per segment (not thread-safe)."""

    def __init__(self) -> None:
        self._reformatter = VideoReformatter()

    def picture(self, frame: av.VideoFrame, width: int, height: int) -> Picture:
        converted = self._reformatter.reformat(
            frame,
            width=width,
            height=height,
            format=PICTURE_FORMAT,
            dst_colorspace=PICTURE_COLORSPACE,
            dst_color_range=PICTURE_RANGE,
            threads=1,
        )
        y, cb, cr = (_plane_array(plane) for plane in converted.planes)
        return Picture(y, cb, cr)


def _plane_array(plane: av.video.plane.VideoPlane) -> np.ndarray:
    """One plane as a contiguous array of its visible pixels (lines are padded in the frame)."""
    rows = np.frombuffer(plane, dtype=np.uint8).reshape(plane.height, plane.line_size)
    return np.ascontiguousarray(rows[:, : plane.width])


def picture_from_rgb(image: np.ndarray, size: tuple[int, int] | None = None) -> Picture:
    """An RGB uint8 (height, width, 3) array as a ``Picture`` (scaled to ``size``, (width,
    height), when given), by the same swscale conversion as decoded frames."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"want an RGB uint8 (height, width, 3) array, not {image.dtype} {image.shape}")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    width, height = size or (frame.width, frame.height)
    return PictureScaler().picture(frame, width, height)


def encode_picture_jpeg(picture: Picture, quality: int) -> bytes:
    """Baseline JFIF, 4:2:0, libjpeg-turbo's accurate DCT, standard Huffman tables."""
    return bytes(simplejpeg.encode_jpeg_yuv_planes(picture.y, picture.cb, picture.cr, quality=quality))
