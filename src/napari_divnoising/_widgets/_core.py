"""Where the widgets start the core's workflows (Qt-free; the generators run in thread workers).

The workflows themselves (training, bootstrapping, streamed prediction) live in the core;
this module only turns widget settings into their arguments.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._writer import _unit_name
from ..errors import SettingError
from ..export import write_tiff
from ..model import DivNoisingModel
from ..outputs import provenance_properties
from ..training import COLEARN, TrainingConfig, TrainingWarning, TrainStep, Validation, field_metadata, train_iter
from ..workflows import bootstrap_iter, split_budget
from ._outputs import Geometry


def make_training_config(**settings: Any) -> TrainingConfig:
    """The core's :class:`TrainingConfig` from the Train panel's settings, checked.

    Every setting is passed on by name: a name that is not a :class:`TrainingConfig`
    field raises ``TypeError`` (a setting is never dropped silently).

    Raises
    ------
    DivNoisingError
        For a value out of its range (one clear line for the user, naming the setting by its label).
    """
    config = TrainingConfig(**settings)
    try:
        config.validate()
    except SettingError as exc:
        label = field_metadata(exc.setting).get("label")
        raise exc.called(label) if label else exc from None
    return config


def training_events(
    images: list[np.ndarray], noise_model: Any, config: TrainingConfig, *,
    resume: DivNoisingModel | None = None, bootstrap: bool = False,
) -> Iterator[Any]:
    """The events of training, continued training or bootstrapping, as the Train panel asked.

    ``noise_model=None`` co-learns a Gaussian noise model. Bootstrapping splits the budget in
    half between the co-learned and the final training (:func:`~napari_divnoising.workflows.bootstrap_iter`).
    """
    if resume is not None:
        # A continued model keeps its own network and noise model.
        config = dataclasses.replace(config, **resume.network.settings())
        return train_iter(images, None, config, resume=resume)
    if bootstrap:
        half = split_budget(config)
        return bootstrap_iter(images, half, first_config=half)
    return train_iter(images, COLEARN if noise_model is None else noise_model, config)


#: The Train panel trains in a child process (:mod:`napari_divnoising.child_process`): there training
#: does not share its interpreter, main thread and cores with the viewer (``benchmarks/bench_gui.py``).
TRAIN_IN_CHILD_PROCESS = True


def training_source(
    images: list[np.ndarray], noise_model: Any, config: TrainingConfig, *,
    resume: DivNoisingModel | None = None, bootstrap: bool = False,
) -> Iterator[Any]:
    """:func:`training_events`, run in a child process when :data:`TRAIN_IN_CHILD_PROCESS` is set.

    In a child, the models in the events are mirrors of the child's: their weights follow its
    validations, and its whole final state (history included) arrives at the end. If the child
    cannot start (an interpreter that cannot be run again, e.g. a frozen application), training
    runs in this process after a warning.
    """
    args, kwargs = (images, noise_model, config), {"resume": resume, "bootstrap": bootstrap}
    if not TRAIN_IN_CHILD_PROCESS:
        return training_events(*args, **kwargs)
    from ..child_process import ChildEvents, ChildStartError

    try:
        return ChildEvents(training_events, *args, **kwargs)
    except ChildStartError as exc:
        note = TrainingWarning(f"{exc} Training runs inside napari instead (slower).")
        return itertools.chain([note], training_events(*args, **kwargs))


#: Long runs update the panels at most this often (seconds). Every update repaints the window around
#: the viewer's OpenGL canvas, which without a GPU (software OpenGL) costs tens of milliseconds of CPU
#: time that training or prediction would otherwise use (``benchmarks/bench_gui.py``).
UI_UPDATE_INTERVAL_S = 2.0
#: Training steps reach the GUI thread in groups at most this often (seconds).
STEP_GROUP_INTERVAL_S = UI_UPDATE_INTERVAL_S


@dataclasses.dataclass(frozen=True)
class TrainSteps:
    """Consecutive :class:`~napari_divnoising.training.TrainStep` events and the
    :class:`~napari_divnoising.training.Validation` events among them, handed to the GUI thread at once."""

    steps: tuple[TrainStep, ...]
    validations: tuple[Validation, ...] = ()


def group_steps(events: Iterator[Any], interval_s: float | None = None,
                flush: Callable[[], bool] | None = None) -> Iterator[Any]:
    """Pass ``events`` on, with the per-step and validation events grouped into :class:`TrainSteps`
    at most every ``interval_s``.

    A training step takes milliseconds on a GPU, and a short run validates every second or so; one
    cross-thread signal and GUI update (a repaint of the window) per event would cost more than the
    work. No event is dropped: a group is handed on before any other event, and at the end. Closing
    this generator closes ``events``.

    Parameters
    ----------
    events
        The training events.
    interval_s
        Least time between two groups; default :data:`STEP_GROUP_INTERVAL_S`.
    flush
        Once it returns True (Stop was pressed), every event is handed on at once: a worker thread
        only sees a stop request when this generator yields.
    """
    if interval_s is None:
        interval_s = STEP_GROUP_INTERVAL_S
    steps: list[TrainStep] = []
    validations: list[Validation] = []
    last = -float("inf")
    try:
        for event in events:
            if isinstance(event, (TrainStep, Validation)):
                (steps if isinstance(event, TrainStep) else validations).append(event)
                now = time.monotonic()
                if steps and (now - last >= interval_s or (flush is not None and flush())):
                    yield TrainSteps(tuple(steps), tuple(validations))
                    steps, validations, last = [], [], now
                continue
            if steps or validations:
                yield TrainSteps(tuple(steps), tuple(validations))
                steps, validations = [], []
            yield event
        if steps or validations:
            yield TrainSteps(tuple(steps), tuple(validations))
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


#: Noise-fit progress reaches the GUI thread at most this often (seconds).
FIT_PROGRESS_INTERVAL_S = UI_UPDATE_INTERVAL_S


def latest_every(events: Iterator[Any], kind: type, interval_s: float,
                 flush: Callable[[], bool] | None = None) -> Iterator[Any]:
    """Pass ``events`` on, but events of type ``kind`` at most every ``interval_s`` (the latest one).

    For progress events that each replace the one before (an iteration count, a loss): the noise-model
    fit makes hundreds a second, and every one handed to the GUI thread repaints the window. The last
    ``kind`` event before any other event, and at the end, is always passed on. Closing this
    generator closes ``events``. Once ``flush()`` returns True (Stop was pressed), every event is
    passed on at once, so that the worker thread sees the stop request at its next event.
    """
    pending: Any = None
    last = -float("inf")
    try:
        for event in events:
            if isinstance(event, kind):
                now = time.monotonic()
                if now - last >= interval_s or (flush is not None and flush()):
                    pending, last = None, now
                    yield event
                else:
                    pending = event
                continue
            if pending is not None:
                yield pending
                pending = None
            yield event
        if pending is not None:
            yield pending
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


def write_output_tiff(path: Path, data: np.ndarray, facts: dict[str, Any], geometry: Geometry) -> Path:
    """Write one result layer's data with the core's :func:`~napari_divnoising.export.write_tiff`.

    ``facts`` is the layer's DivNoising metadata (kind and provenance, see
    :func:`~napari_divnoising.outputs.result_metadata`); ``geometry`` the input layer's placement,
    whose pixel size, unit and (for stacks) frame spacing go into the ImageJ metadata.
    """
    scale = tuple(float(v) for v in geometry.scale)
    input_ndim = len(scale)
    return write_tiff(
        path, np.asarray(data), kind=facts["kind"],
        input_axes="YX" if input_ndim == 2 else "TYX",
        pixel_size=(scale[-2], scale[-1]),
        unit=_unit_name(geometry.units),
        spacing=scale[0] if input_ndim == 3 else None,
        n_samples=facts.get("n_samples"),
        model_name=facts.get("model"),
        source=facts.get("source", geometry.name),
        extra=provenance_properties(facts),
    )
