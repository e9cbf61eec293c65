"""Predict panel writing to an OME-Zarr results store: lazy layers over the store, stop and resume, refusals."""

from __future__ import annotations

import time

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch

from napari_divnoising._widgets._session import get_session
from napari_divnoising._widgets.predict_widget import OUTPUT_STORE, PredictWidget
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.outputs import result_kind
from napari_divnoising.scale import ome, read_results, runner


def tiny_model(seed: int = 0, name: str = "tiny") -> DivNoisingModel:
    torch.manual_seed(seed)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=8)
    noise = GaussianNoiseModel(a=0.0, b=100.0, sigma_min=1.0, trainable=False)
    return DivNoisingModel(net, noise, data_mean=50.0, data_std=20.0, name=name)


def stack(frames: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(50, 20, (frames, 64, 64)).astype(np.float32)


@pytest.fixture
def panel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    qtbot.addWidget(w)
    get_session(viewer).set_trained_model(tiny_model(), "test")
    w.n_samples.setValue(2)
    w.keep_samples.setValue(2)
    yield viewer, w
    w.runner.stop_and_wait()
    w.prior_runner.stop_and_wait()


@pytest.fixture
def units_run(monkeypatch):
    """Units computed (frame, row, col), in order; ``delay[0]`` seconds are added to each."""
    computed: list[tuple[int, int, int]] = []
    delay = [0.0]
    real = runner.run_unit

    def counting(job, unit):
        time.sleep(delay[0])
        computed.append(tuple(unit))
        return real(job, unit)

    monkeypatch.setattr(runner, "run_unit", counting)
    return computed, delay


def to_store(w: PredictWidget, path) -> None:
    w.output_mode.setCurrentText(OUTPUT_STORE)
    w.store_path.setText(str(path))


def errors(notes):
    return [text for level, text in notes if level == "error"]


def test_results_are_lazy_layers_over_the_store(panel, wait_for, tmp_path, notes, units_run):
    viewer, w = panel
    viewer.add_image(stack(), name="st", scale=(1.0, 0.5, 0.5))
    out = tmp_path / "st.ome.zarr"
    to_store(w, out)
    assert w.store_row.isVisibleTo(w) and w.export_button.isEnabled() is False
    w.predict_button.click()
    wait_for(w.runner)
    assert not errors(notes), notes
    names = ["st_mmse", "st_variance", "st_samples"]
    assert [layer.name for layer in viewer.layers] == ["st", *names]
    res = read_results(out)
    assert res["complete"] == 1.0
    stored = {"mmse": res["mmse"][0][...], "variance": res["variance"][...],
              "samples": np.moveaxis(res["samples"][...], 1, 0)}
    for name in names:
        layer = viewer.layers[name]
        kind = result_kind(layer.metadata)
        assert isinstance(layer.data, da.Array), name  # lazy: a dask array over the store
        np.testing.assert_array_equal(np.asarray(layer.data), stored[kind])
    assert np.ptp(stored["mmse"]) > 0 and np.isfinite(stored["mmse"]).all()
    # What the canvas shows is the finished frame, not the empty chunk napari read (and cached) at the start.
    step = int(viewer.dims.current_step[-3])  # the frame axis (the samples layer adds one before it)
    np.testing.assert_array_equal(np.asarray(viewer.layers["st_mmse"]._data_view), stored["mmse"][step])
    assert tuple(viewer.layers["st_mmse"].scale) == pytest.approx((1.0, 0.5, 0.5))
    assert tuple(viewer.layers["st_samples"].scale) == pytest.approx((1.0, 1.0, 0.5, 0.5))
    assert res["scale"][0] == pytest.approx([1.0, 0.5, 0.5])  # the store on disk has the layer's pixel size
    assert len(units_run[0]) == 3
    # The same job again: nothing to compute, the same layers (not duplicates).
    first = viewer.layers["st_mmse"]
    w.predict_button.click()
    wait_for(w.runner)
    assert len(units_run[0]) == 3 and not errors(notes)
    assert [layer.name for layer in viewer.layers] == ["st", *names] and viewer.layers["st_mmse"] is first
    assert "Done" in w.status.text()


def test_single_image_to_a_store(panel, wait_for, tmp_path, notes):
    viewer, w = panel
    viewer.add_image(stack(1)[0], name="img", translate=(5.0, 3.0))
    to_store(w, tmp_path / "img.ome.zarr")
    w.compute_map.setChecked(True)
    w.predict_button.click()
    wait_for(w.runner)
    assert not errors(notes), notes
    res = read_results(tmp_path / "img.ome.zarr")
    for name, stored in (("img_mmse", res["mmse"][0]), ("img_map", res["map"]), ("img_samples", res["samples"])):
        layer = viewer.layers[name]
        np.testing.assert_array_equal(np.asarray(layer.data), stored[...])
    assert viewer.layers["img_samples"].data.shape == (2, 64, 64)
    assert tuple(viewer.layers["img_mmse"].translate) == (5.0, 3.0)  # placed on the input layer
    assert tuple(viewer.layers["img_samples"].translate) == (0.0, 5.0, 3.0)


def test_stop_then_predict_again_resumes(panel, wait_for, qtbot, tmp_path, notes, units_run):
    viewer, w = panel
    computed, delay = units_run
    viewer.add_image(stack(6), name="st")
    out = tmp_path / "st.ome.zarr"
    to_store(w, out)
    delay[0] = 0.3
    w.predict_button.click()
    qtbot.waitUntil(lambda: len(computed) >= 2, timeout=60_000)
    w.stop_button.click()
    wait_for(w.runner)
    first_run = list(computed)
    done = ome.done_units(out)
    assert 0 < done.sum() < 6 and "resume" in w.status.text()
    assert viewer.layers["st_mmse"].data.shape == (6, 64, 64)
    finished = np.asarray(ome.read_results(out)["mmse"][0][...])
    delay[0] = 0.0
    w.predict_button.click()
    wait_for(w.runner)
    assert not errors(notes), notes
    second_run = computed[len(first_run):]
    marked_before = {(int(f), 0, 0) for f in np.flatnonzero(done[:, 0, 0])}
    assert not marked_before & set(second_run)  # finished units were not computed again
    assert marked_before | set(second_run) == {(f, 0, 0) for f in range(6)}
    assert ome.done_units(out).all()
    for f, _, _ in marked_before:
        np.testing.assert_array_equal(np.asarray(viewer.layers["st_mmse"].data[f]), finished[f])
    stored = read_results(out)["mmse"][0][...]
    np.testing.assert_array_equal(np.asarray(viewer.layers["st_mmse"].data), stored)
    # The canvas shows the frame as finished, not the empty chunk napari read (and cached) before.
    step = int(viewer.dims.current_step[-3])
    np.testing.assert_array_equal(np.asarray(viewer.layers["st_mmse"]._data_view), stored[step])
    assert [layer.name for layer in viewer.layers].count("st_mmse") == 1


def test_store_of_another_model_is_refused_unless_confirmed(panel, wait_for, tmp_path, notes, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    viewer, w = panel
    viewer.add_image(stack(2), name="st")
    out = tmp_path / "st.ome.zarr"
    to_store(w, out)
    w.predict_button.click()
    wait_for(w.runner)
    before = ome.read_info(out)
    get_session(viewer).set_trained_model(tiny_model(seed=1, name="other"), "test")
    asked: list[str] = []

    def answer(reply):
        def question(_parent, _title, text, *args, **kwargs):
            asked.append(text)
            return reply
        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    w.predict_button.click()
    assert not w.runner.running and len(asked) == 1 and "another model" in asked[0]
    warnings = [text for level, text in notes if level == "warning"]
    assert len(warnings) == 1 and "nothing was changed" in warnings[0]
    assert ome.read_info(out) == before  # untouched
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    w.predict_button.click()
    wait_for(w.runner)
    assert not errors(notes), notes
    info = ome.read_info(out)
    assert info["model"]["sha256"] != before["model"]["sha256"] and info["model"]["name"] == "other"
    assert ome.done_units(out).all()


def test_a_store_of_other_layer_data_is_not_resumed(panel, wait_for, tmp_path, notes, monkeypatch, units_run):
    from qtpy.QtWidgets import QMessageBox

    viewer, w = panel
    computed, _ = units_run
    layer = viewer.add_image(stack(3), name="st")
    out = tmp_path / "st.ome.zarr"
    to_store(w, out)
    w.predict_button.click()
    wait_for(w.runner)
    assert len(computed) == 3 and ome.done_units(out).all()
    layer.data = stack(3) + 5.0  # the layer now holds other pixels of the same shape
    asked: list[str] = []

    def question(_parent, _title, text, *args, **kwargs):
        asked.append(text)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(QMessageBox, "question", question)
    w.predict_button.click()
    wait_for(w.runner)
    assert len(asked) == 1 and "other image data" in asked[0]
    assert not errors(notes), notes
    assert len(computed) == 6  # started over: every unit computed for the new pixels
    assert ome.read_info(out)["input"]["fingerprint"] == ome.content_fingerprint(layer.data, layer.data.shape)


def test_a_zarr_store_that_is_not_a_results_store_is_never_replaced(panel, tmp_path, notes, monkeypatch):
    from qtpy.QtWidgets import QMessageBox

    from napari_divnoising.scale.arrays import write_array_store

    viewer, w = panel
    viewer.add_image(stack(2), name="st")
    theirs = write_array_store(tmp_path / "data.ome.zarr", stack(2), ["t", "y", "x"])
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: pytest.fail("must not offer to delete it"))
    to_store(w, theirs)
    w.predict_button.click()
    assert not w.runner.running
    assert len(errors(notes)) == 1 and "not a DivNoising results store" in errors(notes)[0]
    np.testing.assert_array_equal(ome.open_input(theirs).open()[...], stack(2))
    a_file = tmp_path / "notes.ome.zarr"
    a_file.write_text("mine")
    to_store(w, a_file)
    w.predict_button.click()
    assert not w.runner.running and len(errors(notes)) == 2 and "not a Zarr store" in errors(notes)[1]
    assert a_file.read_text() == "mine" and w.predict_button.isEnabled()


def test_layer_from_a_tiff_is_read_from_its_file(panel, wait_for, tmp_path, notes, monkeypatch):
    from napari_divnoising.scale import arrays

    viewer, w = panel
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, stack(2), imagej=True, metadata={"axes": "TYX"})
    (layer,) = viewer.open(path, plugin="napari")
    w.image_layer.set_layer(layer.name)
    w.output_mode.setCurrentText(OUTPUT_STORE)
    assert w.store_path.text() == str(tmp_path / "cells_divnoising.ome.zarr")  # next to the file
    monkeypatch.setattr(arrays, "write_array_store", lambda *a, **k: pytest.fail("the layer was copied"))
    w.predict_button.click()
    wait_for(w.runner)
    assert not errors(notes), notes
    assert ome.read_info(tmp_path / "cells_divnoising.ome.zarr")["input"]["path"] == str(path)
    assert isinstance(viewer.layers["cells_divnoising_mmse"].data, da.Array)


def test_read_only_location_is_one_notification(panel, wait_for, tmp_path, notes, monkeypatch):
    import zarr

    viewer, w = panel
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, stack(2), imagej=True, metadata={"axes": "TYX"})
    (layer,) = viewer.open(path, plugin="napari")  # read from its file: the store is the only thing written

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(zarr, "open_group", refuse)  # as a read-only folder does (the tests may run as root)
    to_store(w, tmp_path / "st.ome.zarr")
    w.predict_button.click()
    wait_for(w.runner)
    assert len(errors(notes)) == 1 and "permission denied" in errors(notes)[0].lower(), notes
    assert "unexpectedly" not in errors(notes)[0]
    assert "failed" in w.status.text() and w.predict_button.isEnabled()
    assert layer in viewer.layers and not (tmp_path / "st.ome.zarr").exists()
