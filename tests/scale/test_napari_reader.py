"""napari opens a results store with the right layers (MMSE pyramid, variance, MAP, samples) and pixel sizes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_divnoising.outputs import result_kind
from napari_divnoising.scale import ZarrPredictionSettings, predict_to_zarr, read_results
from napari_divnoising.scale.napari_reader import get_reader


@pytest.fixture()
def results_store(tmp_path, model_file, stack_zarr):
    out = tmp_path / "cells.ome.zarr"
    predict_to_zarr(model_file, stack_zarr, out,
                    ZarrPredictionSettings(n_samples=3, keep_samples=2, compute_map=True, seed=1))
    return out


def test_reader_gives_lazy_layers_with_scale(results_store, stack_zarr, tmp_path):
    assert get_reader(str(stack_zarr)) is None  # a plain OME-Zarr image is left to other readers
    assert get_reader(str(tmp_path / "missing.zarr")) is None
    assert get_reader(str(tmp_path / "image.tif")) is None
    reader = get_reader(str(results_store))
    layers = reader(str(results_store))
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["cells_mmse", "cells_variance", "cells_map", "cells_samples"]
    # each layer carries its kind (as the Predict panel's results do), so Export writes it as that kind
    assert [result_kind(kw["metadata"]) for _, kw, _ in layers] == ["mmse", "variance", "map", "samples"]
    assert layers[0][1]["metadata"]["divnoising"]["seed"] == 1 and layers[1][1]["colormap"] == "magma"
    res = read_results(results_store)
    mmse, kw, kind = layers[0]
    assert kind == "image" and kw["multiscale"] and len(mmse) == 2
    assert kw["scale"] == pytest.approx([1.0, 0.3, 0.3])
    np.testing.assert_array_equal(np.asarray(mmse[0][2]), res["mmse"][0][2])
    samples, kw, _ = layers[3]
    assert samples.shape == (2, 5, 72, 136) and kw["scale"] == pytest.approx([1.0, 1.0, 0.3, 0.3])
    np.testing.assert_array_equal(np.asarray(samples[1, 3]), res["samples"][3, 1])


def test_napari_opens_the_store_with_the_plugin(make_napari_viewer, results_store):
    viewer = make_napari_viewer()
    viewer.open(str(results_store), plugin="napari-divnoising")
    assert [layer.name for layer in viewer.layers] == ["cells_mmse", "cells_variance", "cells_map", "cells_samples"]
    mmse = viewer.layers["cells_mmse"]
    assert mmse.multiscale and tuple(mmse.scale) == pytest.approx((1.0, 0.3, 0.3))
    assert tuple(viewer.layers["cells_samples"].scale) == pytest.approx((1.0, 1.0, 0.3, 0.3))
