"""Predict widget with a real DivNoising model (random weights: mechanics, not quality)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_divnoising._widgets._session import get_session
from napari_divnoising._widgets.predict_widget import MODEL_FILE, PredictWidget
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel


def tiny_model() -> DivNoisingModel:
    torch.manual_seed(0)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=8)
    noise = GaussianNoiseModel(a=0.0, b=100.0, sigma_min=1.0, trainable=False)
    return DivNoisingModel(net, noise, data_mean=50.0, data_std=20.0, name="tiny")


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    qtbot.addWidget(w)
    get_session(viewer).set_trained_model(tiny_model(), "test")
    yield viewer, w
    w.runner.stop_and_wait()
    w.prior_runner.stop_and_wait()


def test_mmse_is_the_mean_of_the_streamed_samples(widget, wait_for):
    viewer, w = widget
    image = np.random.default_rng(0).normal(50, 20, (30, 36)).astype(np.float32)  # not a multiple of 4
    viewer.add_image(image, name="img", scale=(0.1, 0.1))
    w.n_samples.setValue(12)
    w.keep_samples.setValue(12)
    w.predict_button.click()
    wait_for(w.runner)
    samples = viewer.layers["img_samples"].data
    assert samples.shape == (12, 30, 36)
    assert np.ptp(samples, axis=0).mean() > 0  # the samples differ
    np.testing.assert_allclose(viewer.layers["img_mmse"].data, samples.mean(0), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(viewer.layers["img_variance"].data, samples.var(0), rtol=1e-3, atol=1e-3)
    assert tuple(viewer.layers["img_mmse"].scale) == (0.1, 0.1)


def test_stack_predicted_frame_by_frame(widget, wait_for):
    viewer, w = widget
    stack = np.random.default_rng(1).normal(50, 20, (2, 16, 16)).astype(np.float32)
    viewer.add_image(stack, name="st")
    w.n_samples.setValue(4)
    w.keep_samples.setValue(3)
    w.predict_button.click()
    wait_for(w.runner)
    assert viewer.layers["st_mmse"].data.shape == (2, 16, 16)
    assert np.isfinite(viewer.layers["st_mmse"].data).all()
    assert viewer.layers["st_samples"].data.shape == (3, 2, 16, 16)
    assert np.isfinite(viewer.layers["st_samples"].data).all()


def test_model_from_file_and_export(widget, wait_for, tmp_path, monkeypatch):
    viewer, w = widget
    from qtpy.QtWidgets import QFileDialog

    from napari_divnoising.model_io import save_model

    path = save_model(tiny_model(), tmp_path / "tiny.pt")
    get_session(viewer).set_trained_model(None)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    w.browse_model.click()
    assert w.model_source.currentText() == MODEL_FILE and w.current_model() is not None
    viewer.add_image(np.random.default_rng(0).normal(50, 20, (16, 16)).astype(np.float32), name="img")
    w.n_samples.setValue(3)
    w.predict_button.click()
    wait_for(w.runner)
    out = tmp_path / "out"
    w.export_folder.setText(str(out))
    written = w.export()
    assert {p.name for p in written} == {"img_mmse.tif", "img_variance.tif", "img_samples.tif"}
    np.testing.assert_allclose(tifffile.imread(out / "img_mmse.tif"), viewer.layers["img_mmse"].data, rtol=1e-6)


def test_bad_model_file_is_a_notification(widget, tmp_path, monkeypatch):
    viewer, w = widget
    errors = []
    import napari_divnoising._widgets._notify as notify

    monkeypatch.setattr(notify, "show_error", errors.append)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    assert not w.load_model_file(bad)
    assert errors


def test_generate_prior_samples(widget, wait_for):
    viewer, w = widget
    w.prior_count.setValue(3)
    w.prior_size.setValue(32)
    w.generate_button.click()
    wait_for(w.prior_runner)
    data = viewer.layers["prior_samples"].data
    assert data.shape == (3, 32, 32) and np.isfinite(data).all()
    assert not np.allclose(data[0], data[1])


def test_map_layer_when_asked(widget, wait_for):
    viewer, w = widget
    image = np.random.default_rng(3).normal(50, 20, (24, 24)).astype(np.float32)
    viewer.add_image(image, name="img", translate=(5, 7))
    w.n_samples.setValue(16)
    w.compute_map.setChecked(True)
    w.predict_button.click()
    wait_for(w.runner)
    map_layer = viewer.layers["img_map"]
    assert map_layer.data.shape == (24, 24) and np.isfinite(map_layer.data).all()
    assert tuple(map_layer.translate) == (5, 7)
    # The mode lies within the range of the samples, pixel by pixel.
    mmse, var = viewer.layers["img_mmse"].data, viewer.layers["img_variance"].data
    assert np.all(np.abs(map_layer.data - mmse) <= 6 * np.sqrt(var) + 1e-3)


@pytest.mark.parametrize(("orientations", "offsets"), [("8", "2"), ("1", "1"), ("1", "2")])
def test_the_chosen_orientations_and_offsets_are_used_and_recorded(widget, wait_for, orientations, offsets):
    from napari_divnoising.outputs import result_facts
    from napari_divnoising.prediction import predict

    viewer, w = widget
    assert (w.orientations.currentText(), w.offsets.currentText()) == ("8", "2")  # the defaults
    image = np.random.default_rng(3).normal(50, 20, (24, 32)).astype(np.float32)
    viewer.add_image(image, name="img")
    w.n_samples.setValue(16)
    w.orientations.setCurrentText(orientations)
    w.offsets.setCurrentText(offsets)
    w.predict_button.click()
    wait_for(w.runner)
    facts = result_facts(viewer.layers["img_mmse"].metadata)
    assert (facts["orientations"], facts["offsets"]) == (int(orientations), int(offsets))
    chosen = dict(orientations=int(orientations), offsets=int(offsets))
    expected = predict(tiny_model(), image, 16, seed=facts["seed"], **chosen)
    np.testing.assert_allclose(viewer.layers["img_mmse"].data, expected.mmse, rtol=1e-4, atol=1e-3)
    for key, value in chosen.items():
        other = predict(tiny_model(), image, 16, seed=facts["seed"], **{**chosen, key: 3 - value if key == "offsets"
                                                                          else 9 - value})
        assert not np.allclose(viewer.layers["img_mmse"].data, other.mmse, rtol=1e-4, atol=1e-3)
