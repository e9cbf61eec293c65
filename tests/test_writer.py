"""The npe2 TIFF writer keeps data, dtype, pixel size and unit (ImageJ metadata)."""

import numpy as np
import pytest
import tifffile

from napari_divnoising import DivNoisingError
from napari_divnoising._writer import write_image_tiff, write_single_image
from napari_divnoising.outputs import result_metadata


def test_writes_2d_image_with_pixel_size_and_unit(tmp_path):
    data = np.random.default_rng(0).random((20, 30)).astype(np.float64)
    paths = write_single_image(str(tmp_path / "a.tif"), data, {"scale": [0.5, 0.25], "units": ["um", "um"]})
    assert paths == [str(tmp_path / "a.tif")]
    with tifffile.TiffFile(paths[0]) as tif:
        read = tif.asarray()
        assert tif.imagej_metadata["unit"] == "um"
        x_res = tif.pages[0].tags["XResolution"].value
        y_res = tif.pages[0].tags["YResolution"].value
    np.testing.assert_allclose(read, data.astype(np.float32))
    assert read.dtype == np.float32
    assert x_res[0] / x_res[1] == pytest.approx(4.0)
    assert y_res[0] / y_res[1] == pytest.approx(2.0)


def test_writes_stack_and_keeps_uint16(tmp_path):
    data = np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8)
    path = write_image_tiff(tmp_path / "s.tiff", data, {"scale": [2.0, 1.0, 1.0]})
    with tifffile.TiffFile(path) as tif:
        read = tif.asarray()
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.0)
    np.testing.assert_array_equal(read, data)


def test_rejects_rgb_and_wrong_extension(tmp_path):
    with pytest.raises(DivNoisingError, match="RGB"):
        write_image_tiff(tmp_path / "x.tif", np.zeros((8, 8, 3)), {"rgb": True})
    with pytest.raises(DivNoisingError, match=".tif"):
        write_image_tiff(tmp_path / "x.png", np.zeros((8, 8)))


def test_result_layers_are_written_by_the_core_exporter(tmp_path):
    from napari_divnoising.export import read_tiff_metadata

    data = np.random.default_rng(1).random((5, 12, 12)).astype(np.float32)
    meta = {"name": "whatever", "scale": [1.0, 0.4, 0.4], "units": ["pixel", "micrometer", "micrometer"],
            "metadata": result_metadata("samples", source="cells", model_name="m1", n_samples=5, seed=7,
                                             orientations=4)}
    (path,) = write_single_image(str(tmp_path / "s.tif"), data, meta)
    info = read_tiff_metadata(path)
    np.testing.assert_allclose(tifffile.imread(path), data)
    assert info["pixel_size"] == pytest.approx((0.4, 0.4)) and info["unit"] == "um"
    props = info["properties"]
    assert props["divnoising_kind"] == "samples" and props["divnoising_model"] == "m1"
    assert props["divnoising_n_samples"] == "5" and props["divnoising_seed"] == "7"
    assert props["divnoising_orientations"] == "4"
    assert props["divnoising_source"] == "cells"


def test_a_user_layer_named_like_a_result_is_written_as_a_plain_image(tmp_path):
    from napari_divnoising.export import read_tiff_metadata

    data = np.random.default_rng(2).random((12, 12)).astype(np.float32)
    (path,) = write_single_image(str(tmp_path / "cells_map.tif"), data, {"name": "cells_map", "metadata": {}})
    info = read_tiff_metadata(path)
    assert "divnoising_kind" not in info["properties"]
    assert "MAP" not in info["info"]
    np.testing.assert_allclose(tifffile.imread(path), data)


@pytest.mark.parametrize("dtype, expected", [
    (np.uint8, np.uint8), (np.uint16, np.uint16), (np.float32, np.float32), (np.int16, np.uint16),
    (np.int32, np.uint16), (np.float64, np.float32),
])
def test_writer_and_exporter_share_one_dtype_rule(tmp_path, dtype, expected):
    from napari_divnoising.export import write_tiff

    data = np.arange(64, dtype=dtype).reshape(8, 8)
    plain = write_image_tiff(tmp_path / "plain.tif", data)
    result = write_tiff(tmp_path / "result.tif", data, kind="mmse", dtype=dtype)
    assert tifffile.imread(plain).dtype == expected
    assert tifffile.imread(result).dtype == expected
