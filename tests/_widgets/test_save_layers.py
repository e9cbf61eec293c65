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


def test_file_save_writes_result_layers_by_their_metadata_not_their_names(make_napari_viewer, tmp_path):
    from napari_divnoising.export import read_tiff_metadata
    from napari_divnoising.outputs import result_metadata

    viewer = make_napari_viewer()
    data = np.random.default_rng(1).random((12, 10)).astype(np.float32)
    viewer.add_image(data, name="anything", metadata=result_metadata("map", source="cells", model_name="m",
                                                                      n_samples=30, seed=2))
    viewer.add_image(data, name="cells_map")  # the user's own layer
    (marked,) = viewer.layers["anything"].save(str(tmp_path / "a.tif"), plugin="napari-divnoising")
    (plain,) = viewer.layers["cells_map"].save(str(tmp_path / "b.tif"), plugin="napari-divnoising")
    props = read_tiff_metadata(marked)["properties"]
    assert props["divnoising_kind"] == "map" and props["divnoising_n_samples"] == "30"
    assert "divnoising_kind" not in read_tiff_metadata(plain)["properties"]
