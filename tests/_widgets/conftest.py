"""Shared helpers for the widget tests: tiny synthetic data and worker waiting."""

from __future__ import annotations

import gc

import numpy as np
import pytest


def camera_noise(clean: np.ndarray, rng: np.random.Generator, gain: float = 2.0, read: float = 3.0) -> np.ndarray:
    return (gain * rng.poisson(np.maximum(clean, 0) / gain) + rng.normal(0, read, clean.shape)).astype(np.float32)


def smooth_image(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.full(shape, 10.0)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 8)
        img += rng.uniform(50, 150) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return img.astype(np.float32)


@pytest.fixture
def calibration_stack() -> np.ndarray:
    rng = np.random.default_rng(0)
    clean = smooth_image((48, 48), seed=1)
    return np.stack([camera_noise(clean, rng) for _ in range(12)]).round()


@pytest.fixture
def noisy_clean_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    clean = smooth_image((64, 64), seed=3)
    return camera_noise(clean, rng).round(), clean


@pytest.fixture
def notes(monkeypatch):
    """Every napari notification the panels show, as (level, text); the real toasts are not raised."""
    import napari.utils.notifications as notifications

    shown: list[tuple[str, str]] = []
    for level in ("error", "warning", "info"):
        monkeypatch.setattr(notifications, f"show_{level}", lambda text, level=level: shown.append((level, text)))
    return shown


@pytest.fixture
def wait_for(qtbot):
    """``wait_for(runner)``: wait until a widget's WorkerRunner has finished and its GUI callbacks ran."""

    def wait(runner, timeout: int = 180_000) -> None:
        qtbot.waitUntil(lambda: not runner.running and runner.settled, timeout=timeout)
        qtbot.wait(50)

    return wait


@pytest.fixture(autouse=True)
def quick_panel_updates(monkeypatch):
    """Runs reach the panels every 0.1 s instead of every few seconds.

    The panels group a run's events so that the window is repainted rarely; a test waiting for the
    third step of a scripted run would otherwise wait for the second group. The grouping itself is
    tested with explicit intervals in ``test_core.py``.
    """
    from napari_divnoising._widgets import _core, noise_model_widget, predict_widget

    monkeypatch.setattr(_core, "STEP_GROUP_INTERVAL_S", 0.1)
    monkeypatch.setattr(noise_model_widget, "FIT_PROGRESS_INTERVAL_S", 0.1)
    monkeypatch.setattr(predict_widget, "READ_INTERVAL_S", 0.1)


@pytest.fixture(autouse=True)
def train_in_this_process(monkeypatch):
    """The Train panel trains in this process in the widget tests, unless a test asks for the child.

    Many tests replace the training events with scripted ones, which exist only in this process,
    and each child costs the start of an interpreter with torch (seconds). The child process
    itself is tested in ``test_train_widget.py`` (the panel) and ``tests/test_child_process.py``.
    """
    from napari_divnoising._widgets import _core

    monkeypatch.setattr(_core, "TRAIN_IN_CHILD_PROCESS", False)


@pytest.fixture
def train_in_a_child_process(monkeypatch):
    """The Train panel trains in a child process, as it does for the user."""
    from napari_divnoising._widgets import _core

    monkeypatch.setattr(_core, "TRAIN_IN_CHILD_PROCESS", True)


@pytest.fixture(autouse=True)
def _freeze_what_outlives_the_test():
    """After each widget test (its viewers closed), move what is still alive out of the collector's reach.

    napari runs a full garbage collection whenever a viewer drops its layers, and the fixture runs more: each
    scans every object created since the last freeze. Freezing the survivors of each test (caches, settings,
    Qt wrappers that live for the run) keeps those scans to what the next test creates.
    """
    yield
    gc.collect()
    gc.freeze()
