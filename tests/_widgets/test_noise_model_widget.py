"""The Noise model widget: fit from a calibration layer / pairs, plot, save, load, choice shared with Train."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising._widgets._session import NOISE_COLEARN, NOISE_ESTIMATED, NOISE_FITTED, get_session
from napari_divnoising._widgets.noise_model_widget import (
    SOURCE_NOISY,
    SOURCE_PAIRS,
    NoiseModelWidget,
)
from napari_divnoising.noise_models import GMMNoiseModel


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = NoiseModelWidget(viewer)
    qtbot.addWidget(w)
    yield viewer, w
    w.runner.stop_and_wait()


def _errors(monkeypatch):
    messages = []
    import napari_divnoising._widgets._notify as notify

    monkeypatch.setattr(notify, "show_error", messages.append)
    return messages


def test_fit_from_calibration_layer_learns_the_noise_variance(widget, qtbot, wait_for, calibration_stack):
    viewer, w = widget
    viewer.add_image(calibration_stack, name="calib")
    assert w.calibration_layer.currentText() == "calib"
    w.fit_button.click()
    assert not w.fit_button.isEnabled()  # no second start while running
    wait_for(w.runner)
    model = get_session(viewer).noise_model
    assert isinstance(model, GMMNoiseModel)
    # Camera noise of the fixture: variance = 2 * s + 9; the fit must recover it roughly.
    s = torch.tensor([30.0, 80.0])
    var = model.variance(s).detach().numpy()
    np.testing.assert_allclose(var, 2 * s.numpy() + 9, rtol=0.35)
    assert w.save_button.isEnabled() and w.fit_button.isEnabled()
    assert len(w.plot.ax.lines) >= 1 and len(w.plot.ax.collections) >= 1  # model curve + measured dots


def test_save_and_load_round_trip(widget, qtbot, wait_for, calibration_stack, tmp_path, monkeypatch):
    viewer, w = widget
    viewer.add_image(calibration_stack, name="calib")
    w.fit_button.click()
    wait_for(w.runner)
    fitted = get_session(viewer).noise_model
    from qtpy.QtWidgets import QFileDialog

    target = tmp_path / "nm.npz"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    w.save_button.click()
    assert target.exists()
    get_session(viewer).set_noise_model(None)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(target), ""))
    w.load_button.click()
    loaded = get_session(viewer).noise_model
    assert isinstance(loaded, GMMNoiseModel)
    s = torch.linspace(10, 100, 5)
    torch.testing.assert_close(loaded.variance(s), fitted.variance(s))


def test_fit_from_noisy_clean_pairs(widget, qtbot, wait_for, noisy_clean_pair):
    viewer, w = widget
    noisy, clean = noisy_clean_pair
    viewer.add_image(noisy, name="noisy")
    viewer.add_image(clean, name="clean")
    w.source.setCurrentText(SOURCE_PAIRS)
    w.noisy_layer.set_layer("noisy")
    w.clean_layer.set_layer("clean")
    w.fit_button.click()
    wait_for(w.runner)
    model = get_session(viewer).noise_model
    assert model is not None
    assert float(model.variance(torch.tensor([100.0]))) > float(model.variance(torch.tensor([20.0])))


def test_fit_from_noisy_images_alone(widget, qtbot, wait_for, calibration_stack, monkeypatch):
    viewer, w = widget
    errors = _errors(monkeypatch)
    w.source.setCurrentText(SOURCE_NOISY)
    w.fit_button.click()
    assert errors and "Choose a layer of noisy images" in errors[0]  # nothing to fit yet: one line
    viewer.add_image(calibration_stack[:4], name="noisy frames")
    w.noisy_only_layer.set_layer("noisy frames")
    w.fit_button.click()
    wait_for(w.runner)
    model = get_session(viewer).noise_model
    assert isinstance(model, GMMNoiseModel)
    s = torch.tensor([30.0, 80.0])
    np.testing.assert_allclose(model.variance(s).detach().numpy(), 2 * s.numpy() + 9, rtol=0.35)  # as calibrated
    assert "noisy images 'noisy frames'" in w.status.text() and "Poisson-Gaussian" in w.status.text()
    assert get_session(viewer).noise_choice == NOISE_FITTED


def test_single_image_as_calibration_gives_a_hint(widget, qtbot, wait_for, monkeypatch):
    viewer, w = widget
    errors = _errors(monkeypatch)
    viewer.add_image(np.random.default_rng(0).random((32, 32)), name="single")
    assert w.calibration_layer.current_layer() is None  # not offered by default
    w.calibration_layer.set_layer("single")  # the user picks it anyway
    w.fit_button.click()
    assert errors and "many frames" in errors[0]
    assert not w.runner.running and w.fit_button.isEnabled()


def test_rgb_and_label_layers_are_not_offered(widget, monkeypatch):
    viewer, w = widget
    import napari_divnoising._widgets._layers as layers_mod

    warnings = []
    monkeypatch.setattr(layers_mod, "show_warning", warnings.append)
    viewer.add_image(np.zeros((16, 16, 3), dtype=np.uint8), name="rgb", rgb=True)
    viewer.add_labels(np.zeros((16, 16), dtype=np.uint8), name="labels")
    viewer.add_image(np.random.default_rng(0).random((3, 16, 16)), name="stack")
    names = [w.calibration_layer.itemText(i) for i in range(w.calibration_layer.count())]
    assert names == ["stack"]
    assert any("RGB" in m for m in warnings)


def test_stop_keeps_previous_model_and_frees_buttons(widget, qtbot, wait_for, calibration_stack):
    viewer, w = widget
    sentinel = GMMNoiseModel.initial(0.0, 100.0)
    get_session(viewer).set_noise_model(sentinel, "previous")
    viewer.add_image(calibration_stack, name="calib")
    w.fit_button.click()
    qtbot.waitUntil(lambda: w.progress.value() > 0, timeout=60_000)
    w.stop_button.click()
    wait_for(w.runner)
    assert get_session(viewer).noise_model is sentinel
    assert w.fit_button.isEnabled() and not w.stop_button.isEnabled()


def test_choice_is_shared_through_the_session(widget):
    viewer, w = widget
    session = get_session(viewer)
    assert session.noise_choice == NOISE_ESTIMATED == w.choice.currentData()  # until a model is fitted or loaded
    w.choice.setCurrentIndex(w.choice.findData(NOISE_COLEARN))
    assert session.noise_choice == NOISE_COLEARN
    session.set_noise_choice(NOISE_FITTED)
    assert w.choice.currentData() == NOISE_FITTED


def test_deleted_widget_no_longer_listens(make_napari_viewer, qtbot):
    from qtpy.QtCore import QCoreApplication, QEvent

    viewer = make_napari_viewer()
    session = get_session(viewer)

    def listeners() -> tuple[int, ...]:
        layer_events = viewer.layers.events
        return (len(session.noise_model_changed), len(session.noise_choice_changed),
                len(layer_events.inserted.callbacks), len(layer_events.removed.callbacks))

    before = listeners()
    w = NoiseModelWidget(viewer)
    assert all(n > b for n, b in zip(listeners(), before))  # the live widget follows session and layers
    w.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete.value)
    qtbot.wait(10)
    assert listeners() == before  # every connection of the deleted widget is gone
    session.set_noise_model(GMMNoiseModel.initial(0.0, 10.0), "after deletion")  # must not raise
    session.set_noise_choice(NOISE_COLEARN)
    viewer.add_image(np.zeros((3, 8, 8)), name="late")  # layer pickers of the deleted widget stay quiet
    assert session.noise_model_description == "after deletion" and session.noise_choice == NOISE_COLEARN


def test_calibration_default_is_a_stack_not_ticked_for_training(make_napari_viewer, qtbot, monkeypatch):
    """Never the last layer by default: a 2-D image or a training stack is not silently fitted."""
    from napari_divnoising._widgets.train_widget import TrainWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((4, 16, 16)).astype(np.float32), name="val_noisy")
    viewer.add_image(rng.random((16, 16)).astype(np.float32), name="noisy")
    train = TrainWidget(viewer)
    noise = NoiseModelWidget(viewer)
    qtbot.addWidget(train)
    qtbot.addWidget(noise)
    assert noise.calibration_layer.currentText() == "val_noisy"  # the only stack, not the last layer
    train.images.set_checked(["val_noisy"])
    assert noise.calibration_layer.current_layer() is None  # now a training image: no default
    errors = _errors(monkeypatch)
    noise.fit_button.click()
    assert "Choose a calibration stack layer" in errors[-1]
    assert not noise.runner.running
    viewer.add_image(rng.random((6, 16, 16)).astype(np.float32), name="calib")
    assert noise.calibration_layer.currentText() == "calib"


def test_no_default_calibration_layer_when_only_2d_images(widget):
    viewer, w = widget
    viewer.add_image(np.zeros((16, 16), np.float32), name="noisy")
    assert w.calibration_layer.current_layer() is None
    assert w.noisy_layer.currentText() == "noisy"
