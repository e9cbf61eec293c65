"""Fitting GMM noise models to calibration stacks and noisy/clean pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.noise_model_fitting import (
    NoiseFitProgress,
    NoiseFitResult,
    bootstrap_gmm,
    calibration_pairs,
    calibration_statistics,
    clipping_limits,
    empirical_noise_statistics,
    fit_gmm_from_calibration,
    fit_gmm_from_pairs,
    fit_gmm_iter,
    variance_line,
)
from napari_divnoising.noise_models import GMMNoiseModel

GAIN, OFFSET, READ_SIGMA = 2.0, 100.0, 3.0


def true_variance(s):
    return GAIN * (np.asarray(s) - OFFSET) + READ_SIGMA**2


def clean_image(size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return OFFSET + 400.0 * (0.5 + 0.5 * np.sin(xx / 5.0) * np.cos(yy / 7.0))


def poisson_gaussian(clean: np.ndarray, n_frames: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n_frames,) + clean.shape
    frames = GAIN * rng.poisson((clean - OFFSET) / GAIN, size=shape) + OFFSET + rng.normal(0, READ_SIGMA, shape)
    return frames.astype(np.float32)


@pytest.fixture(scope="module")
def calibration_stack() -> np.ndarray:
    return poisson_gaussian(clean_image(), n_frames=24)


@pytest.fixture(scope="module")
def calibration_fit(calibration_stack) -> NoiseFitResult:
    signal, obs = calibration_pairs(calibration_stack)
    events = list(fit_gmm_iter(signal, obs, seed=0))
    assert all(isinstance(e, NoiseFitProgress) for e in events[:-1])
    assert isinstance(events[-1], NoiseFitResult)
    return events[-1]


def test_calibration_fit_recovers_poisson_gaussian_variance(calibration_fit):
    model = calibration_fit.model
    levels = torch.tensor([130.0, 200.0, 300.0, 400.0, 480.0], dtype=torch.float64)
    with torch.no_grad():
        fitted = model.variance(levels).numpy()
        mean = model.mean(levels).numpy()
    np.testing.assert_allclose(fitted, true_variance(levels.numpy()), rtol=0.10)
    np.testing.assert_allclose(mean, levels.numpy(), rtol=1e-5)
    slope, _ = variance_line(model)
    assert slope == pytest.approx(GAIN, rel=0.1)


def test_fit_yields_decreasing_progress_and_converges(calibration_stack):
    signal, obs = calibration_pairs(calibration_stack)
    events = list(fit_gmm_iter(signal, obs, explore_iterations=600, polish_iterations=200))
    progress = [e for e in events if isinstance(e, NoiseFitProgress)]
    result = events[-1]
    assert len(progress) == result.iterations >= 3
    assert [p.iteration for p in progress] == list(range(1, len(progress) + 1))
    assert all(p.total == 800 for p in progress)
    stages = [p.stage for p in progress]
    assert stages == sorted(stages)  # "explore" first, then "polish"
    assert {"explore", "polish"} == set(stages)
    explore = [p.nll for p in progress if p.stage == "explore"]
    polish = [p.nll for p in progress if p.stage == "polish"]
    assert explore[-1] < explore[0]
    assert polish[-1] <= polish[0] + 1e-9
    assert result.converged and result.iterations < 800
    assert result.train_nll == pytest.approx(polish[-1])
    assert isinstance(result.model, GMMNoiseModel) and result.model.weight.dtype == torch.float32


def test_fit_explains_unseen_frames_almost_as_well_as_the_truth(calibration_stack, calibration_fit):
    """On fresh frames given the true clean signal, the fit is close to the true noise and beats the start."""
    clean = clean_image()
    fresh = poisson_gaussian(clean, n_frames=4, seed=99)
    s = torch.as_tensor(np.broadcast_to(clean, fresh.shape).reshape(-1), dtype=torch.float64)
    x = torch.as_tensor(fresh.reshape(-1), dtype=torch.float64)
    start = GMMNoiseModel.initial(float(clean.min()), float(clean.max()), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        nll_fit = float(-calibration_fit.model.log_likelihood(x, s).mean())
        nll_start = float(-start.log_likelihood(x, s).mean())
    var = true_variance(s.numpy())
    nll_truth = float(np.mean(0.5 * ((x.numpy() - s.numpy()) ** 2 / var + np.log(2 * np.pi * var))))
    assert nll_fit < nll_start - 0.1
    assert nll_fit == pytest.approx(nll_truth, abs=0.02)
    assert calibration_fit.heldout_nll == pytest.approx(calibration_fit.train_nll, abs=0.05)


def test_fit_from_pairs_recovers_variance():
    clean = clean_image(64)
    noisy = poisson_gaussian(clean, n_frames=6, seed=5)
    clean_stack = np.broadcast_to(clean, noisy.shape).astype(np.float32)
    model = fit_gmm_from_pairs(noisy, clean_stack)
    levels = torch.tensor([150.0, 300.0, 450.0], dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(model.variance(levels).numpy(), true_variance(levels.numpy()), rtol=0.10)


def test_fit_from_calibration_wrapper_and_seed_reproducible(calibration_stack):
    a = fit_gmm_from_calibration(calibration_stack, n_gaussians=2, n_coeffs=3, seed=4, max_pairs=20_000)
    b = fit_gmm_from_calibration(calibration_stack, n_gaussians=2, n_coeffs=3, seed=4, max_pairs=20_000)
    assert a.weight.shape == (6, 3)
    assert torch.equal(a.weight, b.weight)


def test_explicit_min_variance_floors_component_variances(calibration_stack):
    model = fit_gmm_from_calibration(calibration_stack, min_variance=150.0, max_pairs=20_000)
    assert float(model.min_variance) == 150.0
    with torch.no_grad():
        _, variances, _ = model.parameters_at(torch.linspace(100, 500, 50))
    assert float(variances.min()) >= 150.0 - 1e-3


def test_default_min_variance_is_data_range_aware():
    """16-bit-like data gets a much larger floor than 8-bit-like data with small noise."""
    bright = fit_gmm_from_calibration(poisson_gaussian(clean_image(32) * 20, 8, seed=1), max_pairs=10_000)
    rng = np.random.default_rng(2)
    dim_clean = 5 + 40 * (clean_image(32) - OFFSET) / 400
    dim = np.clip(np.round(rng.poisson(dim_clean, size=(8, 32, 32))), 0, 255).astype(np.uint8)
    dark = fit_gmm_from_calibration(dim, max_pairs=10_000)
    assert float(bright.min_variance) > 20.0
    assert 1.0 / 12.0 <= float(dark.min_variance) < 5.0


def test_clip_percentiles_set_signal_range(calibration_stack):
    signal, obs = calibration_pairs(calibration_stack)
    result = list(fit_gmm_iter(signal, obs, clip_percentiles=(5, 95), max_pairs=20_000))[-1]
    lo, hi = np.percentile(signal, [5, 95])
    assert float(result.model.min_signal) == pytest.approx(lo, rel=1e-5)
    assert float(result.model.max_signal) == pytest.approx(hi, rel=1e-5)


def test_bootstrap_uses_half_percent_clip():
    clean = clean_image(64)
    noisy = poisson_gaussian(clean, 2, seed=8)
    pseudo = np.broadcast_to(clean, noisy.shape).astype(np.float32)
    model = bootstrap_gmm(noisy, pseudo, max_pairs=20_000)
    lo, hi = np.percentile(pseudo, [0.5, 99.5])
    assert float(model.min_signal) == pytest.approx(lo, rel=1e-5)
    assert float(model.max_signal) == pytest.approx(hi, rel=1e-5)
    with torch.no_grad():
        assert float(model.variance(torch.tensor([300.0]))) == pytest.approx(true_variance(300.0), rel=0.15)


def test_unbiased_calibration_pairs_restore_the_noise_variance():
    clean = np.full((40, 40), 300.0)
    clean[:, :20] = 150.0
    stack = poisson_gaussian(clean, n_frames=4, seed=3)
    _, raw = calibration_pairs(stack, unbiased=False)
    signal, corrected = calibration_pairs(stack)
    bright = (slice(None), slice(None), slice(20, None))
    assert np.var(corrected[bright] - signal[bright]) == pytest.approx(true_variance(300.0), rel=0.08)
    # Without the correction the residual variance is 3/4 of the truth for 4 frames.
    assert np.var(raw[bright] - signal[bright]) == pytest.approx(0.75 * true_variance(300.0), rel=0.08)


def test_empirical_statistics_match_truth(calibration_stack):
    stats = calibration_statistics(calibration_stack, n_bins=20)
    assert stats.signal.shape == stats.mean.shape == stats.variance.shape == stats.count.shape
    assert np.all(np.diff(stats.signal) > 0)
    assert stats.count.sum() <= calibration_stack.size
    well_sampled = stats.count > 2000
    np.testing.assert_allclose(stats.variance[well_sampled], true_variance(stats.signal[well_sampled]), rtol=0.12)
    np.testing.assert_allclose(stats.mean, stats.signal, atol=1.0)


def test_empirical_statistics_broadcast_signal_without_copy():
    signal = np.array([[1.0, 2.0, 3.0, 4.0]])
    obs = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]])
    stats = empirical_noise_statistics(signal, obs, n_bins=2, min_count=1)
    np.testing.assert_allclose(stats.count, [4, 4])
    np.testing.assert_allclose(stats.mean, [2.5, 4.5])


@pytest.mark.parametrize(
    "stack, message",
    [
        (np.random.default_rng(0).normal(100, 5, (1, 16, 16)), "at least 2"),
        (np.random.default_rng(0).normal(100, 5, (16, 16)), "at least 2"),
        (np.random.default_rng(0).normal(100, 5, (2, 3, 16, 16)), "dimensions"),
        (np.random.default_rng(0).normal(100, 5, (16, 16, 3)), "RGB"),
        (np.full((3, 16, 16), 7.0), "constant"),
    ],
)
def test_bad_calibration_stacks(stack, message):
    with pytest.raises(DivNoisingError, match=message):
        fit_gmm_from_calibration(stack)


def test_nan_in_calibration_stack():
    stack = poisson_gaussian(clean_image(16), 3)
    stack[1, 2, 3] = np.nan
    with pytest.raises(DivNoisingError, match="NaN"):
        fit_gmm_from_calibration(stack)


def test_narrow_signal_range_is_refused():
    stack = np.random.default_rng(0).normal(100, 5, (10, 32, 32)).astype(np.float32)
    with pytest.raises(DivNoisingError, match="signal spans only"):
        fit_gmm_from_calibration(stack)


def test_mismatched_pairs_are_refused():
    with pytest.raises(DivNoisingError, match="same shape"):
        fit_gmm_from_pairs(np.ones((2, 16, 16)), np.ones((16, 16)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_gaussians": 0}, "n_gaussians"),
        ({"n_coeffs": 0}, "n_coeffs"),
        ({"min_variance": -1.0}, "min_variance"),
        ({"clip_percentiles": (90, 10)}, "percentiles"),
        ({"clip_percentiles": (-1, 99)}, "percentiles"),
    ],
)
def test_bad_settings(calibration_stack, kwargs, message):
    with pytest.raises(DivNoisingError, match=message):
        fit_gmm_from_calibration(calibration_stack, **kwargs)


def test_noise_line_estimated_from_noisy_images_alone_matches_the_simulated_noise():
    from napari_divnoising.noise_model_fitting import estimate_noise_line

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    frames = []
    for k in range(4):  # smooth blobs of different brightness: signal 0..~250
        signal = 250 * np.exp(-(((xx - 30 * k - 20) ** 2 + (yy - 64) ** 2) / (2 * 30.0**2)))
        frames.append(rng.poisson(signal / 2.0) * 2.0 + rng.normal(0, 3, signal.shape))  # var = 2 s + 9
    line = estimate_noise_line(frames)
    assert line is not None
    assert abs(line.a - 2.0) < 0.3 and abs(line.b - 9.0) < 6.0
    assert 0 < line.least_variance < 2 * 9.0 + 2 * 2.0 * 5


def test_noise_line_is_none_when_there_is_nothing_to_fit():
    from napari_divnoising.noise_model_fitting import estimate_noise_line

    assert estimate_noise_line([np.zeros((4, 4))]) is None
    assert estimate_noise_line([np.full((64, 64), 7.0)]) is None


def _dark_poisson_gaussian(seed: int, frames: int = 4, size: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Whole-number camera images: offset 5, gain 2, read noise sigma 1.5, signal 5..125, clipped at 0."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    clean = np.stack([5 + 120 * (0.5 + 0.5 * np.sin(xx / (9.0 + k)) * np.cos(yy / (11.0 + k))) ** 2
                      for k in range(frames)])
    noisy = 5 + 2.0 * rng.poisson((clean - 5) / 2.0) + rng.normal(0, 1.5, clean.shape)
    return clean, np.clip(np.round(noisy), 0, 255).astype(np.uint16)


def test_gmm_from_noisy_images_alone_is_nearly_as_good_as_one_from_clean_pairs():
    from napari_divnoising.noise_model_fitting import fit_gmm_from_noisy

    clean, noisy = _dark_poisson_gaussian(seed=0)
    fit = {"explore_iterations": 600, "polish_iterations": 100, "max_pairs": 100_000}
    estimated = fit_gmm_from_noisy(list(noisy), **fit)
    with_truth = fit_gmm_from_pairs(noisy.astype(np.float32), clean.astype(np.float32), **fit)
    levels = torch.tensor([20.0, 60.0, 100.0], dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(estimated.variance(levels).numpy(), 2.0 * (levels.numpy() - 5) + 2.25, rtol=0.1)
    fresh_clean, fresh = _dark_poisson_gaussian(seed=1)
    s = torch.as_tensor(fresh_clean.reshape(-1), dtype=torch.float64)
    x = torch.as_tensor(fresh.reshape(-1).astype(np.float64) + np.random.default_rng(2).uniform(-0.5, 0.5, s.numel()))
    with torch.no_grad():
        nll_estimated = float(-estimated.log_likelihood(x, s).mean())
        nll_truth = float(-with_truth.log_likelihood(x, s).mean())
    assert nll_estimated < nll_truth + 0.01  # the same fit given the clean images: within 0.01 nats per pixel


def test_gmm_from_noisy_images_refuses_images_without_noise_to_measure():
    from napari_divnoising.noise_model_fitting import fit_gmm_from_noisy

    with pytest.raises(DivNoisingError, match="Cannot estimate the noise"):
        fit_gmm_from_noisy([np.full((64, 64), 7.0)])


def test_clipping_limits_find_the_step_and_where_the_camera_clipped():
    rng = np.random.default_rng(0)
    dark = rng.normal(4.0, 2.0, (2, 128, 128))
    clipped = np.clip(np.round(dark), 3, 255).astype(np.uint8)
    clipped[0, 0, :3] = 2  # a few stray values below the offset do not hide it
    limits = clipping_limits(list(clipped))
    assert (limits.quantum, limits.floor, limits.ceiling) == (1.0, 3.0, None)
    saturated = np.clip(np.round(rng.normal(250.0, 5.0, (128, 128))), 0, 255)
    assert clipping_limits([saturated]).ceiling == 255.0 and clipping_limits([saturated]).floor is None
    unclipped = np.round(rng.normal(100.0, 5.0, (128, 128)))  # a few pixels at the extremes are not a pile-up
    assert (clipping_limits([unclipped]).floor, clipping_limits([unclipped]).ceiling) == (None, None)
    continuous = rng.normal(100.0, 5.0, (64, 64))
    assert clipping_limits([continuous]).quantum == 0.0 and clipping_limits([continuous]).floor is None
