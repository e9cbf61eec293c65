"""Workflows built from the core's parts, as event generators the widgets and the command line share.

- :func:`bootstrap_iter`: train with a co-learned Gaussian noise model, denoise the
  training images with it, fit a GMM noise model to (noisy, denoised) and train a new
  model with that GMM (bootstrapping, docs/method.md 4a);
- :func:`stream_prediction`: :func:`~napari_divnoising.prediction.predict_iter` with
  the running MMSE, variance and kept samples assembled for the whole image or stack,
  for a viewer that shows them while they are computed.

Both end with exactly one :class:`~napari_divnoising.events.Done` event, so
:func:`~napari_divnoising.events.run_to_end` gives their result. Closing a
generator stops the work after the current step. Qt-free.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .device import resolve_device
from .errors import DivNoisingError
from .events import Progress
from .model import DivNoisingModel
from .noise_model_fitting import NoiseFitProgress, NoiseFitResult, bootstrap_pairs, fit_gmm_iter
from .noise_models import GMMNoiseModel
from .training import COLEARN, TrainingConfig, TrainingDone, TrainingStarted, train_iter

#: Percentiles of the denoised signal the bootstrapped GMM is fitted within (the paper's choice).
BOOTSTRAP_CLIP = (0.5, 99.5)


@dataclass(frozen=True)
class BootstrapPhase:
    """A bootstrapping stage begins: ``stage`` of 3, in words ``message``.

    Stage 2 carries the first (co-learned) ``model``; stage 3 the fitted GMM ``noise_model``
    the final model is trained with.
    """

    stage: int
    message: str
    model: DivNoisingModel | None = None
    noise_model: GMMNoiseModel | None = None


def split_budget(config: TrainingConfig, fraction: float = 0.5) -> TrainingConfig:
    """A copy of ``config`` with ``fraction`` of its time and step budgets (for one of several trainings)."""
    changes: dict[str, Any] = {}
    if config.max_minutes:
        changes["max_minutes"] = config.max_minutes * fraction
    if config.max_steps:
        changes["max_steps"] = max(1, int(config.max_steps * fraction))
    return dataclasses.replace(config, **changes)


def bootstrap_iter(
    images: Sequence[np.ndarray],
    config: TrainingConfig,
    *,
    first_config: TrainingConfig | None = None,
    first_model: DivNoisingModel | None = None,
    n_samples: int = 20,
    clip: tuple[float, float] = BOOTSTRAP_CLIP,
    seed: int = 500,
    checkpoint_path: str | Path | None = None,
    warm_start: bool = False,
) -> Iterator[Any]:
    """Bootstrapping: co-learn, denoise the training images, fit a GMM to them, train again with it.

    Parameters
    ----------
    images
        Noisy training images (2-D) or stacks (frames, Y, X), raw units.
    config
        Settings of the final training (with the GMM).
    first_config
        Settings of the first, co-learned training; ``config`` when None. Halve both with
        :func:`split_budget` to keep the total budget.
    first_model
        A model already trained on ``images`` (skips the first training).
    n_samples
        Posterior samples per frame for the first model's MMSE (the pseudo-clean signal).
    clip
        Percentiles of the pseudo-clean signal the GMM is fitted within.
    seed
        Seed of the latent noise of the denoising (frame ``i`` uses ``seed + i``).
    checkpoint_path
        Model file the final training writes (the first training writes none).
    warm_start
        Train the first model's network on with the GMM (a new model with the first one's weights) when it
        is the network ``config`` asks for, instead of a new network from scratch (measured no better at
        the same budget: benchmarks/results/ablation.md).

    Yields
    ------
    BootstrapPhase
        At the start of each stage.
    TrainingStarted, TrainStep, Validation, CheckpointSaved, TrainingWarning
        The events of both trainings (the first training's :class:`TrainingDone` is not passed on).
    Progress
        While denoising the training images and fitting the GMM.
    TrainingDone
        Last: the final model (with the GMM) is its :attr:`~TrainingDone.result`.
    """
    from .prediction import PredictionDone, SampleBatch, predict_iter

    images = [np.asarray(image) for image in images]
    if first_model is None:
        yield BootstrapPhase(1, "Bootstrap 1/3: training with a co-learned noise model")
        # closing(): when this generator is closed, the running training is closed at once (its clean-up runs).
        with closing(train_iter(images, COLEARN, first_config or config)) as first_training:
            for event in first_training:
                if isinstance(event, TrainingStarted):
                    first_model = event.model
                if isinstance(event, TrainingDone):
                    first_model = event.model
                    continue
                yield event
        if first_model is None:
            raise DivNoisingError("Bootstrapping: the first training produced no model.")

    yield BootstrapPhase(2, "Bootstrap 2/3: denoising the training images and fitting a GMM to them",
                         model=first_model)
    frames = [frame for image in images for frame in (image if image.ndim == 3 else image[None])]
    pseudo: list[np.ndarray] = []
    for i, frame in enumerate(frames):
        # One view: the pseudo-clean images this GMM fit was measured with.
        with closing(predict_iter(first_model, frame, n_samples, keep_samples=0, seed=seed + i,
                                  orientations=1, offsets=1)) as sampling:
            for event in sampling:
                if isinstance(event, SampleBatch):
                    yield Progress(i * n_samples + event.done, len(frames) * n_samples, "Denoising the training images")
                elif isinstance(event, PredictionDone):
                    pseudo.append(np.asarray(event.result.mmse, dtype=np.float32))
    pairs = bootstrap_pairs(frames, pseudo)
    gmm = None
    try:
        for event in fit_gmm_iter(pairs.signal, pairs.observation, clip_percentiles=clip,
                                  integer_data=pairs.integer_data):
            if isinstance(event, NoiseFitProgress):
                yield Progress(event.iteration, event.total, "Fitting the GMM noise model")
            elif isinstance(event, NoiseFitResult):
                gmm = event.result
    except DivNoisingError as exc:
        raise DivNoisingError(
            f"Bootstrapping stopped after the first training: {exc} The first (co-learned) model is kept; "
            "give a larger budget so it denoises well enough, or fit a noise model from calibration data."
        ) from None
    assert gmm is not None
    start = warm_started_model(first_model, gmm, config) if warm_start else None
    if start is None:
        yield BootstrapPhase(3, "Bootstrap 3/3: training with the bootstrapped GMM noise model", noise_model=gmm)
        yield from train_iter(images, gmm, config, checkpoint_path=checkpoint_path)
        return
    yield BootstrapPhase(3, "Bootstrap 3/3: training the first network on with the bootstrapped GMM noise model",
                         noise_model=gmm)
    yield from train_iter(images, None, config, resume=start, checkpoint_path=checkpoint_path)


def warm_started_model(first_model: DivNoisingModel, noise_model: GMMNoiseModel, config: TrainingConfig
                       ) -> DivNoisingModel | None:
    """A new model with ``first_model``'s network weights and normalisation and ``noise_model``, ready to train with
    ``config`` (as ``resume``); None when ``config`` asks for another network than the first model's.

    Its history is new (validation losses under another noise model do not compare) and says the KL weight
    needs no annealing (the network was trained with the full KL term).
    """
    settings = first_model.network.settings()
    wanted = config.resolved(resolve_device(config.device))
    if any(getattr(wanted, name) != value for name, value in settings.items()):
        return None
    gmm = copy.deepcopy(noise_model)
    gmm.requires_grad_(False)
    history = {"kl_annealing_done": True, "warm_start": {"steps": int(first_model.history.get("steps", 0)),
                                                         "noise_model": getattr(first_model.noise_model, "kind", "")}}
    return DivNoisingModel(copy.deepcopy(first_model.network).cpu(), gmm, first_model.data_mean, first_model.data_std,
                           config=dict(first_model.config), history=history, name=config.name)


# ---------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class PredictionUpdate:
    """Running results of the whole image or stack after ``done`` of ``total`` samples (all frames).

    ``mmse`` and ``variance`` have the input's shape (frames not reached yet are NaN);
    ``kept_samples`` holds the samples kept so far, shape (k, *input shape), when they changed
    since the last update, else None. Arrays are the caller's to keep (copies).
    """

    done: int
    total: int
    mmse: np.ndarray
    variance: np.ndarray
    kept_samples: np.ndarray | None


def stream_prediction(
    model: DivNoisingModel, image: np.ndarray, n_samples: int, *, keep_samples: int = 20,
    min_interval_s: float = 0.0, flush: Callable[[], bool] | None = None, **predict_kwargs: Any,
) -> Iterator[Any]:
    """:func:`~napari_divnoising.prediction.predict_iter` with whole-image running results.

    Yields a :class:`PredictionUpdate` after every sample batch (with ``min_interval_s`` > 0: at
    most that often, and always after a frame's last batch; the running mean and variance are only
    read, a device-to-host copy on a GPU, for the updates yielded; and after every batch once
    ``flush()`` returns True, e.g. once Stop was pressed, so that a worker thread sees it), the core's
    :class:`~napari_divnoising.events.Progress` events (encoding, tiles, MAP) unchanged,
    and last the core's ``PredictionDone`` (its ``result`` is the ``PredictionResult``).
    Other keyword arguments (``compute_map``, ``seed``, ``device``...) go to ``predict_iter``.
    """
    import time

    from .prediction import PredictionDone, SampleBatch, predict_iter

    image = np.asarray(image)
    is_stack = image.ndim == 3
    keep = max(0, min(int(keep_samples), int(n_samples)))
    mmse = np.full(image.shape, np.nan, dtype=np.float32)
    variance = np.full(image.shape, np.nan, dtype=np.float32)
    kept = np.full((keep, *image.shape), np.nan, dtype=np.float32)
    frame_done = {}  # samples drawn so far per frame
    kept_changed = False
    last_update = -float("inf")
    for event in predict_iter(model, image, int(n_samples), keep_samples=keep, **predict_kwargs):
        if isinstance(event, SampleBatch):
            index = (event.frame,) if is_stack else ()
            first = frame_done.get(event.frame, 0)
            frame_done[event.frame] = event.done
            if first < keep:
                take = event.samples[: keep - first]
                kept[(slice(first, first + len(take)), *index)] = take
                kept_changed = True
            now = time.monotonic()
            if (event.done < event.total and now - last_update < min_interval_s
                    and not (flush is not None and flush())):
                continue
            last_update = now
            mmse[index] = event.mean
            variance[index] = event.variance
            shown = kept if is_stack else kept[: min(event.done, keep)]
            yield PredictionUpdate(
                done=event.frame * event.total + event.done,
                total=event.n_frames * event.total,
                mmse=mmse.copy(),
                variance=variance.copy(),
                kept_samples=shown.copy() if kept_changed else None,
            )
            kept_changed = False
        elif isinstance(event, (Progress, PredictionDone)):
            yield event
