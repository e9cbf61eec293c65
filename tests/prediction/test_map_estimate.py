"""MAP estimate by mean shift on overlapping windows."""

from __future__ import annotations

import numpy as np
import pytest

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.prediction.map_estimate import KERNELS, _window_indices, map_estimate


def bimodal_samples(n=100, shape=(41, 37), weight=0.7, gap=40.0, noise=4.0, seed=0):
    """Samples from two well-separated modes per window: mode A with probability ``weight``, else B = A + gap."""
    rng = np.random.default_rng(seed)
    mode_a = rng.uniform(50, 100, shape)
    mode_b = mode_a + gap
    pick_a = rng.random(n) < weight
    samples = np.where(pick_a[:, None, None], mode_a, mode_b) + rng.normal(0, noise, (n, *shape))
    return samples.astype(np.float32), mode_a, mode_b


def test_windows_cover_every_pixel_with_the_paper_overlap():
    idx = _window_indices((23, 30), 10, 3).numpy()
    assert idx.shape[1] == 100
    assert set(np.unique(idx)) == set(range(23 * 30))
    corners = idx[:, 0]
    ys = sorted(set(corners // 30))
    assert ys == [0, 7, 13]  # stride 7 (overlap 3), last window flush with the edge


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("weight", [0.7, 0.55])
def test_map_picks_the_main_mode_where_mmse_averages(kernel, weight):
    samples, mode_a, mode_b = bimodal_samples(weight=weight)
    mmse = samples.mean(0)
    estimate = map_estimate(samples, kernel=kernel)
    assert estimate.shape == mode_a.shape
    err_map = np.abs(estimate - mode_a).mean()
    err_mmse = np.abs(mmse - mode_a).mean()
    assert err_mmse > 8  # the mean sits between the modes ...
    assert err_map < 1.5  # ... the MAP sits on the heavier one
    assert np.abs(estimate - mode_b).mean() > 30


def test_bandwidth_rule_is_independent_of_the_intensity_scale():
    samples, *_ = bimodal_samples(n=60, shape=(24, 24))
    eight_bit = map_estimate(samples)
    sixteen_bit = map_estimate(samples * 257.0) / 257.0
    np.testing.assert_allclose(sixteen_bit, eight_bit, atol=1e-2)


def test_absolute_reference_bandwidth():
    samples, mode_a, _ = bimodal_samples(n=60, shape=(24, 24), gap=400.0, noise=20.0)
    # Window distances: about 200 within a mode, 1200 (A) and 2800 (B) from the mean; an absolute schedule
    # 1500 -> 750 catches mode A, the reference's 200 -> 100 finds no sample near the mean and stays there.
    for kernel in KERNELS:
        estimate = map_estimate(samples, bandwidth=1500.0, kernel=kernel)
        assert np.abs(estimate - mode_a).mean() < 15, kernel
    stuck = map_estimate(samples, bandwidth=200.0, kernel="flat")
    np.testing.assert_allclose(stuck, samples.mean(0), atol=1e-2)


def test_unimodal_samples_give_a_map_near_the_mean():
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 50, (30, 30))
    samples = truth + rng.normal(0, 2, (80, 30, 30))
    estimate = map_estimate(samples)
    assert np.abs(estimate - truth).mean() < 2.0


def test_the_gaussian_kernel_finds_a_single_mode_about_as_well_as_the_mean_where_a_flat_kernel_cannot():
    # Gaussian samples around the truth: their mode is the truth, and the mean of all samples its best estimate.
    # A flat kernel narrow enough to separate modes holds only a few of these 100-dimensional points.
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 50, (30, 30))
    samples = (truth + rng.normal(0, 2, (80, 30, 30))).astype(np.float32)
    error_of_mean = np.abs(samples.mean(0) - truth).mean()
    error_gaussian = np.abs(map_estimate(samples) - truth).mean()
    error_flat = np.abs(map_estimate(samples, kernel="flat") - truth).mean()
    assert error_gaussian < 1.2 * error_of_mean
    assert error_flat > 3 * error_of_mean


def test_identical_samples_and_small_images():
    same = np.repeat(np.linspace(0, 1, 7 * 5).reshape(1, 7, 5), 4, axis=0)
    np.testing.assert_allclose(map_estimate(same), same[0], atol=1e-6)
    stack = np.random.default_rng(0).normal(size=(5, 2, 12, 12))
    assert map_estimate(stack).shape == (2, 12, 12)


@pytest.mark.parametrize(
    "samples, kwargs",
    [
        (np.zeros((4, 5)), {}),
        (np.zeros((3, 8, 8)), {"overlap": 10}),
        (np.zeros((3, 8, 8)), {"shrink": 1.5}),
        (np.zeros((3, 8, 8)), {"bandwidth": -1.0}),
        (np.zeros((3, 8, 8)), {"kernel": "epanechnikov"}),
    ],
)
def test_bad_arguments(samples, kwargs):
    with pytest.raises(DivNoisingError):
        map_estimate(samples, **kwargs)
