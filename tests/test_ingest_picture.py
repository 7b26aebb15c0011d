"""Sampled pictures as YCbCr planes: the colour conversion JPEG expects, scaling, JPEG encoding."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from ingest.picture import Picture, PictureScaler, encode_picture_jpeg, picture_from_rgb


def colour_card(width: int = 320, height: int = 180) -> np.ndarray:
    """Smooth ramps with saturated patches: a range or matrix mistake shifts them visibly."""
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([columns * 255 // width, rows * 255 // height, (rows + columns) % 256], axis=-1)
    image = image.astype(np.uint8)
    image[20:80, 20:120] = (220, 30, 30)
    image[100:160, 180:300] = (30, 200, 60)
    image[20:80, 200:300] = (40, 50, 210)
    return image


def jpeg_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_picture_encodes_to_a_jpeg_that_decodes_to_the_original_colours() -> None:
    card = colour_card()
    decoded = jpeg_rgb(encode_picture_jpeg(picture_from_rgb(card), quality=95))
    assert decoded.shape == card.shape
    # The JPEG round trip of the RGB path itself, as the bound: PIL's own RGB encoder.
    buffer = io.BytesIO()
    Image.fromarray(card).save(buffer, format="JPEG", quality=95)
    rgb_path_error = np.abs(jpeg_rgb(buffer.getvalue()) - card).mean()
    error = np.abs(decoded - card).mean()
    assert error < 2 * rgb_path_error + 0.5, (error, rgb_path_error)
    # The saturated patches keep their colour (a limited-range or BT.709 mix-up moves them by 10+).
    for y, x in ((50, 70), (130, 240), (50, 250)):
        assert np.abs(decoded[y, x] - card[y, x]).max() <= 6, (decoded[y, x], card[y, x])


@pytest.mark.parametrize(("colorspace", "tag"), [("ITU709", 1), ("ITU601", 6)])
def test_decoded_frames_tagged_with_another_matrix_and_limited_range_are_converted(
    colorspace: str, tag: int
) -> None:
    card = colour_card()
    frame = av.VideoFrame.from_ndarray(card, format="rgb24").reformat(
        format="yuv420p", dst_colorspace=colorspace, dst_color_range="MPEG"
    )
    frame.colorspace, frame.color_range = tag, 1  # as a decoder tags an HD broadcast frame
    picture = PictureScaler().picture(frame, 320, 180)
    shown = picture.to_rgb().astype(np.int16)
    for y, x in ((50, 70), (130, 240), (50, 250)):
        assert np.abs(shown[y, x] - card[y, x]).max() <= 6, (colorspace, shown[y, x], card[y, x])


def test_the_scaler_gives_the_same_pictures_frame_after_frame() -> None:
    frames = [av.VideoFrame.from_ndarray(np.roll(colour_card(1280, 720), k * 7, axis=1)) for k in range(3)]
    scaler = PictureScaler()
    for frame in frames:
        ours, fresh = scaler.picture(frame, 640, 360), PictureScaler().picture(frame, 640, 360)
        assert (ours.width, ours.height) == (640, 360)
        assert all(
            np.array_equal(a, b) for a, b in ((ours.y, fresh.y), (ours.cb, fresh.cb), (ours.cr, fresh.cr))
        )
        assert ours.y.flags.c_contiguous and ours.cb.flags.c_contiguous


def test_odd_sizes_keep_rounded_up_chroma_and_resize_to_any_size() -> None:
    picture = picture_from_rgb(colour_card(321, 181))
    assert (picture.width, picture.height) == (321, 181)
    assert picture.cb.shape == picture.cr.shape == (91, 161)
    smaller = picture.resized(161, 91)
    assert (smaller.width, smaller.height) == (161, 91) and smaller.cb.shape == (46, 81)
    assert picture.resized(321, 181) is picture
    with Image.open(io.BytesIO(encode_picture_jpeg(smaller, quality=70))) as image:
        assert image.size == (161, 91)


def test_picture_from_rgb_scales_when_asked() -> None:
    picture = picture_from_rgb(colour_card(1280, 720), (640, 360))
    assert (picture.width, picture.height) == (640, 360)


def test_planes_that_do_not_fit_4_2_0_are_refused() -> None:
    y = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="do not fit"):
        Picture(y, np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        Picture(y, np.zeros((5, 5), np.float32), np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="RGB uint8"):
        picture_from_rgb(np.zeros((4, 4), np.uint8))
