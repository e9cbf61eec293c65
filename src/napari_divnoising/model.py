"""A trained DivNoising model: network, noise model and normalisation, as one object.

Saving and loading live in :mod:`napari_divnoising.model_io` (one file holding
a JSON config and tensors, loaded without executing code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .hierarchical_network import HierarchicalVAE
from .network import DivNoisingVAE


@dataclass
class DivNoisingModel:
    """Everything needed to denoise with a trained model.

    Attributes
    ----------
    network
        The VAE (:class:`~napari_divnoising.network.DivNoisingVAE` or
        :class:`~napari_divnoising.hierarchical_network.HierarchicalVAE`); works in normalised units.
    noise_model
        :class:`~napari_divnoising.noise_models.GMMNoiseModel` or
        :class:`~napari_divnoising.noise_models.GaussianNoiseModel`; raw units.
    data_mean, data_std
        Scalar normalisation of the training data: ``x_norm = (x - mean) / std``.
    config
        JSON-serialisable settings the model was built and trained with
        (``depth``, ``start_filters``, ``z_dim``, ``patch_size``, ``beta``, ...).
    history
        JSON-serialisable training history (steps, losses, wall time, ...).
    name
        A short human-readable name (used in exported file descriptions).
    training_state
        Optional optimizer / LR-scheduler state (``{"optimizer": ..., "scheduler": ...}``) saved with
        checkpoints so that "continue training" resumes exactly; ``None`` when not kept.
    """

    network: DivNoisingVAE | HierarchicalVAE
    noise_model: nn.Module
    data_mean: float
    data_std: float
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    name: str = "divnoising"
    training_state: dict[str, Any] | None = None

    def to(self, device: torch.device | str) -> DivNoisingModel:
        """Move network and noise model to ``device`` (in place) and return self."""
        self.network.to(device)
        self.noise_model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.data_mean) / self.data_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.data_std + self.data_mean

    def image_from_decoded(self, x: torch.Tensor) -> torch.Tensor:
        """The denoised image of a decoded (normalised) signal: the mean the camera records at that signal.

        That is the signal itself, except for a noise model that knows the camera's clipping
        (:attr:`~napari_divnoising.noise_models.GaussianNoiseModel.mean_is_signal` false), whose mean is
        what an average of many noisy frames would show.
        """
        signal = self.denormalize(x)
        if getattr(self.noise_model, "mean_is_signal", True):
            return signal
        return self.noise_model.mean(signal)
