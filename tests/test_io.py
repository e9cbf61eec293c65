"""Reading TIFFs and checking image data (io.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.io import as_image_stack, read_tiff


def _noise(shape, seed=0):
    return np.random.default_rng(seed).normal(100, 10, shape)


def test_read_tiff_round_trip(tmp_path):
    data = (np.arange(2 * 8 * 9) % 251).astype(np.uint8).reshape(2, 8, 9)
    tifffile.imwrite(tmp_path / "a.tif", data)
    out = read_tiff(tmp_path / "a.tif")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, data)


def test_read_tiff_errors(tmp_path):
    with pytest.raises(DivNoisingError, match="not found"):
        read_tiff(tmp_path / "missing.tif")
    with pytest.raises(DivNoisingError, match="folder"):
        read_tiff(tmp_path)
    bad = tmp_path / "bad.tif"
    bad.write_text("not a tiff")
    with pytest.raises(DivNoisingError, match="Could not read"):
        read_tiff(bad)


def test_2d_image_becomes_one_frame_float32_copy():
    img = _noise((16, 20)).astype(np.uint16)
    stack = as_image_stack(img)
    assert stack.shape == (1, 16, 20) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack[0], img)
    stack[0, 0, 0] = -1
    assert img[0, 0] != -1


def test_stack_kept_and_leading_singletons_dropped():
    assert as_image_stack(_noise((5, 16, 16))).shape == (5, 16, 16)
    assert as_image_stack(_noise((1, 1, 5, 16, 16))).shape == (5, 16, 16)
    assert as_image_stack(_noise((1, 16, 16))).shape == (1, 16, 16)


@pytest.mark.parametrize(
    "data, kwargs, message",
    [
        (_noise((16, 16, 3)), {}, "RGB"),
        (_noise((16, 16, 4)), {}, "RGB"),
        (_noise((3, 16, 16)), {"rgb": True}, "RGB"),
        (_noise((2, 3, 16, 16)), {}, "4 dimensions"),
        (_noise(16), {}, "1 dimension"),
        (np.zeros((0, 16, 16)), {}, "empty"),
        (np.full((16, 16), 5.0), {}, "constant"),
        (np.ones((16, 16), dtype=bool), {}, "unsupported data type"),
        (np.ones((16, 16), dtype=complex), {}, "unsupported data type"),
        (_noise((16, 16)), {"min_frames": 2}, "at least 2"),
        (_noise((2, 16, 24)), {"min_size": 32}, "smaller than 32x32"),
    ],
)
def test_bad_data(data, kwargs, message):
    with pytest.raises(DivNoisingError, match=message):
        as_image_stack(data, name="test data", **kwargs)


def test_rgb_guess_can_be_overridden():
    """A 3-frame stack of small frames is not RGB; napari's rgb=False overrides the shape guess."""
    assert as_image_stack(_noise((16, 16, 3)), rgb=False).shape == (16, 16, 3)


def test_nan_and_inf_are_counted():
    data = _noise((4, 8, 8))
    data[0, 0, 0] = np.nan
    data[1, 2, 3] = np.inf
    with pytest.raises(DivNoisingError, match="2 NaN or infinite"):
        as_image_stack(data, name="x")


def test_message_uses_name():
    with pytest.raises(DivNoisingError, match="^calib.tif has 1 frame"):
        as_image_stack(_noise((8, 8)), name="calib.tif", min_frames=2)


def test_rgb_with_leading_singleton_axis_is_refused():
    with pytest.raises(DivNoisingError, match="RGB"):
        as_image_stack(_noise((1, 16, 16, 3)))
