"""PSNR and the std-PSNR diversity metric."""

from __future__ import annotations

import numpy as np
import pytest

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.metrics import intensity_matched_reference, psnr, sample_psnrs, std_psnr


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


def test_intensity_matched_reference_recovers_a_dimmer_frame():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 200, (64, 64))
    frame_signal = 0.94 * gt + 0.3  # the frame is dimmer than the average that made its ground truth
    noisy = frame_signal + rng.normal(0, 3, gt.shape)
    reference, a, b = intensity_matched_reference(noisy, gt)
    assert a == pytest.approx(0.94, abs=0.01)
    assert b == pytest.approx(0.3, abs=0.5)
    # A perfect denoiser of the frame is penalised against the ground truth, not against the reference.
    assert psnr(frame_signal, reference, 255) > psnr(frame_signal, gt, 255) + 10
    _, a1, b1 = intensity_matched_reference(gt + rng.normal(0, 3, gt.shape), gt)
    assert (a1, b1) == pytest.approx((1.0, 0.0), abs=0.1)


def test_intensity_matched_reference_rejects_bad_input():
    with pytest.raises(DivNoisingError, match="constant"):
        intensity_matched_reference(np.ones((8, 8)), np.full((8, 8), 3.0))
    with pytest.raises(DivNoisingError, match="shape"):
        intensity_matched_reference(np.ones((8, 8)), np.ones((4, 4)))
