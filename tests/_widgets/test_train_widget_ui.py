"""Train widget behaviour that does not depend on the training core: Stop, crash, buttons, session.

The core's generator is replaced by a scripted one here; the end-to-end test with the real
``train_iter`` is in test_train_widget.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import napari_divnoising._widgets._core as core
from napari_divnoising._widgets._session import NOISE_COLEARN, get_session
from napari_divnoising._widgets.train_widget import TrainWidget
from napari_divnoising.training import TrainingConfig, TrainingDone, TrainingStarted, TrainStep, Validation


def scripted_training(n_steps: int, fail_at: int | None = None, delay: float = 0.01):
    model = object()

    def events(images, noise_model, config, resume=None, bootstrap=False):
        assert all(isinstance(i, np.ndarray) for i in images)
        assert isinstance(config, TrainingConfig)
        yield TrainingStarted(model=model, device="cpu", n_parameters=1, start_step=0, max_steps=n_steps,
                              max_minutes=None, n_train_pixels=1024, validation_split="frames")
        for step in range(1, n_steps + 1):
            time.sleep(delay)
            if step == fail_at:
                raise RuntimeError("simulated crash")
            yield TrainStep(step=step, max_steps=n_steps, loss=1.0 / step, reconstruction=1.0 / step, kl=0.0,
                            kl_weight=1.0, lr=1e-3, elapsed_s=step * delay, eta_s=(n_steps - step) * delay,
                            fraction=step / n_steps)
            if step % 5 == 0:
                yield Validation(step=step, val_loss=1.2 / step, best_val_loss=1.2 / step, is_best=True,
                                 reconstruction=1.2 / step, kl=0.0)
        yield TrainingDone(model=model, reason="max_steps", steps=n_steps, best_val_loss=None, best_step=None,
                           history={})

    return model, events


@pytest.fixture
def widget(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="img")
    w = TrainWidget(viewer)
    qtbot.addWidget(w)
    w.images.set_checked(["img"])
    get_session(viewer).set_noise_choice(NOISE_COLEARN)
    yield viewer, w
    w.runner.stop_and_wait()


def test_full_run_hands_model_to_session_and_plots_losses(widget, wait_for, monkeypatch):
    viewer, w = widget
    model, events = scripted_training(20)
    monkeypatch.setattr(core, "training_events", events)
    w.budget_unit.setCurrentText("steps")
    w.budget_value.setValue(20)
    w.train_button.click()
    assert not w.train_button.isEnabled() and w.stop_button.isEnabled()
    wait_for(w.runner)
    assert get_session(viewer).trained_model is model
    assert w.loss_plot.train_steps == list(range(1, 21))
    assert w.loss_plot.val_steps == [5, 10, 15, 20]
    assert w.progress.format() == "done"
    assert w.save_button.isEnabled() and w.continue_button.isEnabled()


def test_stop_keeps_last_model(widget, qtbot, wait_for, monkeypatch):
    viewer, w = widget
    model, events = scripted_training(100_000, delay=0.005)
    monkeypatch.setattr(core, "training_events", events)
    w.train_button.click()
    qtbot.waitUntil(lambda: len(w.loss_plot.train_steps) > 3, timeout=10_000)
    w.stop_button.click()
    wait_for(w.runner, timeout=10_000)
    assert get_session(viewer).trained_model is model
    assert "Stopped" in w.status.text()
    assert w.train_button.isEnabled() and not w.stop_button.isEnabled()


def test_crash_notifies_and_keeps_last_model(widget, wait_for, monkeypatch):
    viewer, w = widget
    errors = []
    import napari_divnoising._widgets._notify as notify

    monkeypatch.setattr(notify, "show_error", errors.append)
    model, events = scripted_training(50, fail_at=7)
    monkeypatch.setattr(core, "training_events", events)
    w.train_button.click()
    wait_for(w.runner)
    assert errors and "simulated crash" in errors[0]
    assert get_session(viewer).trained_model is model
    assert w.train_button.isEnabled()


def test_no_images_or_no_noise_model_gives_hint(widget, monkeypatch):
    viewer, w = widget
    errors = []
    import napari_divnoising._widgets._notify as notify

    monkeypatch.setattr(notify, "show_error", errors.append)
    w.images.set_checked([])
    w.train_button.click()
    assert "Tick at least one" in errors[-1]
    w.images.set_checked(["img"])
    w.noise_choice.setCurrentIndex(0)  # fitted, but none fitted yet
    w.train_button.click()
    assert "No noise model yet" in errors[-1]
    assert not w.runner.running


def test_loss_plot_redraws_are_throttled(widget, qtbot):
    _, w = widget
    before = w.loss_plot.redraw_count
    for step in range(200):
        w.loss_plot.add_train(step, 1.0)
    assert w.loss_plot.redraw_count - before <= 2
    qtbot.waitUntil(lambda: not w.loss_plot._dirty, timeout=3000)


def test_closing_the_widget_stops_the_worker(widget, qtbot, monkeypatch):
    viewer, w = widget
    _, events = scripted_training(100_000, delay=0.005)
    monkeypatch.setattr(core, "training_events", events)
    w.train_button.click()
    qtbot.waitUntil(lambda: len(w.loss_plot.train_steps) > 2, timeout=10_000)
    w.close()
    assert not w.runner.running


def test_closing_the_viewer_stops_the_worker(make_napari_viewer, qtbot, monkeypatch):
    _, events = scripted_training(100_000, delay=0.005)
    monkeypatch.setattr(core, "training_events", events)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="img")
    _, w = viewer.window.add_plugin_dock_widget("napari-divnoising", "Train")
    w.images.set_checked(["img"])
    get_session(viewer).set_noise_choice(NOISE_COLEARN)
    w.train_button.click()
    qtbot.waitUntil(lambda: len(w.loss_plot.train_steps) > 2, timeout=10_000)
    runner = w.runner
    viewer.close()
    qtbot.waitUntil(lambda: not runner.running, timeout=5_000)


def test_plugin_docks_share_one_session(make_napari_viewer):
    from napari_divnoising.noise_models import GMMNoiseModel

    viewer = make_napari_viewer()
    _, noise = viewer.window.add_plugin_dock_widget("napari-divnoising", "Noise model")
    _, train = viewer.window.add_plugin_dock_widget("napari-divnoising", "Train")
    _, predict = viewer.window.add_plugin_dock_widget("napari-divnoising", "Predict")
    noise.session.set_noise_model(GMMNoiseModel.initial(0.0, 10.0), "GMM for the test")
    assert train.session is noise.session is predict.session
    assert train.noise_label.text() == "GMM for the test"
    noise.choice.setCurrentIndex(1)
    assert train.noise_choice.currentIndex() == 1


def test_closing_the_dock_stops_the_run(make_napari_viewer, qtbot, wait_for, monkeypatch):
    """The dock's close button only unparents the panel in napari; the run must stop anyway."""
    model, events = scripted_training(100_000, delay=0.005)
    monkeypatch.setattr(core, "training_events", events)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="img")
    dock, w = viewer.window.add_plugin_dock_widget("napari-divnoising", "Train")
    w.images.set_checked(["img"])
    get_session(viewer).set_noise_choice(NOISE_COLEARN)
    w.train_button.click()
    qtbot.waitUntil(lambda: len(w.loss_plot.train_steps) > 2, timeout=10_000)
    dock.title.close_button.click()
    wait_for(w.runner, timeout=10_000)
    assert "Stopped" in w.status.text()
    assert get_session(viewer).trained_model is model
