"""A small model and test images shared by the prediction tests."""

from __future__ import annotations

import numpy as np
import torch

from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel


def make_model(depth: int = 2, seed: int = 0) -> DivNoisingModel:
    """A small randomly initialised model whose samples differ visibly (decoder output scaled up)."""
    torch.manual_seed(seed)
    net = DivNoisingVAE(depth=depth, start_filters=8, z_dim=8)
    with torch.no_grad():
        net.decoder[0].weight.mul_(6.0)
        net.decoder[-1].weight.mul_(40.0)
    return DivNoisingModel(net, GaussianNoiseModel(a=0.0, b=4.0, sigma_min=0.1), data_mean=100.0, data_std=20.0)


def image(shape=(50, 62), seed=1) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)
