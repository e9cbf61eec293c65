"""Train widget end to end with the real training core, on tiny synthetic data (a few steps)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_divnoising._widgets._session import NOISE_COLEARN, NOISE_FITTED, get_session
from napari_divnoising._widgets.train_widget import TrainWidget
from napari_divnoising.model import DivNoisingModel


@pytest.fixture
def widget(make_napari_viewer, qtbot, noisy_clean_pair):
    viewer = make_napari_viewer()
    noisy, _ = noisy_clean_pair
    viewer.add_image(noisy, name="noisy", scale=(0.5, 0.5))
    w = TrainWidget(viewer)
    qtbot.addWidget(w)
    w.images.set_checked(["noisy"])
    w.budget_unit.setCurrentText("steps")
    w.budget_value.setValue(6)
    w.patch_size.setValue(32)
    w.batch_size.setValue(4)
    w.device.setCurrentText("cpu")
    yield viewer, w
    w.runner.stop_and_wait()


def test_colearned_training_save_load_continue(widget, wait_for, monkeypatch, tmp_path, train_in_a_child_process):
    viewer, w = widget
    from qtpy.QtWidgets import QFileDialog

    get_session(viewer).set_noise_choice(NOISE_COLEARN)
    w.train_button.click()
    wait_for(w.runner, timeout=120_000)
    model = get_session(viewer).trained_model
    assert isinstance(model, DivNoisingModel)
    assert w.loss_plot.train_steps == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(w.loss_plot.train_loss))
    assert w.device_label.text() == "Device: cpu"
    assert w.progress.format() == "done"

    target = tmp_path / "m.pt"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    w.save_button.click()
    assert target.exists()
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(target), ""))
    w.load_button.click()
    loaded = get_session(viewer).trained_model
    assert isinstance(loaded, DivNoisingModel) and loaded is not model

    w.budget_value.setValue(3)
    w.continue_button.click()
    wait_for(w.runner, timeout=120_000)
    assert w.loss_plot.train_steps[-3:] == [7, 8, 9]  # continues the step count of the loaded model
    assert get_session(viewer).trained_model.history["steps"] == 9  # the child's final state came back


def test_stop_in_a_child_process_keeps_the_model_so_far(widget, wait_for, qtbot, train_in_a_child_process):
    viewer, w = widget
    get_session(viewer).set_noise_choice(NOISE_COLEARN)
    w.budget_value.setValue(100_000)
    w.train_button.click()
    qtbot.waitUntil(lambda: w._last_step >= 3, timeout=120_000)
    source = w.runner._source
    w.stop_button.click()
    wait_for(w.runner, timeout=60_000)
    assert source.exit_code is not None
    model = get_session(viewer).trained_model
    assert model is w.model and model.history["steps"] == w._last_step >= 3  # the child's final state came back
    assert w.status.text().startswith(f"Stopped at step {w._last_step}")


def test_closing_the_panel_stops_the_child_process(make_napari_viewer, qtbot, wait_for, noisy_clean_pair,
                                                   train_in_a_child_process):
    viewer = make_napari_viewer()
    viewer.add_image(noisy_clean_pair[0], name="noisy")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.images.set_checked(["noisy"])
    w.budget_unit.setCurrentText("steps")
    w.budget_value.setValue(100_000)
    w.patch_size.setValue(32)
    w.batch_size.setValue(4)
    get_session(viewer).set_noise_choice(NOISE_COLEARN)
    w.train_button.click()
    qtbot.waitUntil(lambda: w._last_step >= 1, timeout=120_000)
    source = w.runner._source
    viewer.window.remove_dock_widget(w)
    wait_for(w.runner, timeout=60_000)
    assert source.exit_code is not None
    assert w.model.history["steps"] == w._last_step


def test_training_with_the_fitted_gmm(widget, wait_for, calibration_stack):
    viewer, w = widget
    from napari_divnoising.noise_model_fitting import fit_gmm_from_calibration
    from napari_divnoising.noise_models import GMMNoiseModel

    gmm = fit_gmm_from_calibration(calibration_stack, explore_iterations=50, polish_iterations=5)
    get_session(viewer).set_noise_model(gmm, "test GMM")
    get_session(viewer).set_noise_choice(NOISE_FITTED)
    w.train_button.click()
    wait_for(w.runner, timeout=120_000)
    model = get_session(viewer).trained_model
    assert isinstance(model.noise_model, GMMNoiseModel)
    assert len(w.loss_plot.train_steps) == 6


def test_bad_settings_are_reported_not_raised(widget, wait_for, monkeypatch):
    viewer, w = widget
    errors = []
    import napari_divnoising._widgets._notify as notify

    monkeypatch.setattr(notify, "show_error", errors.append)
    get_session(viewer).set_noise_choice(NOISE_COLEARN)
    w.patch_size.setValue(512)  # larger than the 64 x 64 image
    w.train_button.click()
    wait_for(w.runner, timeout=60_000)
    assert errors and "patch" in errors[0].lower()
    assert w.train_button.isEnabled() and not w.runner.running


def test_bootstrap_trains_twice_and_ends_with_a_gmm(widget, wait_for, monkeypatch):
    viewer, w = widget
    from functools import partial

    import napari_divnoising.workflows as workflows
    from napari_divnoising._widgets._session import NOISE_BOOTSTRAP
    from napari_divnoising.noise_models import GMMNoiseModel

    # The panel's wiring is tested here, the fit itself in tests/test_workflows.py: a short fit will do.
    monkeypatch.setattr(workflows, "fit_gmm_iter",
                        partial(workflows.fit_gmm_iter, explore_iterations=100, polish_iterations=10))
    get_session(viewer).set_noise_choice(NOISE_BOOTSTRAP)
    w.budget_value.setValue(160)
    w.train_button.click()
    wait_for(w.runner, timeout=180_000)
    session = get_session(viewer)
    assert isinstance(session.noise_model, GMMNoiseModel)
    assert "Bootstrap" in session.noise_model_description
    assert isinstance(session.trained_model.noise_model, GMMNoiseModel)
    assert w.progress.format() == "done"


def test_bootstrap_with_too_short_a_budget_explains_and_keeps_the_first_model(widget, wait_for, monkeypatch):
    viewer, w = widget
    from napari_divnoising._widgets._session import NOISE_BOOTSTRAP

    errors = []
    import napari_divnoising._widgets._notify as notify

    monkeypatch.setattr(notify, "show_error", errors.append)
    get_session(viewer).set_noise_choice(NOISE_BOOTSTRAP)
    w.budget_value.setValue(2)  # one step of co-learning cannot give a usable pseudo-clean image
    w.train_button.click()
    wait_for(w.runner, timeout=180_000)
    assert errors and "Bootstrapping stopped" in errors[0] and "larger budget" in errors[0]
    assert isinstance(get_session(viewer).trained_model, DivNoisingModel)


@pytest.mark.parametrize("in_child", [True, False], ids=["child process", "napari's process"])
def test_stop_right_after_train_ends_the_run_without_freezing(widget, wait_for, qtbot, monkeypatch, in_child):
    """Stop before the worker has made its event source (e.g. a child process that is starting):
    the worker asks the source to stop (or quits) as soon as it exists."""
    import time

    from napari_divnoising._widgets import _core

    monkeypatch.setattr(_core, "TRAIN_IN_CHILD_PROCESS", in_child)
    viewer, w = widget
    get_session(viewer).set_noise_choice(NOISE_COLEARN)
    w.budget_value.setValue(100_000)
    w.train_button.click()
    t0 = time.monotonic()
    w.stop_button.click()
    assert time.monotonic() - t0 < 1.0  # the GUI thread does not wait for the child
    wait_for(w.runner, timeout=60_000)
    if in_child:
        assert w.runner._source.exit_code is not None
    assert w.progress.format() in ("stopped", "done")
    assert w.model is None or w.model.history.get("steps", 0) < 100_000
