"""The Qt-free helpers the panels run their workflows through (``_widgets/_core.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

import napari_divnoising._widgets._core as core
from napari_divnoising.errors import DivNoisingError
from napari_divnoising.training import TrainStep


@dataclass
class Tick:
    n: int


@dataclass
class Other:
    name: str


def fake_clock(monkeypatch, times):
    """``time.monotonic`` in ``_core`` returns the given times one after the other."""
    it = iter(times)
    monkeypatch.setattr(core, "time", SimpleNamespace(monotonic=lambda: next(it)))


def test_latest_every_passes_the_latest_progress_and_every_other_event(monkeypatch):
    fake_clock(monkeypatch, [0.0, 0.1, 0.2, 0.6, 0.7, 0.8])
    events = [Tick(1), Tick(2), Tick(3), Other("a"), Tick(4), Tick(5), Tick(6)]
    out = list(core.latest_every(iter(events), Tick, interval_s=0.5))
    # Tick 1 at once; 2 is replaced by 3, which is passed before "a"; 4 at 0.6 s; 5 is replaced by 6 (the last).
    assert out == [Tick(1), Tick(3), Other("a"), Tick(4), Tick(6)]


def test_latest_every_closes_its_source():
    closed = []

    def source():
        try:
            while True:
                yield Tick(0)
        finally:
            closed.append(True)

    throttled = core.latest_every(source(), Tick, interval_s=0.0)
    assert next(throttled) == Tick(0)
    throttled.close()
    assert closed == [True]


def test_group_steps_hands_every_step_on_in_groups(monkeypatch):
    fake_clock(monkeypatch, [0.0, 0.5, 1.0, 2.5, 3.0])
    steps = [TrainStep(step=i, max_steps=5, loss=1.0 / i, reconstruction=1.0, kl=0.0, kl_weight=1.0, lr=1e-3,
                       elapsed_s=0.0, eta_s=0.0, fraction=i / 5) for i in range(1, 6)]
    out = list(core.group_steps(iter([*steps[:3], Other("warning"), *steps[3:]]), interval_s=2.0))
    assert isinstance(out[0], core.TrainSteps) and [s.step for s in out[0].steps] == [1]
    assert [s.step for s in out[1].steps] == [2, 3] and out[2] == Other("warning")
    assert [s.step for s in out[3].steps] == [4] and [s.step for s in out[4].steps] == [5]
    assert sum(len(group.steps) for group in out if isinstance(group, core.TrainSteps)) == 5


def test_group_steps_keeps_validations_in_the_group(monkeypatch):
    """A short run validates every second or so: validations must not cost a GUI update each."""
    from napari_divnoising.training import Validation

    fake_clock(monkeypatch, [0.0, 0.5, 1.0, 1.5, 2.5])
    steps = [TrainStep(step=i, max_steps=5, loss=1.0 / i, reconstruction=1.0, kl=0.0, kl_weight=1.0, lr=1e-3,
                       elapsed_s=0.0, eta_s=0.0, fraction=i / 5) for i in range(1, 4)]
    validation = Validation(step=2, val_loss=0.5, best_val_loss=0.5, is_best=True, reconstruction=0.5, kl=0.0)
    out = list(core.group_steps(iter([steps[0], steps[1], validation, steps[2], validation]), interval_s=2.0))
    assert [([s.step for s in g.steps], len(g.validations)) for g in out] == [([1], 0), ([2, 3], 2)]


def test_stop_makes_grouped_and_throttled_streams_yield_at_once(monkeypatch):
    """A worker thread sees a stop request only when its generator yields: once Stop was pressed
    (``flush``), the next event must come out, not wait for the interval."""
    fake_clock(monkeypatch, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    steps = [TrainStep(step=i, max_steps=4, loss=1.0, reconstruction=1.0, kl=0.0, kl_weight=1.0, lr=1e-3,
                       elapsed_s=0.0, eta_s=0.0, fraction=i / 4) for i in range(1, 5)]
    stop_pressed = []
    grouped = core.group_steps(iter(steps), interval_s=100.0, flush=lambda: bool(stop_pressed))
    assert [s.step for s in next(grouped).steps] == [1]
    stop_pressed.append(True)
    assert [s.step for s in next(grouped).steps] == [2]  # without the flush: one group of 2-4 at the end
    assert [[s.step for s in g.steps] for g in grouped] == [[3], [4]]

    stop_pressed.clear()
    throttled = core.latest_every(iter([Tick(1), Tick(2), Tick(3)]), Tick, interval_s=100.0,
                                  flush=lambda: bool(stop_pressed))
    assert next(throttled) == Tick(1)
    stop_pressed.append(True)
    assert next(throttled) == Tick(2)  # without the flush: Tick(2) would be replaced by Tick(3)


def test_training_runs_in_napari_when_the_child_process_cannot_start(monkeypatch):
    import sys

    import numpy as np

    from napari_divnoising.training import TrainingConfig, TrainingDone, TrainingWarning

    monkeypatch.setattr(core, "TRAIN_IN_CHILD_PROCESS", True)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    images = [np.random.default_rng(0).normal(100, 20, (32, 32)).astype(np.float32)]
    config = TrainingConfig(patch_size=16, batch_size=2, start_filters=8, z_dim=8, max_minutes=None, max_steps=3,
                            n_validation_patches=4, device="cpu", seed=0)
    events = list(core.training_source(images, None, config))
    assert isinstance(events[0], TrainingWarning) and "inside napari instead" in events[0].message
    assert isinstance(events[-1], TrainingDone) and events[-1].steps == 3


def test_a_setting_out_of_range_is_named_by_the_panel_label():
    with pytest.raises(DivNoisingError, match=r"^Patch size must be a multiple of 8 .*\(got 30\)"):
        core.make_training_config(patch_size=30, max_steps=3)
    with pytest.raises(DivNoisingError, match=r"^Learning rate must be between"):
        core.make_training_config(learning_rate=3.0, max_steps=3)
