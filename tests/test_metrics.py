"""PSNR and the std-PSNR diversity metric."""

from __future__ import annotations

import numpy as np
import pytest

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.metrics import psnr, sample_psnrs, std_psnr


def test_psnr_matches_the_definition():
    gt = np.zeros((10, 10))
    x = gt + 5.0  # MSE 25
    assert psnr(x, gt, 255) == pytest.approx(20 * np.log10(255) - 10 * np.log10(25))
    assert psnr(gt, gt, 255) == float("inf")
    assert psnr(x, gt, 65535) > psnr(x, gt, 255)


def test_std_psnr_grows_with_diversity():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 200, (32, 32))
    similar = gt + rng.normal(0, 5, (20, 32, 32))
    scales = np.linspace(1, 20, 20)[:, None, None]
    diverse = gt + rng.normal(0, 1, (20, 32, 32)) * scales
    values = sample_psnrs(similar, gt, 255)
    assert values.shape == (20,)
    assert std_psnr(similar, gt, 255) == pytest.approx(np.std(values))
    assert std_psnr(diverse, gt, 255) > 5 * std_psnr(similar, gt, 255)


def test_metric_errors():
    with pytest.raises(DivNoisingError):
        psnr(np.zeros((3, 3)), np.zeros((4, 4)), 255)
    with pytest.raises(DivNoisingError):
        psnr(np.zeros((3, 3)), np.zeros((3, 3)), 0)
    with pytest.raises(DivNoisingError):
        std_psnr(np.zeros((1, 3, 3)), np.ones((3, 3)), 255)
