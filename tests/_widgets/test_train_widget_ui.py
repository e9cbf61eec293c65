"""Train widget behaviour that does not depend on the training core: Stop, crash, buttons, session.

The core's generator is replaced by a scripted one here; the end-to-end test with the real
``train_iter`` is in test_train_widget.py.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest

import napari_divnoising._widgets._core as core
from napari_divnoising._widgets._session import NOISE_COLEARN, get_session
from napari_divnoising._widgets.train_widget import TrainWidget
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.training import TrainingConfig, TrainingDone, TrainingStarted, TrainStep, Validation


def tiny_model() -> DivNoisingModel:
    network = DivNoisingVAE(depth=1, start_filters=4, z_dim=2)
    return DivNoisingModel(network, GaussianNoiseModel(a=0.0, b=1.0, trainable=False), 0.0, 1.0)


def scripted_training(n_steps: int, fail_at: int | None = None, delay: float = 0.01):
    model = tiny_model()

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
    qtbot.waitUntil(lambda: len(w.loss_plot.train_steps) > 3, timeout=60_000)
    w.stop_button.click()
    wait_for(w.runner, timeout=60_000)
    assert get_session(viewer).trained_model is model
    assert "Stopped" in w.status.text()
    assert w.train_button.isEnabled() and not w.stop_button.isEnabled()


def test_stop_ends_an_in_process_training_run_within_a_step(widget, qtbot, wait_for, monkeypatch):
    """In napari's process the training generator has no stop request of its own: the panel's Stop
    quits the worker, which must see it at the next step, not at the next group of steps."""
    viewer, w = widget
    group_interval_s = 60.0
    monkeypatch.setattr(core, "STEP_GROUP_INTERVAL_S", group_interval_s)
    w.budget_unit.setCurrentText("steps")
    w.budget_value.setValue(100_000)
    w.patch_size.setValue(16)
    w.batch_size.setValue(2)
    w.train_button.click()
    qtbot.waitUntil(lambda: w._last_step >= 1, timeout=60_000)
    started = time.monotonic()
    w.stop_button.click()
    wait_for(w.runner, timeout=30_000)
    assert time.monotonic() - started < group_interval_s / 2
    assert "Stopped" in w.status.text()


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


def test_loss_plot_redraws_are_throttled(qtbot, monkeypatch):
    from types import SimpleNamespace

    import napari_divnoising._widgets._plots as plots

    now = [100.0]  # an injected clock: the throttle is checked by logic, not by how fast this machine is
    monkeypatch.setattr(plots, "time", SimpleNamespace(monotonic=lambda: now[0]))
    plot = plots.LossPlot(max_redraws_per_s=2.0)
    qtbot.addWidget(plot)
    assert plot.redraw_count == 1  # the empty plot
    for step in range(200):  # no time passes: nothing is redrawn, one redraw is scheduled
        plot.add_train(step, 1.0)
    assert plot.redraw_count == 1 and plot._dirty and plot._timer.isActive()
    now[0] += 0.5  # the interval has passed: the next point redraws at once, with every point
    plot.add_train(200, 0.5)
    assert plot.redraw_count == 2 and not plot._dirty
    assert len(plot.train_line.get_xdata()) == 201 and len(plot.val_line.get_xdata()) == 0
    now[0] += 0.1  # too soon for another redraw: the scheduled one draws the validation point
    plot.add_validation(100, 0.8)
    assert plot.redraw_count == 2 and plot._dirty
    qtbot.waitUntil(lambda: not plot._dirty, timeout=60_000)
    assert plot.redraw_count == 3 and list(plot.val_line.get_xdata()) == [100]


def test_loss_plot_draws_block_means_of_long_histories(qtbot):
    import napari_divnoising._widgets._plots as plots

    steps = list(range(1, 2001))
    losses = [float(s % 4) for s in steps]  # 0,1,2,3 repeating: each block of 4 averages to 1.5
    x, y = plots.block_means(steps, losses, max_points=500)
    assert len(x) == 500 and np.allclose(y, 1.5) and x[0] == 2.5 and x[-1] == 1998.5
    x, y = plots.block_means(steps[:7], losses[:7], max_points=3)  # 3 per block, the last takes the rest
    assert list(x) == [2.0, 5.0, 7.0] and list(y) == [2.0, 1.0, 3.0]
    plot = plots.LossPlot(max_points=500)
    qtbot.addWidget(plot)
    plot.set_history({"train_steps": steps, "train_loss": losses, "val_steps": [1000], "val_loss": [1.4]})
    plot.redraw()
    assert len(plot.train_line.get_xdata()) == 500 and len(plot.train_loss) == 2000
    assert plot.ax.get_xlim() == (1, 2000)


def test_closing_the_widget_stops_the_worker(widget, qtbot, monkeypatch):
    viewer, w = widget
    _, events = scripted_training(100_000, delay=0.005)
    monkeypatch.setattr(core, "training_events", events)
    w.train_button.click()
    qtbot.waitUntil(lambda: len(w.loss_plot.train_steps) > 2, timeout=60_000)
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
    qtbot.waitUntil(lambda: len(w.loss_plot.train_steps) > 2, timeout=60_000)
    runner = w.runner
    viewer.close()
    qtbot.waitUntil(lambda: not runner.running, timeout=60_000)  # raises when the run goes on
    assert runner.worker is not None and not runner.running


def test_plugin_docks_share_one_session(make_napari_viewer):
    from napari_divnoising.noise_models import GMMNoiseModel

    viewer = make_napari_viewer()
    _, noise = viewer.window.add_plugin_dock_widget("napari-divnoising", "Noise model")
    _, train = viewer.window.add_plugin_dock_widget("napari-divnoising", "Train")
    _, predict = viewer.window.add_plugin_dock_widget("napari-divnoising", "Predict")
    assert train.session is noise.session is predict.session
    assert "estimated from the training images" in train.noise_label.text()  # no noise model yet
    noise.session.set_noise_model(GMMNoiseModel.initial(0.0, 10.0), "GMM for the test")
    noise.choice.setCurrentIndex(0)  # use the fitted / loaded one
    assert train.noise_label.text() == "GMM for the test"
    noise.choice.setCurrentIndex(2)
    assert train.noise_choice.currentIndex() == 2


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


def _run(n_steps: int, val_loss, steps_per_s: float = 50.0):
    model = SimpleNamespace(name="m", history={})

    def events(images, noise_model, config, resume=None, bootstrap=False):
        yield TrainingStarted(model=model, device="cpu", n_parameters=1, start_step=0, max_steps=n_steps,
                              max_minutes=None, n_train_pixels=1024, validation_split="frames",
                              config={"batch_size": 8, "patch_size": 32})
        for step in range(1, n_steps + 1):
            yield TrainStep(step=step, max_steps=n_steps, loss=1.0, reconstruction=1.0, kl=0.0, kl_weight=1.0,
                            lr=1e-3, elapsed_s=0.0, eta_s=0.0, fraction=step / n_steps, steps_per_s=steps_per_s)
        yield TrainingDone(model=model, reason="max_steps", steps=n_steps, best_val_loss=None, best_step=None,
                           history={"val_loss": list(val_loss)})

    return events


def test_undertrained_model_is_called_so_and_a_good_one_is_not(widget, wait_for, monkeypatch):
    viewer, w = widget
    monkeypatch.setattr(core, "training_events", _run(51, [4.0, 3.0, 2.0, 1.0]))
    w.train_button.click()
    wait_for(w.runner)
    assert not w.advice.isHidden()
    assert "undertrained" in w.advice.text() and "only 51 steps" in w.advice.text()
    assert "still falling" in w.advice.text() and "Continue training" in w.advice.text()
    assert "51 steps, step budget reached" in w.status.text()

    monkeypatch.setattr(core, "training_events", _run(1200, [5.0, 1.1, 1.05, 1.02, 1.0]))
    w.train_button.click()
    wait_for(w.runner)
    assert w.advice.text() == "" and w.advice.isHidden()
    # the loss plot received every step though the GUI got them in groups
    assert w.loss_plot.train_steps == list(range(1, 1201))


def test_budget_estimate_uses_the_rate_measured_in_the_session(widget, wait_for, monkeypatch):
    viewer, w = widget
    assert "not measured yet" in w.estimate_label.text()
    monkeypatch.setattr(core, "training_events", _run(20, [], steps_per_s=50.0))
    w.train_button.click()
    wait_for(w.runner)
    w.budget_unit.setCurrentText("minutes")
    w.budget_value.setValue(2.0)
    assert "about 6000 steps at 50.0 steps/s measured on cpu" in w.estimate_label.text()


def test_loaded_model_shows_its_loss_history(widget, monkeypatch):
    import napari_divnoising.model_io as model_io

    viewer, w = widget
    history = {"train_steps": [1, 2, 3], "train_loss": [3.0, 2.0, 1.0], "val_steps": [3], "val_loss": [1.5]}
    monkeypatch.setattr(model_io, "load_model", lambda path: SimpleNamespace(name="m", history=history))
    assert w.load_model("model.pt")
    assert w.loss_plot.train_steps == [1, 2, 3] and w.loss_plot.val_loss == [1.5]


def test_three_panels_fit_a_1080p_screen(make_napari_viewer):
    from napari_divnoising._widgets._layout import MIN_PANEL_HEIGHT, content_height

    viewer = make_napari_viewer()
    panels = [viewer.window.add_plugin_dock_widget("napari-divnoising", name)[1]
              for name in ("Noise model", "Train", "Predict")]
    for panel in panels:
        assert panel.minimumSizeHint().height() <= MIN_PANEL_HEIGHT + 20
    assert content_height(panels[1]) > MIN_PANEL_HEIGHT  # the Train panel's contents scroll
    assert not panels[1].advanced.isExpanded() and not panels[0].advanced.isExpanded()
    assert viewer.window._qt_window.minimumSizeHint().height() <= 1080 - 100  # title bar and taskbar


def test_training_progress_shows_in_the_activity_dock(widget, qtbot, wait_for, monkeypatch):
    from napari.utils import progress

    viewer, w = widget
    _, events = scripted_training(100_000, delay=0.005)
    monkeypatch.setattr(core, "training_events", events)
    from qtpy.QtGui import QMovie
    from qtpy.QtWidgets import QLabel

    from napari_divnoising._widgets import _worker

    monkeypatch.setattr(_worker, "ACTIVITY_UPDATE_INTERVAL_S", 0.0)

    viewer.window.add_dock_widget(w, name="Train")  # the panel pauses the animation of its own window
    movies = [label.movie() for label in w.window().findChildren(QLabel) if label.movie() is not None]
    (animation,) = [movie for movie in movies if movie.fileName().endswith("loading.gif")]
    w.train_button.click()
    qtbot.waitUntil(lambda: w.activity.value > 0, timeout=10_000)
    assert any(bar.desc == "DivNoising training" for bar in progress._all_instances)
    assert animation.state() == QMovie.MovieState.Paused  # its repaints cost training time
    w.stop_button.click()
    wait_for(w.runner, timeout=10_000)
    assert not w.activity.active
    assert not any(bar.desc == "DivNoising training" for bar in progress._all_instances)
    assert animation.state() != QMovie.MovieState.Paused


def test_the_activity_bar_moves_at_most_every_interval(make_napari_viewer, qtbot, monkeypatch):
    """napari repaints the whole window for each move of the activity bar: it moves rarely, and when full."""
    from napari_divnoising._widgets import _worker

    make_napari_viewer()
    clock = [100.0]
    monkeypatch.setattr(_worker, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    bar = _worker.ActivityProgress()
    bar.start("test", 100)
    try:
        bar.set(1)
        qtbot.waitUntil(lambda: bar.value == 1, timeout=2000)
        clock[0] += _worker.ACTIVITY_UPDATE_INTERVAL_S / 2
        bar.set(2)
        qtbot.wait(50)
        assert bar.value == 1  # too soon
        bar.set(100)
        qtbot.waitUntil(lambda: bar.value == 100, timeout=2000)  # full: shown at once
        clock[0] += _worker.ACTIVITY_UPDATE_INTERVAL_S
        bar.set(50, 200)
        qtbot.waitUntil(lambda: bar.value == 50, timeout=2000)
    finally:
        bar.close()


def test_the_status_shows_the_co_learned_noise_line_with_its_sign(widget):
    _, w = widget
    w._update_progress(TrainStep(step=7, max_steps=10, loss=1.0, reconstruction=1.0, kl=0.1, kl_weight=1.0, lr=1e-3,
                                 elapsed_s=1.0, eta_s=1.0, fraction=0.7, noise_a=3.69, noise_b=-242.0))
    assert "variance = 3.69 x signal - 242" in w.status.text()


def test_the_estimated_noise_choice_asks_the_core_for_a_noise_model_from_the_images(widget, wait_for, monkeypatch):
    from napari_divnoising._widgets._session import NOISE_CHOICE_LABELS, NOISE_ESTIMATED
    from napari_divnoising.training import ESTIMATED

    viewer, w = widget
    model, events = scripted_training(3)
    asked = []

    def recorded(images, noise_model, config, resume=None, bootstrap=False):
        asked.append((noise_model, bootstrap))
        return events(images, noise_model, config, resume, bootstrap)

    monkeypatch.setattr(core, "training_events", recorded)
    w.noise_choice.setCurrentIndex(list(NOISE_CHOICE_LABELS).index(NOISE_ESTIMATED))
    assert get_session(viewer).noise_choice == NOISE_ESTIMATED
    assert "estimated from the training images" in w.noise_label.text()
    w.train_button.click()
    wait_for(w.runner)
    assert asked == [(ESTIMATED, False)]
