"""Choosing the noise model a training run uses, and checking it against the data and a resumed model."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DivNoisingError
from ..model import DivNoisingModel
from ..noise_model_fitting import (
    ClippingLimits,
    NoiseLine,
    clipping_limits,
    estimate_noise_line,
    fit_gmm_from_noisy,
)
from ..noise_models import GaussianNoiseModel, GMMNoiseModel
from ..validation import COLEARN_NAMES, ESTIMATED_NAME
from .config import TrainingConfig

#: Noise-model argument meaning "co-learn a Gaussian noise model (variance = a * signal + b)".
COLEARN = COLEARN_NAMES[0]
#: Noise-model argument meaning "a GMM estimated from the training images alone, before training"
#: (:func:`~napari_divnoising.noise_model_fitting.fit_gmm_from_noisy`).
ESTIMATED = ESTIMATED_NAME


def is_colearn(spec: Any) -> bool:
    """True for the noise-model arguments that ask for a co-learned Gaussian noise model."""
    return spec is None or (isinstance(spec, str) and spec.lower() in COLEARN_NAMES)


def is_estimated(spec: Any) -> bool:
    """True for the noise-model argument that asks for a GMM estimated from the training images."""
    return isinstance(spec, str) and spec.lower() == ESTIMATED


def _neighbour_noise_variance(regions: list[np.ndarray]) -> float:
    """Rough upper estimate of the noise variance: half the variance of horizontal neighbour differences."""
    diffs = [np.diff(r[:, : min(r.shape[1], 4096)], axis=1).ravel() for r in regions]
    return float(np.var(np.concatenate(diffs).astype(np.float64)) / 2.0)


def colearned_noise_model(
    mean: float, std: float, regions: list[np.ndarray], sigma_min: float | None, line: NoiseLine | None = None,
    limits: ClippingLimits | None = None,
) -> GaussianNoiseModel:
    """A trainable Gaussian noise model started from the data's noise line, or else a flat variance.

    ``line`` (see :func:`~napari_divnoising.noise_model_fitting.estimate_noise_line`) gives the start
    and, unless ``sigma_min`` is set, the variance floor; without it the start is a flat variance
    near the noise level of the images ``regions``. ``limits``
    (:func:`~napari_divnoising.noise_model_fitting.clipping_limits`) tell it where the camera clipped
    the values (docs/method.md 4b).
    """
    limits = limits or ClippingLimits()
    recorded = {"quantum": limits.quantum, "floor": limits.floor, "ceiling": limits.ceiling}
    if line is not None:
        floor = sigma_min if sigma_min is not None else max(0.01 * std, float(np.sqrt(max(line.least_variance, 0.0))))
        return GaussianNoiseModel(a=line.a, b=line.b, sigma_min=floor, offset=mean, scale=std, trainable=True,
                                  **recorded)
    b = float(np.clip(0.5 * _neighbour_noise_variance(regions), 1e-4 * std**2, 0.5 * std**2))
    floor = sigma_min if sigma_min is not None else 0.01 * std
    return GaussianNoiseModel(a=0.0, b=b, sigma_min=floor, offset=mean, scale=std, trainable=True, **recorded)


def colearned_clipping(images: list[np.ndarray], config: TrainingConfig) -> ClippingLimits:
    """Where a noise model co-learned on ``images`` with ``config`` knows the camera clipped them (nowhere when
    ``config.noise_clipping`` is off)."""
    return clipping_limits(images, seed=config.seed) if config.noise_clipping else ClippingLimits()


def resolve_noise_model(
    spec: Any, data_mean: float, data_std: float, regions: list[np.ndarray], config: TrainingConfig,
    limits: ClippingLimits | None = None,
) -> nn.Module:
    """The noise model a new run trains with (see :func:`~napari_divnoising.training.train_iter`).

    ``limits`` are the clipping limits a co-learned model keeps (:func:`colearned_clipping`); found on
    ``regions`` when not given.
    """
    if is_colearn(spec):
        line = estimate_noise_line(regions, seed=config.seed) if config.noise_warm_start else None
        if limits is None:
            limits = colearned_clipping(regions, config)
        return colearned_noise_model(data_mean, data_std, regions, config.sigma_min, line, limits)
    if is_estimated(spec):
        model = fit_gmm_from_noisy(regions, seed=config.seed)
        model.requires_grad_(False)
        return model
    if isinstance(spec, GMMNoiseModel):
        model = copy.deepcopy(spec)
        model.requires_grad_(False)
        return model
    if isinstance(spec, GaussianNoiseModel):
        return copy.deepcopy(spec)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not spec > 0:
            raise DivNoisingError(f"The Gaussian noise sigma must be positive (got {spec}).")
        return GaussianNoiseModel(a=0.0, b=float(spec) ** 2, sigma_min=1e-6 * data_std, trainable=False)
    raise DivNoisingError(
        f"Unknown noise model {spec!r}: give a GMM noise model, a Gaussian noise model, "
        f"{COLEARN!r} to co-learn one, {ESTIMATED!r} to estimate a GMM from the images, or a noise sigma."
    )


def gmm_range_warning(noise_model: nn.Module, regions: list[np.ndarray]) -> str | None:
    """A warning when the training data's range and a GMM noise model's signal range do not match (both ways)."""
    from ..validation import noise_model_range_warning

    return noise_model_range_warning(noise_model, np.concatenate([r.ravel() for r in regions]), "the training data")


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].detach().cpu(), sb[k].detach().cpu()) for k in sa
    )


def check_resume(resume: DivNoisingModel, config: TrainingConfig, spec: Any) -> None:
    """Refuse to continue ``resume`` with another network or another noise model (never ignore it)."""
    settings = resume.network.settings()
    for name, have, want in (
        ("network", settings["network"], config.network),
        ("depth", settings["depth"], config.depth),
        ("start_filters", settings["start_filters"], config.start_filters),
        ("z_dim", settings["z_dim"], config.z_dim),
    ):
        if have != want:
            raise DivNoisingError(
                f"The model to continue has {name} {have}, but {name} {want} was asked for; a model cannot change "
                f"its network. Use {name} {have} (or leave it unset) to continue, or train a new model."
            )
    own = resume.noise_model
    kind = getattr(own, "kind", type(own).__name__)
    if spec is None or spec is own:  # None: continue with the model's own noise model
        return
    if is_estimated(spec):
        raise DivNoisingError(
            "A model being continued keeps its own noise model; leave out the noise-model choice to continue, or "
            "train a new model with a noise model estimated from the images."
        )
    if is_colearn(spec):
        if isinstance(own, GaussianNoiseModel) and own.alpha.requires_grad:
            return
        raise DivNoisingError(
            f"The model to continue was trained with a {kind} noise model; it cannot continue by co-learning a "
            "Gaussian one. Leave out the noise-model choice to continue with its own, or train a new model."
        )
    if isinstance(spec, nn.Module):
        if type(spec) is type(own) and _same_weights(spec, own):
            return
        raise DivNoisingError(
            f"The model to continue was trained with another {kind} noise model than the one given; a model "
            "cannot change its noise model. Leave out the noise model to continue with the model's own, or train "
            "a new model with the new one."
        )
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        fixed = isinstance(own, GaussianNoiseModel) and not own.alpha.requires_grad
        if fixed and own.a == 0.0 and np.isclose(own.b, float(spec) ** 2, rtol=1e-4):
            return
        raise DivNoisingError(
            f"The model to continue was trained with another ({kind}) noise model than Gaussian noise of sigma "
            f"{spec:g}; a model cannot change its noise model. Leave out the noise model to continue with the "
            "model's own, or train a new model."
        )
