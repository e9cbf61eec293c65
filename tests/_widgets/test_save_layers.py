"""File > Save Layers with the plugin's TIFF writer keeps pixel size and unit."""

import numpy as np
import pytest
import tifffile


def test_viewer_saves_image_layer_through_the_plugin_writer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).random((12, 10)).astype(np.float32)
    viewer.add_image(data, name="result", scale=(0.3, 0.3), units=("um", "um"))
    path = tmp_path / "result.tif"
    written = viewer.layers.save(str(path), selected=False, plugin="napari-divnoising")
    assert [str(p) for p in written] == [str(path)]
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_allclose(tif.asarray(), data)
        assert tif.imagej_metadata["unit"] == "um"
        x_res = tif.pages[0].tags["XResolution"].value
    assert x_res[0] / x_res[1] == pytest.approx(1 / 0.3, rel=1e-4)
