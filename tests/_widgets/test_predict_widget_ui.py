"""Predict widget behaviour independent of the prediction core: streaming into layers, geometry, stop, export.

The core generator is replaced by a scripted one; the end-to-end test with the real model and
``predict_iter`` is in test_predict_widget.py.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

import napari_divnoising._widgets.predict_widget as predict_widget
from napari_divnoising._widgets._session import get_session
from napari_divnoising._widgets.predict_widget import PredictWidget
from napari_divnoising.prediction import PredictionDone, PredictionResult
from napari_divnoising.workflows import PredictionUpdate


def scripted_prediction(delay: float = 0.0, batch: int = 4):
    """Samples = image + k (k = 1, 2, ...): MMSE and variance are known exactly."""

    def events(model, image, n_samples, keep_samples=20, compute_map=False, **kwargs):
        calls.append(kwargs)
        if image.ndim == 3:  # a stack: frame after frame, as stream_prediction reports it
            yield from stack_events(image, n_samples, keep_samples)
            return
        done, total = 0, 0.0
        sq = 0.0
        kept = np.zeros((0, *image.shape), np.float32)
        while done < n_samples:
            k = min(batch, n_samples - done)
            samples = np.stack([image + (done + i + 1) for i in range(k)]).astype(np.float32)
            done += k
            total = total + samples.sum(0)
            sq = sq + (samples**2).sum(0)
            mmse = total / done
            var = sq / done - mmse**2
            time.sleep(delay)
            changed = len(kept) < keep_samples
            kept = np.concatenate([kept, samples])[:keep_samples]
            yield PredictionUpdate(done, n_samples, mmse, var, kept.copy() if changed else None)
        yield PredictionDone(PredictionResult(mmse=mmse, variance=var, map=mmse.copy() if compute_map else None,
                                              samples=kept, n_samples=n_samples, seed=3))

    def stack_events(stack, n_samples, keep):
        frames = len(stack)
        mmse = np.full(stack.shape, np.nan, np.float32)
        var = np.full(stack.shape, np.nan, np.float32)
        kept = np.full((min(keep, n_samples), *stack.shape), np.nan, np.float32)
        for f in range(frames):
            for done in range(1, n_samples + 1):
                time.sleep(delay)
                mmse[f] = stack[f] + (done + 1) / 2
                var[f] = 1.0
                if done <= len(kept):
                    kept[done - 1, f] = stack[f] + done
                yield PredictionUpdate(f * n_samples + done, frames * n_samples, mmse.copy(), var.copy(), kept.copy())
        yield PredictionDone(PredictionResult(mmse=mmse, variance=var, map=None, samples=kept,
                                              n_samples=n_samples, seed=3))

    calls: list = []
    events.calls = calls
    return events


@pytest.fixture
def widget(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    qtbot.addWidget(w)
    get_session(viewer).set_trained_model(SimpleNamespace(name="fake", history={}), "fake")
    yield viewer, w
    w.runner.stop_and_wait()
    w.prior_runner.stop_and_wait()


def test_streams_samples_mmse_variance_with_input_geometry(widget, wait_for, monkeypatch):
    viewer, w = widget
    monkeypatch.setattr(predict_widget, "stream_prediction", scripted_prediction())
    image = np.random.default_rng(0).random((24, 20)).astype(np.float32)
    viewer.add_image(image, name="cells", scale=(0.5, 0.25), translate=(10, 20), units=("um", "um"))
    w.n_samples.setValue(10)
    w.keep_samples.setValue(6)
    w.compute_map.setChecked(True)
    w.predict_button.click()
    wait_for(w.runner)
    names = [layer.name for layer in viewer.layers]
    assert names.count("cells_mmse") == 1 and "cells_variance" in names and "cells_map" in names
    mmse = viewer.layers["cells_mmse"]
    np.testing.assert_allclose(mmse.data, image + 5.5, rtol=1e-5)  # mean of image + 1..10
    np.testing.assert_allclose(viewer.layers["cells_variance"].data, 8.25, rtol=1e-3)  # var of 1..10
    samples = viewer.layers["cells_samples"]
    assert samples.data.shape == (6, 24, 20)  # capped at "Samples shown"
    np.testing.assert_allclose(samples.data[5], image + 6)
    for layer in (mmse, viewer.layers["cells_variance"], viewer.layers["cells_map"]):
        assert tuple(layer.scale) == (0.5, 0.25)
        assert tuple(layer.translate) == (10, 20)
        assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert tuple(samples.scale)[1:] == (0.5, 0.25) and tuple(samples.translate)[1:] == (10, 20)
    # results compare side by side with the input: same contrast limits (the variance has its own)
    input_limits = tuple(viewer.layers["cells"].contrast_limits)
    for name in ("cells_mmse", "cells_map", "cells_samples"):
        assert tuple(viewer.layers[name].contrast_limits) == pytest.approx(input_limits)
    assert tuple(viewer.layers["cells_variance"].contrast_limits) != pytest.approx(input_limits)


def test_rerun_updates_layers_instead_of_duplicating(widget, wait_for, monkeypatch):
    viewer, w = widget
    monkeypatch.setattr(predict_widget, "stream_prediction", scripted_prediction())
    viewer.add_image(np.zeros((16, 16), np.float32), name="img")
    w.n_samples.setValue(4)
    w.predict_button.click()
    wait_for(w.runner)
    n_layers = len(viewer.layers)
    first_mmse = viewer.layers["img_mmse"]
    w.n_samples.setValue(8)
    w.predict_button.click()
    wait_for(w.runner)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["img_mmse"] is first_mmse
    np.testing.assert_allclose(first_mmse.data, 4.5)


def test_stack_input_keeps_the_extra_axis(widget, wait_for, monkeypatch):
    viewer, w = widget
    monkeypatch.setattr(predict_widget, "stream_prediction", scripted_prediction())
    viewer.add_image(np.zeros((3, 16, 16), np.float32), name="stack", scale=(2.0, 0.5, 0.5))
    w.n_samples.setValue(4)
    w.predict_button.click()
    wait_for(w.runner)
    assert viewer.layers["stack_mmse"].data.shape == (3, 16, 16)
    assert tuple(viewer.layers["stack_mmse"].scale) == (2.0, 0.5, 0.5)
    assert viewer.layers["stack_samples"].data.shape == (4, 3, 16, 16)
    assert tuple(viewer.layers["stack_samples"].scale) == (1.0, 2.0, 0.5, 0.5)


def test_stop_midway_leaves_a_valid_result(widget, qtbot, wait_for, monkeypatch):
    viewer, w = widget
    monkeypatch.setattr(predict_widget, "stream_prediction", scripted_prediction(delay=0.05, batch=1))
    viewer.add_image(np.zeros((16, 16), np.float32), name="img")
    w.n_samples.setValue(10_000)
    w.predict_button.click()
    assert not w.predict_button.isEnabled()
    qtbot.waitUntil(lambda: "img_mmse" in viewer.layers and w.progress.value() >= 3, timeout=60_000)
    w.stop_button.click()
    wait_for(w.runner)
    done = w.progress.value()
    assert 3 <= done < 10_000
    # The running mean of 1..done is (done + 1) / 2: the layer holds a consistent, finished state.
    np.testing.assert_allclose(viewer.layers["img_mmse"].data, (done + 1) / 2)
    assert w.predict_button.isEnabled() and w.export_button.isEnabled()
    assert "Stopped" in w.status.text()


def test_export_writes_tiffs_and_asks_before_overwriting(widget, wait_for, monkeypatch, tmp_path):
    viewer, w = widget
    from qtpy.QtWidgets import QMessageBox

    monkeypatch.setattr(predict_widget, "stream_prediction", scripted_prediction())
    viewer.add_image(np.ones((16, 16), np.float32), name="img", scale=(0.2, 0.2), units=("um", "um"))
    w.n_samples.setValue(4)
    w.compute_map.setChecked(True)
    w.predict_button.click()
    wait_for(w.runner)
    w.export_folder.setText(str(tmp_path))
    w.export_button.click()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["img_map.tif", "img_mmse.tif", "img_samples.tif", "img_variance.tif"]
    with tifffile.TiffFile(tmp_path / "img_mmse.tif") as tif:
        np.testing.assert_allclose(tif.asarray(), 3.5)
        x_res = tif.pages[0].tags["XResolution"].value
    assert x_res[0] / x_res[1] == pytest.approx(5.0)
    assert tifffile.imread(tmp_path / "img_samples.tif").shape == (4, 16, 16)
    from napari_divnoising.export import read_tiff_metadata

    meta = read_tiff_metadata(tmp_path / "img_mmse.tif")
    assert meta["pixel_size"] == pytest.approx((0.2, 0.2)) and meta["unit"] == "um"
    assert "mmse" in (meta["info"] + str(meta["properties"])).lower()
    props = meta["properties"]
    assert props["divnoising_model"] == "fake" and props["divnoising_n_samples"] == "4"
    assert props["divnoising_seed"] == "3" and props["divnoising_source"] == "img"
    assert props["divnoising_orientations"] == "4"  # 4 samples: one in each of 4 orientations

    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.No)
    before = (tmp_path / "img_mmse.tif").stat().st_mtime_ns
    assert w.export() == []
    assert asked and (tmp_path / "img_mmse.tif").stat().st_mtime_ns == before
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    assert len(w.export()) == 4


def test_no_model_and_removed_input_layer(widget, wait_for, monkeypatch):
    viewer, w = widget
    errors = []
    import napari_divnoising._widgets._notify as notify

    monkeypatch.setattr(notify, "show_error", errors.append)
    get_session(viewer).set_trained_model(None)
    viewer.add_image(np.zeros((16, 16), np.float32), name="img")
    w.predict_button.click()
    assert errors and "No model" in errors[-1]
    # Removing the input layer while predicting: the worker uses its own copy and finishes.
    get_session(viewer).set_trained_model(SimpleNamespace(name="fake", history={}))
    monkeypatch.setattr(predict_widget, "stream_prediction", scripted_prediction(delay=0.02, batch=1))
    w.n_samples.setValue(20)
    w.predict_button.click()
    viewer.layers.remove("img")
    wait_for(w.runner)
    assert viewer.layers["img_mmse"].data.shape == (16, 16)


def test_result_layers_carry_kind_and_provenance_and_user_layers_are_left_alone(widget, wait_for, monkeypatch):
    viewer, w = widget
    from napari_divnoising.outputs import result_facts

    monkeypatch.setattr(predict_widget, "stream_prediction", scripted_prediction())
    viewer.add_image(np.zeros((16, 16), np.float32), name="img")
    mine = viewer.add_image(np.full((16, 16), 7.0, np.float32), name="img_mmse")  # the user's own layer
    w.n_samples.setValue(4)
    w.predict_button.click()
    wait_for(w.runner)
    np.testing.assert_array_equal(mine.data, 7.0)
    assert result_facts(mine.metadata) == {}
    result = viewer.layers[w.output_layer_names["mmse"]]
    assert result is not mine
    np.testing.assert_allclose(result.data, 2.5)
    facts = result_facts(result.metadata)
    assert facts == {"kind": "mmse", "source": "img", "model": "fake", "n_samples": 4, "seed": 3, "orientations": 4,
                     "offsets": 1}
    assert result_facts(viewer.layers[w.output_layer_names["variance"]].metadata)["kind"] == "variance"


def test_device_choice_reaches_the_core_and_status_shows_rates_and_counts(widget, wait_for, monkeypatch):
    viewer, w = widget
    events = scripted_prediction()
    monkeypatch.setattr(predict_widget, "stream_prediction", events)
    viewer.add_image(np.zeros((5, 8, 8), np.float32), name="stack")
    w.device.setCurrentText("cpu")
    w.n_samples.setValue(3)
    w.predict_button.click()
    wait_for(w.runner)
    assert str(events.calls[-1]["device"]) == "cpu" and events.calls[-1]["min_interval_s"] > 0
    assert w.device_label.text() == "Device: cpu" and not w.activity.active
    assert "Done: 3 samples per frame, 5 frames" in w.status.text()
    w._started -= 1.0  # a running update shows the rate
    w._pending_update = PredictionUpdate(4, 15, np.zeros((5, 8, 8)), np.zeros((5, 8, 8)), None)
    w._render_pending()
    assert "Frame 2 of 5: 1 of 3 samples" in w.status.text() and "samples/s" in w.status.text()


def test_predicting_a_stack_raises_no_warning_and_results_are_not_offered_as_inputs(widget, wait_for, monkeypatch):
    import napari_divnoising._widgets._layers as layers
    from napari_divnoising._widgets.train_widget import TrainWidget

    viewer, w = widget
    warnings = []
    monkeypatch.setattr(layers, "show_warning", warnings.append)
    monkeypatch.setattr(predict_widget, "stream_prediction", scripted_prediction())
    train = TrainWidget(viewer)
    viewer.add_image(np.zeros((3, 8, 8), np.float32), name="stack")
    w.n_samples.setValue(2)
    w.predict_button.click()
    wait_for(w.runner)
    assert viewer.layers["stack_samples"].ndim == 4
    assert warnings == []
    assert [train.images.item(i).text() for i in range(train.images.count())] == ["stack"]
    assert [w.image_layer.itemText(i) for i in range(w.image_layer.count())] == ["stack"]
    viewer.add_image(np.zeros((2, 3, 8, 8), np.float32), name="user_4d")  # the user's own 4-D layer is explained
    assert len(warnings) == 1
    train.close()


def test_stopped_stack_exports_only_reached_frames_marked_partial(widget, qtbot, wait_for, monkeypatch, tmp_path):
    viewer, w = widget
    monkeypatch.setattr(predict_widget, "stream_prediction", scripted_prediction(delay=0.02))
    viewer.add_image(np.zeros((50, 8, 8), np.float32), name="stack")
    w.n_samples.setValue(4)
    w.keep_samples.setValue(2)
    w.predict_button.click()
    qtbot.waitUntil(lambda: w.progress.value() >= 9, timeout=10_000)
    w.stop_button.click()
    wait_for(w.runner)
    reached = w._reached_frames()
    assert 2 <= reached < 50
    assert "not finished" in w.status.text() and "_partial" in w.status.text()
    w.export_folder.setText(str(tmp_path))
    written = w.export()
    assert sorted(p.name for p in written) == ["stack_partial_mmse.tif", "stack_partial_samples.tif",
                                               "stack_partial_variance.tif"]
    mmse = tifffile.imread(tmp_path / "stack_partial_mmse.tif")
    assert mmse.shape == (reached, 8, 8) and np.isfinite(mmse).all()
    samples = tifffile.imread(tmp_path / "stack_partial_samples.tif")
    assert samples.shape == (reached, 2, 8, 8) and np.isfinite(samples).all()  # ImageJ order: frames first


def test_unavailable_device_is_one_clear_line(widget, monkeypatch):
    import torch

    import napari_divnoising._widgets._notify as notify

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    viewer, w = widget
    errors = []
    monkeypatch.setattr(notify, "show_error", errors.append)
    viewer.add_image(np.zeros((16, 16), np.float32), name="img")
    w.device.setCurrentText("cuda")
    w.predict_button.click()
    assert errors and "CUDA" in errors[-1] and "\n" not in errors[-1]
    assert not w.runner.running
