"""Fitting the GMM noise model p(x | s) to (signal, observation) pairs (docs/method.md 4a).

Three sources of pairs:

- a calibration stack (many noisy frames of a static sample): the signal is
  the per-pixel mean over frames and every frame pixel is one observation
  (:func:`fit_gmm_from_calibration`);
- noisy / clean image pairs (:func:`fit_gmm_from_pairs`);
- noisy images with a pseudo-clean first denoising, bootstrapping
  (:func:`bootstrap_gmm`, 0.5 / 99.5 percentile clip by default).

The work is done by the generator :func:`fit_gmm_iter`, which yields a
:class:`NoiseFitProgress` per optimiser iteration and finally a
:class:`NoiseFitResult` carrying the fitted model, so a napari thread worker
or a progress bar can drive it.

Why it is fast (the reference takes 2000 Adam steps on 250k-pair minibatches,
about 45-120 s on a 2-core CPU): the model has only 3K x n_coeff parameters,
so small fixed subsamples of pairs pin the optimum down far better than the
reference's minibatch noise. The fit starts from the binned empirical variance,
explores with full-batch Adam (lr 0.2, float32) on 20k pairs until the
likelihood stops improving (the likelihood surface has long flat valleys,
e.g. where a narrow component takes over the dark, quantised pixels of 8-bit
data, that quasi-Newton methods crawl through), then polishes with L-BFGS in
float64 on 200k pairs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .errors import DivNoisingError
from .events import Done, run_to_end
from .io import as_image_stack
from .noise_models import GMMNoiseModel, gmm_log_likelihood

DEFAULT_MAX_PAIRS = 200_000
DEFAULT_HELDOUT_PAIRS = 200_000
DEFAULT_EXPLORE_PAIRS = 20_000
_CHUNK_PAIRS = 1_000_000


@dataclass(frozen=True)
class NoiseFitProgress:
    """One optimiser iteration done.

    ``nll`` is the mean negative log-likelihood (nats per pixel) of the pairs
    the current ``stage`` works on: "explore" (Adam on a small subsample) or
    "polish" (L-BFGS on all fitting pairs).
    """

    iteration: int
    total: int
    nll: float
    stage: str = "polish"


@dataclass(frozen=True)
class NoiseFitResult(Done):
    """Last event of :func:`fit_gmm_iter`: the fitted model (:attr:`result`) and how well it fits.

    ``heldout_nll`` is the mean negative log-likelihood (nats per pixel) of
    pairs not used for fitting (``nan`` when none were held out).
    """

    model: GMMNoiseModel
    train_nll: float
    heldout_nll: float
    iterations: int
    n_pairs: int
    seconds: float
    converged: bool

    @property
    def result(self) -> GMMNoiseModel:
        return self.model


@dataclass(frozen=True)
class BinnedNoiseStatistics:
    """Empirical noise statistics of observations binned by signal.

    Arrays of equal length, one entry per non-empty bin: the mean signal in the
    bin, the mean and variance of the observations and the number of pairs.
    """

    signal: np.ndarray
    mean: np.ndarray
    variance: np.ndarray
    count: np.ndarray


# --------------------------------------------------------------------------- pairs


def calibration_pairs(
    stack: np.ndarray, *, name: str = "calibration stack", unbiased: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Check a calibration stack and return ``(signal, observation)``.

    ``signal`` is the per-pixel mean over frames with shape (1, Y, X), which
    broadcasts against ``observation`` (float32 of shape (frames, Y, X)).

    With ``unbiased`` (the default) each frame's deviation from the mean is
    scaled by sqrt(N / (N - 1)): the mean of N frames contains the frame
    itself, which shrinks the residual variance by (1 - 1/N) (5% for 20
    frames). The reference code does not correct this; pass ``False`` to get
    the raw frames.
    """
    obs = as_image_stack(stack, name=name, min_frames=2)  # a float32 copy, safe to change in place
    signal = obs.mean(axis=0, dtype=np.float64)[None].astype(np.float32)
    if unbiased:
        n = obs.shape[0]
        obs -= signal
        obs *= np.float32(math.sqrt(n / (n - 1)))
        obs += signal
    return signal, obs


def is_integer_valued(data: np.ndarray, max_values: int = 100_000) -> bool:
    """Whether ``data`` has an integer dtype or (judged on a sample) only whole-number values."""
    arr = np.asarray(data)
    if np.issubdtype(arr.dtype, np.integer):
        return True
    flat = arr.reshape(-1)
    step = max(1, flat.size // max_values)
    return bool(np.all(np.mod(flat[::step], 1) == 0))


def _proportional_subsample(flats: list[np.ndarray], max_pixels: int, rng: np.random.Generator) -> np.ndarray:
    """At most about ``max_pixels`` values of the 1-D arrays ``flats``, each array's share in proportion to its
    size (a random subset of each array beyond its share), concatenated in order."""
    total = sum(f.size for f in flats)
    parts = []
    for flat in flats:
        keep = min(flat.size, math.ceil(max_pixels * flat.size / total))
        parts.append(flat if keep == flat.size else flat[rng.choice(flat.size, keep, replace=False)])
    return np.concatenate(parts)


@dataclass(frozen=True)
class ClippingLimits:
    """How a camera recorded the images: the step between values (0: continuous) and where it clipped them."""

    quantum: float = 0.0
    floor: float | None = None
    ceiling: float | None = None

    @property
    def clips(self) -> bool:
        """Whether the camera clipped the values at a floor or a ceiling."""
        return self.floor is not None or self.ceiling is not None


def clipping_limits(images: list[np.ndarray], max_pixels: int = 4_000_000, seed: int = 0) -> ClippingLimits:
    """The step between recorded values and where the camera clipped them, for a noise model that knows clipping.

    Whole-number images get a step of 1. A limit counts as clipping when the images pile up there:
    the darkest value (ignoring the darkest 0.01 % of the pixels, stray values below an offset) holds
    at least 0.1 % of the pixels and more than the value above it; the brightest
    likewise against the value below it. Images
    that are not whole numbers get no step and no limits.
    """
    if not images or not all(is_integer_valued(im) for im in images):
        return ClippingLimits()
    flats = [np.asarray(im).reshape(-1) for im in images]
    values = np.rint(_proportional_subsample(flats, max_pixels, np.random.default_rng(seed)).astype(np.float64))
    low, high = np.quantile(values, [1e-4, 1.0 - 1e-4])
    low, high = float(low), max(float(high), float(values.max()))
    if not high > low:
        return ClippingLimits(quantum=1.0)

    candidates, counts = np.unique(values[np.isin(values, [low, low + 1.0, high - 1.0, high])], return_counts=True)
    count_of = dict(zip(candidates.tolist(), counts.tolist()))
    least = max(20, 1e-3 * values.size)

    def piles_up(value: float, neighbour: float) -> bool:
        count = count_of.get(value, 0)
        return count >= least and count > count_of.get(neighbour, 0)

    floor = low if piles_up(low, low + 1.0) else None
    ceiling = high if piles_up(high, high - 1.0) else None
    return ClippingLimits(quantum=1.0, floor=floor, ceiling=ceiling)


def paired_images(noisy: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check noisy / clean images of the same shape and return ``(clean, noisy)`` as float32 stacks."""
    noisy_arr, clean_arr = np.asarray(noisy), np.asarray(clean)
    if noisy_arr.shape != clean_arr.shape:
        raise DivNoisingError(
            f"noisy and clean images must have the same shape; got {noisy_arr.shape} and {clean_arr.shape}."
        )
    return as_image_stack(clean_arr, name="clean image"), as_image_stack(noisy_arr, name="noisy image")


@dataclass(frozen=True)
class FitPairs:
    """(signal, observation) pairs to fit a noise model to, and what they are.

    ``signal`` and ``observation`` broadcast against each other (a calibration stack's
    (1, Y, X) mean image against its (frames, Y, X) frames). ``integer_data`` says whether
    the raw observations were whole numbers (see :func:`fit_gmm_iter`).
    """

    signal: np.ndarray
    observation: np.ndarray
    integer_data: bool
    description: str


def fitting_pairs(
    *, calibration: np.ndarray | None = None, noisy: np.ndarray | None = None, clean: np.ndarray | None = None,
    name: str = "calibration stack",
) -> FitPairs:
    """The pairs of a calibration stack, or of noisy images and their clean counterparts.

    Give either ``calibration`` (frames of a static sample: the signal is the per-pixel mean)
    or ``noisy`` with ``clean`` (same shape). ``name`` names the data in messages.
    """
    if calibration is not None:
        if noisy is not None or clean is not None:
            raise DivNoisingError("Give either a calibration stack or noisy and clean images, not both.")
        integer = is_integer_valued(calibration)
        signal, observation = calibration_pairs(calibration, name=name)
        return FitPairs(signal, observation, integer, f"calibration stack {name} ({observation.shape[0]} frames)")
    if noisy is None or clean is None:
        raise DivNoisingError("Give a calibration stack, or both noisy and clean images.")
    signal, observation = paired_images(noisy, clean)
    return FitPairs(signal, observation, is_integer_valued(noisy), f"noisy / clean pairs {name}")


def bootstrap_pairs(noisy: list[np.ndarray], pseudo_clean: list[np.ndarray]) -> FitPairs:
    """Pairs of noisy images and a first denoising of them, frames of any size, as one (1, N) row each."""
    if len(noisy) != len(pseudo_clean) or not noisy:
        raise DivNoisingError("Bootstrapping needs one denoised image per noisy image.")
    for n, p in zip(noisy, pseudo_clean):
        if np.shape(n) != np.shape(p):
            raise DivNoisingError(f"noisy and denoised images differ in shape: {np.shape(n)} and {np.shape(p)}.")
    observation = np.concatenate([np.asarray(n, dtype=np.float32).ravel() for n in noisy])[None]
    signal = np.concatenate([np.asarray(p, dtype=np.float32).ravel() for p in pseudo_clean])[None]
    return FitPairs(signal, observation, is_integer_valued(observation), "noisy images and their first denoising")


def _flat_sample(
    signal: np.ndarray, observation: np.ndarray, index: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs at flat ``index`` of the broadcast ``shape`` without materialising the broadcast."""
    multi = np.unravel_index(index, shape)
    sig = np.broadcast_to(signal, shape)[multi]
    obs = np.broadcast_to(observation, shape)[multi]
    return sig.astype(np.float64), obs.astype(np.float64)


def empirical_noise_statistics(
    signal: np.ndarray, observation: np.ndarray, *, n_bins: int = 50, min_count: int = 50,
    signal_range: tuple[float, float] | None = None,
) -> BinnedNoiseStatistics:
    """Bin pairs by signal (equal-width bins) and return each bin's observation mean and variance.

    Parameters
    ----------
    signal, observation
        Arrays that broadcast against each other (e.g. a (1, Y, X) mean image
        and the (frames, Y, X) calibration stack).
    n_bins
        Number of equal-width signal bins over ``signal_range``.
    min_count
        Bins with fewer pairs are left out (their variance is too uncertain).
    signal_range
        (low, high) of the bins; the signal's min and max by default.
    """
    sig = np.asarray(signal)
    obs = np.asarray(observation)
    shape = np.broadcast_shapes(sig.shape, obs.shape)
    lo, hi = (float(sig.min()), float(sig.max())) if signal_range is None else map(float, signal_range)
    if not hi > lo:
        hi = lo + 1.0
    count = np.zeros(n_bins)
    sum_s = np.zeros(n_bins)
    sum_r = np.zeros(n_bins)
    sum_rr = np.zeros(n_bins)
    sig_full, obs_full = np.broadcast_to(sig, shape), np.broadcast_to(obs, shape)
    # Chunks along the first axis keep memory bounded for large calibration stacks.
    rows = max(1, _CHUNK_PAIRS // max(1, int(np.prod(shape[1:]))))
    for start in range(0, shape[0] if shape else 1, rows):
        s_c = (sig_full[start : start + rows] if shape else sig_full).astype(np.float64).reshape(-1)
        x_c = (obs_full[start : start + rows] if shape else obs_full).astype(np.float64).reshape(-1)
        keep = (s_c >= lo) & (s_c <= hi)
        s_c, x_c = s_c[keep], x_c[keep]
        bins = np.clip(((s_c - lo) / (hi - lo) * n_bins).astype(np.int64), 0, n_bins - 1)
        # Residuals x - s are centred near zero, so one-pass sums of squares lose no precision.
        r_c = x_c - s_c
        count += np.bincount(bins, minlength=n_bins)
        sum_s += np.bincount(bins, s_c, minlength=n_bins)
        sum_r += np.bincount(bins, r_c, minlength=n_bins)
        sum_rr += np.bincount(bins, r_c * r_c, minlength=n_bins)
    ok = count >= max(min_count, 2)
    n = np.maximum(count, 1)
    s_mean = sum_s / n
    r_mean = sum_r / n
    # Variance of x around its own signal within the bin (not around the bin's mean observation).
    noise_var = np.maximum((sum_rr - count * r_mean**2) / np.maximum(count - 1, 1), 0.0)
    return BinnedNoiseStatistics(
        signal=s_mean[ok], mean=(s_mean + r_mean)[ok], variance=noise_var[ok], count=count[ok].astype(np.int64)
    )


def calibration_statistics(stack: np.ndarray, *, n_bins: int = 50, min_count: int = 50) -> BinnedNoiseStatistics:
    """Binned empirical (signal, mean, variance, count) of a calibration stack (signal = per-pixel mean)."""
    signal, obs = calibration_pairs(stack)
    return empirical_noise_statistics(signal, obs, n_bins=n_bins, min_count=min_count)


def default_min_variance(stats: BinnedNoiseStatistics, integer_data: bool) -> float:
    """Data-range-aware variance floor: half the smallest empirical noise variance.

    Gives a floor of order 50 for 16-bit camera data with a dark level of
    ~100 grey values' variance (the reference setting) and of order 1 for 8-bit
    data; integer data never gets a floor below the quantisation variance 1/12.
    """
    positive = stats.variance[stats.variance > 0]
    floor = 0.5 * float(positive.min()) if positive.size else 1.0
    if integer_data:
        floor = max(floor, 1.0 / 12.0)
    return float(floor)


# --------------------------------------------------------------------------- fitting


def _linear_variance_fit(stats: BinnedNoiseStatistics) -> tuple[float, float]:
    """Count-weighted least-squares line var = slope * s + intercept through the binned variances."""
    if stats.signal.size < 2:
        return 0.0, float(stats.variance.mean()) if stats.variance.size else 1.0
    w = np.sqrt(stats.count.astype(np.float64))
    design = np.stack([stats.signal, np.ones_like(stats.signal)], axis=1) * w[:, None]
    slope, intercept = np.linalg.lstsq(design, stats.variance * w, rcond=None)[0]
    return float(slope), float(intercept)


def _initial_weight(
    stats: BinnedNoiseStatistics, min_signal: float, max_signal: float, n_gaussians: int, n_coeffs: int,
    min_variance: float,
) -> torch.Tensor:
    """Start from the empirical linear variance: all components share it, spread in width and offset."""
    slope, intercept = _linear_variance_fit(stats)
    span = max_signal - min_signal
    typical_var = float(np.average(stats.variance, weights=stats.count)) if stats.count.size else 1.0
    tiny = 1e-4 * max(typical_var, min_variance)
    var_at_min = max(slope * min_signal + intercept, min_variance, tiny)
    var_slope_u = max(slope * span, tiny)
    w = torch.zeros(3 * n_gaussians, n_coeffs, dtype=torch.float64)
    widths = np.linspace(0.6, 1.4, n_gaussians) if n_gaussians > 1 else np.ones(1)
    offsets = np.linspace(-0.3, 0.3, n_gaussians) if n_gaussians > 1 else np.zeros(1)
    for k in range(n_gaussians):
        w[k, 0] = offsets[k] * math.sqrt(var_at_min)
        w[n_gaussians + k, 0] = math.log(var_at_min * widths[k])
        if n_coeffs > 1:
            w[n_gaussians + k, 1] = math.log(var_slope_u * widths[k])
        for j in range(2, n_coeffs):
            w[n_gaussians + k, j] = math.log(tiny)
    return w


def _check_choice(n_gaussians: int, n_coeffs: int) -> None:
    if int(n_gaussians) < 1:
        raise DivNoisingError(f"n_gaussians must be at least 1; got {n_gaussians}.")
    if int(n_coeffs) < 1:
        raise DivNoisingError(f"n_coeffs must be at least 1 (2 = linear in the signal); got {n_coeffs}.")


def _check_clip(clip_percentiles: tuple[float, float] | None) -> tuple[float, float] | None:
    if clip_percentiles is None:
        return None
    lo, hi = (float(v) for v in clip_percentiles)
    if not (0.0 <= lo < hi <= 100.0):
        raise DivNoisingError(
            f"clip percentiles must satisfy 0 <= low < high <= 100; got {lo:g} and {hi:g} (e.g. 0.5 99.5)."
        )
    return lo, hi


def fit_gmm_iter(
    signal: np.ndarray,
    observation: np.ndarray,
    *,
    n_gaussians: int = 3,
    n_coeffs: int = 2,
    min_variance: float | None = None,
    clip_percentiles: tuple[float, float] | None = None,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    heldout_pairs: int = DEFAULT_HELDOUT_PAIRS,
    explore_pairs: int = DEFAULT_EXPLORE_PAIRS,
    explore_iterations: int = 3000,
    polish_iterations: int = 300,
    tolerance: float = 1e-6,
    seed: int | None = 0,
    device: str | torch.device = "cpu",
    integer_data: bool | None = None,
) -> Iterator[NoiseFitProgress | NoiseFitResult]:
    """Fit a GMM noise model to (signal, observation) pairs, yielding progress events.

    Parameters
    ----------
    signal, observation
        Arrays in raw units that broadcast against each other (pairs
        ``signal[i] -> observation[i]``); a calibration stack's (1, Y, X) mean
        image and (frames, Y, X) stack work without copying.
    n_gaussians, n_coeffs
        Mixture components K and polynomial coefficients (2 = linear in s).
    min_variance
        Floor on each component's variance (raw units squared); ``None``
        derives it from the data (see :func:`default_min_variance`).
    clip_percentiles
        (low, high) percentiles of the signal; pairs outside are ignored and
        the model's signal range is set to them (0.5, 99.5 for bootstrapping).
    max_pairs
        Pairs used for fitting (a random subsample if there are more).
    heldout_pairs
        Pairs, disjoint from the fitting ones, on which the result's
        ``heldout_nll`` is measured (0 to skip; fewer if data is short).
    explore_pairs, explore_iterations
        Pairs (taken from the fitting pairs) and most iterations of the Adam
        stage; it stops early when the likelihood improves by less than
        ``100 * tolerance`` over 200 iterations.
    polish_iterations, tolerance
        Most iterations of the L-BFGS stage on all fitting pairs; it stops
        when the likelihood improves by less than ``tolerance`` nats per pixel
        over 20 iterations.
    seed
        Seed of the pair subsampling (``None`` for a random one).
    device
        Torch device for the optimisation.
    integer_data
        Whether the raw data had whole-number values (sets a variance floor of
        at least 1/12, the quantisation variance); ``None`` detects it.

    Yields
    ------
    NoiseFitProgress
        After every iteration of either stage (``total`` is the most there can be).
    NoiseFitResult
        Last, with the fitted :class:`GMMNoiseModel` (on the CPU, float32).
    """
    start = time.perf_counter()
    _check_choice(n_gaussians, n_coeffs)
    clip = _check_clip(clip_percentiles)
    sig_arr = np.asarray(signal)
    obs_arr = np.asarray(observation)
    try:
        shape = np.broadcast_shapes(sig_arr.shape, obs_arr.shape)
    except ValueError:
        raise DivNoisingError(
            f"signal and observation shapes do not match: {sig_arr.shape} and {obs_arr.shape}."
        ) from None
    for arr, what in ((sig_arr, "signal"), (obs_arr, "observation")):
        if arr.size == 0:
            raise DivNoisingError(f"The {what} is empty.")
        if not np.isfinite(arr).all():
            raise DivNoisingError(f"The {what} contains NaN or infinite values; clean or crop the data first.")

    if clip is None:
        min_signal, max_signal = float(sig_arr.min()), float(sig_arr.max())
    else:
        min_signal, max_signal = (float(v) for v in np.percentile(sig_arr, clip))
    stats = empirical_noise_statistics(sig_arr, obs_arr, signal_range=(min_signal, max_signal))
    noise_std = math.sqrt(float(np.median(stats.variance))) if stats.variance.size else 0.0
    span = max_signal - min_signal
    if not span > 0 or span < 2.0 * noise_std:
        raise DivNoisingError(
            f"The signal spans only {span:.3g} grey values ({min_signal:.4g} to {max_signal:.4g}), less than "
            f"two noise standard deviations ({noise_std:.3g}); the noise model cannot learn how noise depends "
            "on brightness. Use calibration data with dark and bright regions (or a wider clip)."
        )
    if integer_data is None:
        integer_data = is_integer_valued(obs_arr)
    if min_variance is None:
        min_variance = default_min_variance(stats, integer_data)
    elif not float(min_variance) > 0:
        raise DivNoisingError(f"min_variance (the variance floor) must be positive; got {min_variance}.")
    min_variance = float(min_variance)

    # Subsample fitting and held-out pairs, disjoint, among pairs inside the clip range.
    rng = np.random.default_rng(seed)
    n_total = int(np.prod(shape))
    in_range = (sig_arr >= min_signal) & (sig_arr <= max_signal)
    frac_in = float(np.broadcast_to(in_range, sig_arr.shape).mean())
    wanted = int(max_pairs) + max(int(heldout_pairs), 0)
    n_draw = min(n_total, int(wanted / max(frac_in, 1e-6) * 1.05) + 100)
    index = rng.choice(n_total, size=n_draw, replace=False) if n_draw < n_total else rng.permutation(n_total)
    sig_s, obs_s = _flat_sample(sig_arr, obs_arr, index, shape)
    keep = (sig_s >= min_signal) & (sig_s <= max_signal)
    sig_s, obs_s = sig_s[keep], obs_s[keep]
    n_held = max(int(heldout_pairs), 0)
    n_fit = min(int(max_pairs), sig_s.size if n_held == 0 else max(sig_s.size // 2, sig_s.size - n_held))
    fit_s, fit_x = sig_s[:n_fit], obs_s[:n_fit]
    hold_s, hold_x = sig_s[n_fit : n_fit + n_held], obs_s[n_fit : n_fit + n_held]

    dev = torch.device(device)
    polish_dtype = torch.float32 if dev.type == "mps" else torch.float64
    model = GMMNoiseModel(
        _initial_weight(stats, min_signal, max_signal, n_gaussians, n_coeffs, min_variance),
        min_signal, max_signal, min_variance,
    ).to(dev)
    total = int(explore_iterations) + int(polish_iterations)

    def nll_of(w: torch.Tensor, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -gmm_log_likelihood(w, model.min_signal, model.max_signal, min_variance, x, s).mean()

    def check_finite(value: float) -> None:
        if not math.isfinite(value):
            raise DivNoisingError(
                "The noise-model fit diverged (non-finite likelihood); try a larger variance floor or a percentile "
                "clip."
            )

    # Stage 1: explore with full-batch Adam on a small subsample (the fitting pairs are already shuffled).
    n_explore = min(int(explore_pairs), fit_s.size)
    weight = model.weight.detach().to(torch.float32).clone().requires_grad_(True)
    s_t = torch.as_tensor(fit_s[:n_explore], dtype=torch.float32, device=dev)
    x_t = torch.as_tensor(fit_x[:n_explore], dtype=torch.float32, device=dev)
    adam = torch.optim.Adam([weight], lr=0.2)
    history: list[float] = []
    iteration = 0
    window = 200
    for iteration in range(1, int(explore_iterations) + 1):
        adam.zero_grad()
        loss = nll_of(weight, s_t, x_t)
        loss.backward()
        adam.step()
        nll = float(loss.detach())
        check_finite(nll)
        history.append(nll)
        yield NoiseFitProgress(iteration=iteration, total=total, nll=nll, stage="explore")
        if len(history) > window and min(history[:-window]) - min(history[-window:]) < 100 * tolerance:
            break

    # Stage 2: polish with L-BFGS in float64 on all fitting pairs.
    weight = weight.detach().to(polish_dtype).clone().requires_grad_(True)
    s_t = torch.as_tensor(fit_s, dtype=polish_dtype, device=dev)
    x_t = torch.as_tensor(fit_x, dtype=polish_dtype, device=dev)
    lbfgs = torch.optim.LBFGS([weight], lr=1.0, max_iter=1, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        loss = nll_of(weight, s_t, x_t)
        loss.backward()
        return loss

    with torch.no_grad():
        polish_history = [float(nll_of(weight, s_t, x_t))]
    check_finite(polish_history[0])
    converged = False
    explored = iteration
    for step in range(1, int(polish_iterations) + 1):
        lbfgs.step(closure)
        with torch.no_grad():
            nll = float(nll_of(weight, s_t, x_t))
        check_finite(nll)
        polish_history.append(nll)
        iteration = explored + step
        yield NoiseFitProgress(iteration=iteration, total=total, nll=nll, stage="polish")
        if len(polish_history) > 20 and polish_history[-21] - nll < tolerance:
            converged = True
            break
    history = polish_history

    with torch.no_grad():
        model.weight.copy_(weight.to(torch.float32))
    model = model.cpu()
    heldout_nll = float("nan")
    if hold_s.size:
        with torch.no_grad():
            heldout_nll = float(
                -model.log_likelihood(
                    torch.as_tensor(hold_x, dtype=torch.float64), torch.as_tensor(hold_s, dtype=torch.float64)
                ).mean()
            )
    yield NoiseFitResult(
        model=model, train_nll=history[-1], heldout_nll=heldout_nll, iterations=iteration,
        n_pairs=int(fit_s.size), seconds=time.perf_counter() - start, converged=converged,
    )


def fit_gmm_from_calibration(
    stack: np.ndarray,
    n_gaussians: int = 3,
    n_coeffs: int = 2,
    min_variance: float | None = None,
    clip_percentiles: tuple[float, float] | None = None,
    **kwargs,
) -> GMMNoiseModel:
    """Fit a GMM noise model to a calibration stack (frames, Y, X) of a static sample.

    The signal is the per-pixel mean over frames and every frame pixel is one
    observation. Other keyword arguments go to :func:`fit_gmm_iter`.
    """
    pairs = fitting_pairs(calibration=stack)
    kwargs.setdefault("integer_data", pairs.integer_data)
    return run_to_end(fit_gmm_iter(
        pairs.signal, pairs.observation, n_gaussians=n_gaussians, n_coeffs=n_coeffs, min_variance=min_variance,
        clip_percentiles=clip_percentiles, **kwargs,
    ))


def fit_gmm_from_pairs(
    noisy: np.ndarray,
    clean: np.ndarray,
    n_gaussians: int = 3,
    n_coeffs: int = 2,
    min_variance: float | None = None,
    clip_percentiles: tuple[float, float] | None = None,
    **kwargs,
) -> GMMNoiseModel:
    """Fit a GMM noise model to noisy images and their clean counterparts (same shape, 2-D or stacks)."""
    pairs = fitting_pairs(noisy=noisy, clean=clean)
    return run_to_end(fit_gmm_iter(
        pairs.signal, pairs.observation, n_gaussians=n_gaussians, n_coeffs=n_coeffs, min_variance=min_variance,
        clip_percentiles=clip_percentiles, **kwargs,
    ))


def bootstrap_gmm(
    noisy: np.ndarray,
    pseudo_clean: np.ndarray,
    clip: tuple[float, float] = (0.5, 99.5),
    n_gaussians: int = 3,
    n_coeffs: int = 2,
    min_variance: float | None = None,
    **kwargs,
) -> GMMNoiseModel:
    """Bootstrap a GMM noise model from noisy images and a first denoising of them (docs/method.md 4a).

    The pseudo-clean images (e.g. the MMSE of a DivNoising model trained with
    the co-learned Gaussian noise model, or any good denoiser) play the role of
    the signal; the signal is clipped to the ``clip`` percentiles, as in the
    paper, because a denoiser's extremes are unreliable.
    """
    return fit_gmm_from_pairs(
        noisy, pseudo_clean, n_gaussians=n_gaussians, n_coeffs=n_coeffs, min_variance=min_variance,
        clip_percentiles=clip, **kwargs,
    )


def variance_line(model: GMMNoiseModel, signal_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """Least-squares line ``variance ~ slope * s + intercept`` through the model's variance over its signal range."""
    lo, hi = signal_range if signal_range is not None else (float(model.min_signal), float(model.max_signal))
    s = torch.linspace(float(lo), float(hi), 200, dtype=torch.float64)
    with torch.no_grad():
        var = model.variance(s).double().numpy()
    slope, intercept = np.polyfit(s.numpy(), var, 1)
    return float(slope), float(intercept)


#: Median of a chi-square variable with one degree of freedom: median(r**2) / this = var(r) for Gaussian r.
_CHI2_1_MEDIAN = 0.454936


def _box_mean(image: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2 * radius + 1)² window around each pixel, for the pixels whose window is inside."""
    size = 2 * radius + 1
    padded = np.zeros((image.shape[0] + 1, image.shape[1] + 1), np.float64)
    padded[1:, 1:] = image.cumsum(0).cumsum(1)
    total = padded[size:, size:] - padded[:-size, size:] - padded[size:, :-size] + padded[:-size, :-size]
    return total / size**2


@dataclass(frozen=True)
class NoiseLine:
    """Noise variance ``a * signal + b`` estimated from noisy images, the least variance measured in a bin (median
    based) and the darkest bin's mean-based variance."""

    a: float
    b: float
    least_variance: float
    dark_variance: float = float("nan")


def estimate_noise_line(
    images: list[np.ndarray], n_bins: int = 20, max_pixels: int = 4_000_000, seed: int = 0
) -> NoiseLine | None:
    """Estimate the noise variance as a line in the signal, ``var = a * signal + b``, from noisy images alone.

    Each pixel's deviation from the mean of its 8 neighbours measures the noise (for white
    noise its variance is 9/8 of the noise variance); the 5×5 local mean stands in for the
    signal. Pixels are binned by local mean, the noise variance of a bin is the median squared
    deviation (robust to edges and structure), and a line is fitted through the bins
    (docs/method.md 4b: the co-learned noise model starts from it).

    Parameters
    ----------
    images
        2-D noisy images in raw units.
    n_bins
        Signal bins (equal pixel counts).
    max_pixels
        At most this many pixels are used (a random subset).
    seed
        Seed of that subset.

    Returns
    -------
    NoiseLine or None
        The line and the least binned variance (dark, clipped pixels vary less than the line says),
        or ``None`` when the images are too small or too flat for a fit.
    """
    signal, deviation = [], []
    for image in images:
        image = np.asarray(image, np.float64)
        if image.ndim != 2 or min(image.shape) < 7:
            continue
        neighbours = _box_mean(image, 1) * 9.0 - image[1:-1, 1:-1]
        residual = (image[1:-1, 1:-1] - neighbours / 8.0)[1:-1, 1:-1]
        signal.append(_box_mean(image, 2).ravel())
        deviation.append((residual**2).ravel() / (1.0 + 1.0 / 8.0))
    if not signal:
        return None
    signal_all, deviation_all = np.concatenate(signal), np.concatenate(deviation)
    if signal_all.size > max_pixels:
        keep = np.random.default_rng(seed).choice(signal_all.size, max_pixels, replace=False)
        signal_all, deviation_all = signal_all[keep], deviation_all[keep]
    order = np.argsort(signal_all, kind="stable")
    centres, variances, mean_variances = [], [], []
    for chunk in np.array_split(order, n_bins):
        if chunk.size < 100:
            continue
        centres.append(float(np.median(signal_all[chunk])))
        variances.append(float(np.median(deviation_all[chunk])) / _CHI2_1_MEDIAN)
        mean_variances.append(float(np.mean(deviation_all[chunk])))
    centres_arr, variances_arr = np.asarray(centres), np.asarray(variances)
    if centres_arr.size < 3 or np.ptp(centres_arr) <= 0:
        return None
    a, b = np.polyfit(centres_arr, variances_arr, 1)
    if not (np.isfinite(a) and np.isfinite(b)) or max(a * centres_arr[-1] + b, a * centres_arr[0] + b) <= 0:
        return None
    return NoiseLine(float(a), float(b), float(variances_arr.min()), mean_variances[0])


#: Pixels simulated for :func:`fit_gmm_from_noisy` (a random subset of the images' pixels beyond this).
SIMULATED_PIXELS = 4_000_000


def simulated_calibration(
    images: list[np.ndarray], line: NoiseLine, seed: int = 0, max_pixels: int = SIMULATED_PIXELS
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(signal, simulated observation, integer data) for noise that follows ``line`` as Poisson-Gaussian noise.

    The signal is each image's 5 x 5 local mean (docs/method.md 4c); observations are drawn as
    ``offset + a * Poisson((signal - offset) / a) + N(0, read variance)``, where the read variance is
    the darkest bin's variance and the offset puts the line through it, then rounded where the
    images are whole numbers and clipped to the images' range. A line with a slope near zero
    gives Gaussian noise of the line's variance.
    """
    rng = np.random.default_rng(seed)
    local_means = [_box_mean(np.pad(np.asarray(im, np.float64), 2, mode="reflect"), 2).ravel() for im in images]
    signal = _proportional_subsample(local_means, max_pixels, rng)
    integer = all(is_integer_valued(im) for im in images)
    low, high = min(float(np.min(im)) for im in images), max(float(np.max(im)) for im in images)
    read_variance = line.dark_variance if np.isfinite(line.dark_variance) else line.least_variance
    read_variance = max(read_variance - (1.0 / 12.0 if integer else 0.0), 1e-6)  # rounding adds 1/12
    if line.a > 1e-3 * max(abs(line.b), read_variance, 1e-12) / max(float(np.std(signal)), 1e-12):
        offset = (read_variance - line.b) / line.a
        photons = rng.poisson(np.clip(signal - offset, 0.0, None) / line.a)
        observation = offset + line.a * photons + rng.normal(0.0, np.sqrt(read_variance), signal.shape)
    else:
        variance = np.maximum(line.a * signal + line.b, read_variance)
        observation = signal + rng.normal(0.0, 1.0, signal.shape) * np.sqrt(variance)
    if integer:
        observation = np.round(observation)
    return signal.astype(np.float32)[None], np.clip(observation, low, high).astype(np.float32)[None], integer


def noisy_image_pairs(images: list[np.ndarray], seed: int = 0, name: str = "noisy images") -> FitPairs:
    """Simulated (signal, observation) pairs for noisy images alone (see :func:`simulated_calibration`).

    Raises
    ------
    DivNoisingError
        When no noise line can be estimated (images too small or too flat).
    """
    line = estimate_noise_line(images, seed=seed)
    if line is None or line.a * float(np.mean([np.mean(im, dtype=np.float64) for im in images])) + line.b <= 0:
        raise DivNoisingError(
            f"Cannot estimate the noise from {name}: they are too small or too flat. Use a calibration stack, or "
            "co-learn the noise model."
        )
    signal, observation, integer = simulated_calibration(images, line, seed=seed)
    return FitPairs(signal, observation, integer,
                    f"{name} (noise variance {line.a:.3g} x signal {'+' if line.b >= 0 else '-'} {abs(line.b):.3g}, "
                    "simulated as Poisson-Gaussian)")


def fit_gmm_from_noisy_iter(
    images: list[np.ndarray], n_gaussians: int = 3, n_coeffs: int = 2, seed: int = 0, **kwargs,
) -> Iterator[NoiseFitProgress | NoiseFitResult]:
    """:func:`fit_gmm_from_noisy` as a generator of :func:`fit_gmm_iter`'s events."""
    pairs = noisy_image_pairs(images, seed=seed)
    kwargs.setdefault("integer_data", pairs.integer_data)
    yield from fit_gmm_iter(pairs.signal, pairs.observation, n_gaussians=n_gaussians, n_coeffs=n_coeffs, seed=seed,
                            **kwargs)


def fit_gmm_from_noisy(images: list[np.ndarray], n_gaussians: int = 3, n_coeffs: int = 2, seed: int = 0,
                       **kwargs) -> GMMNoiseModel:
    """Fit a GMM noise model to noisy images alone, without calibration data or training.

    The noise variance is estimated as a line in the signal (:func:`estimate_noise_line`), read as
    Poisson-Gaussian noise (photon counts of gain ``a`` above an offset, plus read noise of the
    darkest pixels' variance), simulated on the images' own signal levels, rounded and clipped as
    the images are, and a GMM is fitted to the simulation as to a calibration stack (docs/method.md 4c).

    Parameters
    ----------
    images
        2-D noisy images in raw units (the images to denoise, or more of the same kind).
    n_gaussians, n_coeffs
        The GMM's components and polynomial coefficients, as for a calibration stack.
    seed
        Seed of the pixel subsets and of the simulation.
    **kwargs
        Further keywords of :func:`fit_gmm_iter`.

    Returns
    -------
    GMMNoiseModel
    """
    return run_to_end(fit_gmm_from_noisy_iter(images, n_gaussians, n_coeffs, seed, **kwargs))
