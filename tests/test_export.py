"""TIFF export: data, ImageJ axes, pixel size, description, dtype casting, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_divnoising import __version__
from napari_divnoising.errors import DivNoisingError
from napari_divnoising.export import cast_output, read_tiff_metadata, stack_axes, write_tiff


def test_mmse_round_trip_with_metadata(tmp_path):
    data = np.random.default_rng(0).normal(10, 3, (30, 40)).astype(np.float32)
    path = write_tiff(tmp_path / "a_mmse.tif", data, kind="mmse", pixel_size=(0.2, 0.1), unit="um",
                      n_samples=100, model_name="nuclei-v1", source="a.tif")
    np.testing.assert_array_equal(tifffile.imread(path), data)
    meta = read_tiff_metadata(path)
    assert meta["axes"] == "YX" and meta["dtype"] == np.float32
    assert meta["pixel_size"] == pytest.approx((0.2, 0.1)) and meta["unit"] == "um"
    props = meta["properties"]
    assert props["divnoising_kind"] == "mmse" and props["divnoising_n_samples"] == "100"
    assert props["divnoising_model"] == "nuclei-v1" and props["divnoising_version"] == __version__
    assert "MMSE" in meta["info"] and "nuclei-v1" in meta["info"] and "100 posterior samples" in meta["info"]
    with tifffile.TiffFile(path) as tf:  # plain tifffile sees an ImageJ file
        assert tf.is_imagej and tf.imagej_metadata["unit"] == "um"


@pytest.mark.parametrize(
    "input_axes, shape, expected_axes, stored_shape, samples_axis",
    [
        ("YX", (4, 16, 18), "TYX", (4, 16, 18), "T"),
        ("ZYX", (4, 3, 16, 18), "TZYX", (4, 3, 16, 18), "T"),
        ("TYX", (4, 3, 16, 18), "TZYX", (3, 4, 16, 18), "Z"),
    ],
)
def test_samples_axes_convention(tmp_path, input_axes, shape, expected_axes, stored_shape, samples_axis):
    data = np.random.default_rng(1).random(shape).astype(np.float32)
    path = write_tiff(tmp_path / "s.tif", data, kind="samples", input_axes=input_axes, n_samples=50)
    meta = read_tiff_metadata(path)
    assert meta["axes"] == expected_axes and meta["shape"] == stored_shape
    assert meta["properties"]["divnoising_samples_axis"] == samples_axis
    back = tifffile.imread(path)
    if input_axes == "TYX":
        back = np.moveaxis(back, 1, 0)
    np.testing.assert_array_equal(back, data)


def test_stack_spacing_and_prior(tmp_path):
    stack = np.random.default_rng(2).random((3, 10, 12)).astype(np.float32)
    meta = read_tiff_metadata(write_tiff(tmp_path / "v.tif", stack, kind="variance", input_axes="ZYX",
                                         pixel_size=(0.5, 0.5), unit="um", spacing=2.0))
    assert meta["axes"] == "ZYX" and meta["spacing"] == pytest.approx(2.0)
    prior = write_tiff(tmp_path / "p.tif", stack, kind="prior", n_samples=3)
    assert read_tiff_metadata(prior)["axes"] == "TYX"


def test_cast_back_to_the_input_dtype_with_clipping(tmp_path):
    data = np.array([[-3.2, 0.4, 7.6], [254.7, 300.0, 12.5]], np.float32)
    path = write_tiff(tmp_path / "m.tif", data, kind="mmse", dtype=np.uint8)
    back = tifffile.imread(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, [[0, 0, 8], [255, 255, 12]])
    # variance stays float32 whatever dtype is asked for
    var = write_tiff(tmp_path / "v.tif", data, kind="variance", dtype=np.uint8, clip_min=0)
    assert tifffile.imread(var).dtype == np.float32 and tifffile.imread(var).min() < 0
    np.testing.assert_array_equal(cast_output(data, "float32", clip_min=0.0) >= 0, True)


def test_overwrite_is_atomic_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "x.tif"
    write_tiff(path, np.ones((8, 8), np.float32), kind="mmse")
    original = path.read_bytes()

    def broken(*args, **kwargs):
        with open(args[0], "wb") as fh:
            fh.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(DivNoisingError, match="x.tif: the disk is full"):
        write_tiff(path, np.zeros((8, 8), np.float32), kind="mmse")
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tif"]


def test_reading_pixel_size_from_plain_resolution_tags(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((5, 5), np.uint16), resolution=(10000 / 0.25, 10000 / 0.25), resolutionunit=3)
    meta = read_tiff_metadata(path)
    assert meta["pixel_size"] == pytest.approx((0.25, 0.25)) and meta["unit"] == "um"
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, np.zeros((5, 5), np.uint16))
    assert read_tiff_metadata(bare)["pixel_size"] is None


def test_axes_helpers_and_errors(tmp_path):
    assert stack_axes("YX", 2) == "YX" and stack_axes("ZYX", 3) == "ZYX"
    assert stack_axes("IYX", 3) == "TYX" and stack_axes(None, 3) == "TYX"
    with pytest.raises(DivNoisingError):
        write_tiff(tmp_path / "a.png", np.zeros((4, 4)), kind="mmse")
    with pytest.raises(DivNoisingError):
        write_tiff(tmp_path / "a.tif", np.zeros((4, 4)), kind="denoised")
    with pytest.raises(DivNoisingError):
        read_tiff_metadata(tmp_path / "missing.tif")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(DivNoisingError):
        read_tiff_metadata(tmp_path / "junk.tif")
