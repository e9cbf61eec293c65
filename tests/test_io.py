"""Reading TIFFs and checking image data (io.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.io import as_image_stack, read_tiff, tiff_channel_error


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


@pytest.mark.parametrize(
    "data, message",
    [
        (np.full((8, 8), 1e30, np.float32) + np.eye(8, dtype=np.float32) * 1e29, "values up to 1.1e"),
        (np.array([[-2**62, 0], [5, 2**62]], dtype=np.int64), "accepts values up to 1e"),
        (np.array([[1e-20, 0], [2e-20, 0]], dtype=np.float64), "spread over only 2e-20"),
        (np.array([[1e7, 1e7], [1e7, 1e7 + 1e-3]], dtype=np.float64), "below float32 precision"),
        (np.array([[1e300, 0], [0, 1]], dtype=np.float64), "values up to 1e\\+300"),
    ],
)
def test_values_float32_cannot_handle_are_refused(data, message):
    with pytest.raises(DivNoisingError, match=message):
        as_image_stack(data, name="x")


def test_wide_integer_ranges_are_kept_exactly():
    data = np.array([[-2_000_000_000, 0], [7, 2_000_000_000]], dtype=np.int32)  # max - min overflows int32
    assert as_image_stack(data).max() == np.float32(2e9)


def test_torch_tensors_are_accepted():
    tensor = torch.tensor(_noise((8, 8)), requires_grad=True)
    assert as_image_stack(tensor).shape == (1, 8, 8)


@pytest.mark.parametrize("imagej", [False, True])
def test_channel_axes_from_metadata_are_refused(tmp_path, imagej):
    path = tmp_path / ("ij.tif" if imagej else "two.ome.tif")
    data = np.stack([_noise((16, 16)), _noise((16, 16))]).astype(np.float32)
    tifffile.imwrite(path, data, imagej=imagej, metadata={"axes": "CYX"})
    with pytest.raises(DivNoisingError, match="has 2 channels .*one model per channel"):
        read_tiff(path)


def test_single_channel_ome_and_plain_stacks_are_read(tmp_path):
    tifffile.imwrite(tmp_path / "one.ome.tif", _noise((1, 16, 16)).astype(np.float32), metadata={"axes": "CYX"})
    assert read_tiff(tmp_path / "one.ome.tif").squeeze().shape == (16, 16)
    tifffile.imwrite(tmp_path / "three.tif", _noise((3, 16, 16)).astype(np.float32))  # tifffile tags this RGB
    assert as_image_stack(read_tiff(tmp_path / "three.tif")).shape == (3, 16, 16)


def test_tiff_channel_error_reads_only_the_metadata_and_matches_the_shape(tmp_path):
    two = tmp_path / "two.ome.tif"
    tifffile.imwrite(two, np.stack([_noise((16, 16)), _noise((16, 16))]).astype(np.float32), metadata={"axes": "CYX"})
    assert "has 2 channels" in str(tiff_channel_error(two))
    assert "has 2 channels" in str(tiff_channel_error(two, (1, 2, 16, 16)))  # singleton axes do not count
    assert tiff_channel_error(two, (16, 16)) is None  # data not taken whole from the file: nothing to say
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, _noise((2, 16, 16)).astype(np.float32), imagej=True, metadata={"axes": "TYX"})
    assert tiff_channel_error(stack, (2, 16, 16)) is None
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    assert tiff_channel_error(tmp_path / "bad.tif") is None
    assert tiff_channel_error(tmp_path / "missing.tif") is None
    assert tiff_channel_error(tmp_path / "x.zarr") is None


def test_read_tiff_path_type():
    with pytest.raises(DivNoisingError, match="file path"):
        read_tiff(None)
