"""Thin adapters between the widgets and the Qt-free core (training, prediction, export).

The widgets consume the small events defined here, so they stay simple and
the few places that know the core's exact signatures are in one file.
Everything here runs inside thread workers (no Qt).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DivNoisingError


@dataclass(frozen=True)
class TrainingPhase:
    """A stage of a multi-stage run (bootstrapping); ``noise_model`` is set when a new one was fitted."""

    message: str
    noise_model: Any = None


@dataclass(frozen=True)
class PredictionUpdate:
    """Running result after ``done`` of ``total`` samples.

    ``kept_samples`` is a copy of the samples kept for display, shape (k, *image shape), when it
    changed since the last update (None once ``keep_samples`` of them are there).
    """

    done: int
    total: int
    mmse: np.ndarray
    variance: np.ndarray
    kept_samples: np.ndarray | None


@dataclass(frozen=True)
class PredictionResult:
    """Final MMSE and variance (and MAP when asked for)."""

    mmse: np.ndarray
    variance: np.ndarray
    map: np.ndarray | None = None


# ---------------------------------------------------------------------- training


def make_training_config(
    *, patch_size: int, batch_size: int, depth: int, beta: float, learning_rate: float, device: str,
    max_minutes: float | None, max_steps: int | None,
) -> Any:
    """Build the core's TrainingConfig from the widget settings."""
    from ..training import TrainingConfig

    names = {f.name for f in dataclasses.fields(TrainingConfig)}
    wanted = {
        "patch_size": patch_size, "batch_size": batch_size, "depth": depth, "beta": beta,
        "learning_rate": learning_rate, "device": device, "max_minutes": max_minutes, "max_steps": max_steps,
    }
    return TrainingConfig(**{k: v for k, v in wanted.items() if k in names})


def _half_budget(config: Any) -> Any:
    changes = {}
    if getattr(config, "max_minutes", None):
        changes["max_minutes"] = config.max_minutes / 2
    if getattr(config, "max_steps", None):
        changes["max_steps"] = max(1, config.max_steps // 2)
    return dataclasses.replace(config, **changes)


def training_events(
    images: list[np.ndarray], noise_model: Any, config: Any, *, resume: Any = None, bootstrap: bool = False,
) -> Iterator[Any]:
    """Training events of the core's ``train_iter``; ``noise_model=None`` co-learns a Gaussian noise model.

    With ``bootstrap``: co-learn for half the budget, fit a GMM to (noisy, MMSE of that model), then
    train a new model with the GMM for the other half (METHOD.md 4a, bootstrapping).
    """
    from ..training import train_iter

    if resume is not None:
        # A continued model keeps its own network and noise model.
        net = resume.network
        config = dataclasses.replace(config, depth=net.depth, start_filters=net.start_filters, z_dim=net.z_dim)
        yield from train_iter(images, None, config, resume=resume)
        return
    if not bootstrap:
        yield from train_iter(images, _noise_spec(noise_model), config)
        return
    from ..noise_model_fitting import bootstrap_gmm

    half = _half_budget(config)
    yield TrainingPhase("Bootstrap 1/3: training with a co-learned noise model")
    first = None
    for event in train_iter(images, _noise_spec(None), half):
        if type(event).__name__ == "TrainingStarted":
            first = event.model
        yield event
    if first is None:
        raise DivNoisingError("Bootstrapping: the first training produced no model.")
    yield TrainingPhase("Bootstrap 2/3: denoising the training images and fitting a GMM to them")
    noisy, pseudo = [], []
    for image in images:
        stack = image if image.ndim == 3 else image[None]
        for frame in stack:
            result = None
            for ev in prediction_events(first, frame, 20, keep_samples=0, compute_map=False):
                result = ev
            noisy.append(frame.astype(np.float32))
            pseudo.append(result.mmse.astype(np.float32))
    # Frames may differ in size: all pixels as one (1, N) "image" of pairs.
    try:
        gmm = bootstrap_gmm(
            np.concatenate([n.ravel() for n in noisy])[None], np.concatenate([p.ravel() for p in pseudo])[None]
        )
    except DivNoisingError as exc:
        raise DivNoisingError(
            f"Bootstrapping stopped after the first training: {exc} The first (co-learned) model is kept; "
            "give a larger budget so it denoises well enough, or fit a noise model from calibration data."
        ) from None
    yield TrainingPhase("Bootstrap 3/3: training with the bootstrapped GMM noise model", noise_model=gmm)
    yield from train_iter(images, gmm, half)


def _noise_spec(noise_model: Any) -> Any:
    """What ``train_iter`` takes for "co-learn a Gaussian noise model" when no model is given."""
    if noise_model is not None:
        return noise_model
    from .. import training

    return getattr(training, "COLEARN", "gaussian")


# ---------------------------------------------------------------------- prediction


def prediction_events(
    model: Any, image: np.ndarray, n_samples: int, *, keep_samples: int = 20, compute_map: bool = False,
) -> Iterator[PredictionUpdate | PredictionResult | Any]:
    """Stream posterior samples of ``image`` (2-D, or a 3-D stack done frame by frame by the core).

    Yields a :class:`PredictionUpdate` per sample batch with the running MMSE / variance of the
    whole image or stack (frames not reached yet are NaN), the core's ``Progress`` events (encoding,
    tiles, MAP) unchanged, and a final :class:`PredictionResult`.
    """
    from ..events import Progress
    from ..prediction import PredictionDone, SampleBatch, predict_iter

    image = np.asarray(image)
    is_stack = image.ndim == 3
    keep = max(0, min(int(keep_samples), int(n_samples)))
    mmse = np.full(image.shape, np.nan, dtype=np.float32)
    variance = np.full(image.shape, np.nan, dtype=np.float32)
    kept = np.full((keep, *image.shape), np.nan, dtype=np.float32)
    for event in predict_iter(model, image, int(n_samples), keep_samples=keep, compute_map=compute_map):
        if isinstance(event, SampleBatch):
            target = (lambda a: a[event.frame]) if is_stack else (lambda a: a)
            target(mmse)[...] = event.mean
            target(variance)[...] = event.variance
            first = event.done - len(event.samples)
            changed = first < keep
            if changed:
                take = event.samples[: keep - first]
                if is_stack:
                    kept[first : first + len(take), event.frame] = take
                else:
                    kept[first : first + len(take)] = take
            shown = kept if is_stack else kept[: min(event.done, keep)]
            yield PredictionUpdate(
                done=event.frame * event.total + event.done,
                total=event.n_frames * event.total,
                mmse=mmse.copy(),
                variance=variance.copy(),
                kept_samples=shown.copy() if changed else None,
            )
        elif isinstance(event, PredictionDone):
            result = event.result
            yield PredictionResult(result.mmse, result.variance, result.map)
        elif isinstance(event, Progress):
            yield event


def prior_events(model: Any, count: int, size: int) -> Iterator[np.ndarray]:
    """Yield ``count`` prior samples of ``size`` x ``size`` pixels as one (count, size, size) array."""
    from ..prediction import generate_prior

    yield np.asarray(generate_prior(model, count, size), dtype=np.float32)


# ---------------------------------------------------------------------- export


def write_output_tiff(
    path: Path, data: np.ndarray, kind: str, geometry: Any, model: Any, n_samples: int | None = None,
) -> Path:
    """Write one result with the core's :func:`~napari_divnoising.export.write_tiff` (same files as the CLI).

    ``geometry`` is the input layer's placement: its pixel size, unit and (for stacks) frame spacing
    go into the ImageJ metadata.
    """
    from .._writer import _unit_name
    from ..export import write_tiff

    scale = tuple(float(v) for v in geometry.scale)
    input_ndim = len(scale)
    return write_tiff(
        path, np.asarray(data), kind=kind,
        input_axes="YX" if input_ndim == 2 else "TYX",
        pixel_size=(scale[-2], scale[-1]),
        unit=_unit_name(geometry.units),
        spacing=scale[0] if input_ndim == 3 else None,
        n_samples=n_samples,
        model_name=getattr(model, "name", None),
        source=geometry.name,
    )
