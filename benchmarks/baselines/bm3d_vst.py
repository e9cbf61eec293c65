"""BM3D with a variance-stabilising transform (VST) for Poisson-Gaussian noise: the classical baseline.

Pipeline (Makitalo & Foi, "Optimal inversion of the generalized Anscombe transformation for
Poisson-Gaussian noise", IEEE TIP 2013):

1. Noise parameters from a calibration stack: per-pixel mean and variance over the frames, then a
   straight line ``variance = gain * mean + offset`` fitted over the means where clipping at 0 and
   at the top of the range does not bend it (for FMD BPAE: about ``4.0 * mean - 7``).
2. Generalized Anscombe transform ``f(x) = 2 / gain * sqrt(max(gain * x + 3/8 gain^2 + offset, 0))``;
   in its domain the noise has unit variance.
3. BM3D (the ``bm3d`` package) at ``sigma = sigma_multiplier`` (1 is the theory; the multiplier
   can be tuned on data with ground truth).
4. Closed-form approximation of the exact unbiased inverse of the transform, back to raw units.

Only ``gain * mean + offset`` matters for both directions, so the Poisson gain, Gaussian read noise
and camera offset need not be separated.

Run ``python benchmarks/baselines/bm3d_vst.py`` for PSNR on the FMD validation frames.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# The package's tested PSNR (napari_divnoising.metrics needs only numpy, so this also works in a
# baseline's own environment where the package is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from napari_divnoising.metrics import intensity_matched_reference, psnr

FMD_DIR = Path(os.environ.get("DIVNOISING_FMD_DIR", "data/fmd_bpae_b"))


@dataclass(frozen=True)
class PoissonGaussianParams:
    """Noise variance as a line in the signal: ``variance = gain * signal + offset`` (raw units)."""

    gain: float
    offset: float
    r_squared: float = float("nan")


def estimate_noise_params(
    calibration: np.ndarray, mean_range: tuple[float, float] | None = None, n_bins: int = 64
) -> PoissonGaussianParams:
    """Fit ``variance = gain * mean + offset`` on a stack of noisy frames of a static sample.

    Parameters
    ----------
    calibration
        Stack (frames, Y, X) of one static field of view.
    mean_range
        Signal range used for the fit. Default: from the 5th to the 99th percentile of the means,
        and at least 2 grey levels above 0 so that clipped dark pixels do not bend the line.
    n_bins
        The fit is done on the median variance in equal-count bins of the mean (robust to edges).

    Returns
    -------
    PoissonGaussianParams
    """
    stack = np.asarray(calibration, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] < 3:
        raise ValueError(f"calibration must be a stack (frames, Y, X) with at least 3 frames; got {stack.shape}")
    means = stack.mean(axis=0).ravel()
    variances = stack.var(axis=0, ddof=1).ravel()
    if mean_range is None:
        low, high = np.percentile(means, [5, 99])
        mean_range = (max(float(low), 2.0), float(high))
    keep = (means >= mean_range[0]) & (means <= mean_range[1])
    if keep.sum() < 10 * n_bins:
        raise ValueError("too few calibration pixels inside the fitting range")
    means, variances = means[keep], variances[keep]
    order = np.argsort(means)
    bins = np.array_split(order, n_bins)
    bin_means = np.array([means[b].mean() for b in bins])
    bin_vars = np.array([np.median(variances[b]) for b in bins])
    gain, offset = np.polyfit(bin_means, bin_vars, 1)
    fitted = gain * bin_means + offset
    r2 = 1.0 - np.sum((bin_vars - fitted) ** 2) / np.sum((bin_vars - bin_vars.mean()) ** 2)
    return PoissonGaussianParams(float(gain), float(offset), float(r2))


def anscombe_forward(image: np.ndarray, params: PoissonGaussianParams) -> np.ndarray:
    """Generalized Anscombe transform: Poisson-Gaussian noise -> approximately unit-variance Gaussian."""
    x = np.asarray(image, dtype=np.float64)
    g = params.gain
    return 2.0 / g * np.sqrt(np.maximum(g * x + 0.375 * g * g + params.offset, 0.0))


def anscombe_inverse(transformed: np.ndarray, params: PoissonGaussianParams) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2011/2013).

    With ``D`` in the normalised domain (gain 1) the Poisson inverse is
    ``D^2/4 + sqrt(3/2)/4 D^-1 - 11/8 D^-2 + 5/8 sqrt(3/2) D^-3 - 1/8``; the Gaussian part and the
    offset enter as ``- offset / gain^2`` before scaling back by the gain.
    """
    d = np.maximum(np.asarray(transformed, dtype=np.float64), 1e-3)
    c = np.sqrt(1.5)
    poisson = d**2 / 4 + c / 4 / d - 11 / 8 / d**2 + 5 / 8 * c / d**3 - 1 / 8
    # For tiny D the series blows up; there the algebraic inverse is as good as anything.
    poisson = np.where(d < 0.8, np.maximum(d**2 / 4 - 3 / 8, 0.0), poisson)
    normalised = np.maximum(poisson - params.offset / params.gain**2, 0.0)
    return normalised * params.gain


def denoise(
    image: np.ndarray,
    params: PoissonGaussianParams,
    sigma_multiplier: float = 1.0,
    profile: str = "np",
    clip: tuple[float, float] | None = (0.0, 255.0),
) -> np.ndarray:
    """Denoise one 2-D image with VST + BM3D + unbiased inverse.

    Parameters
    ----------
    image
        2-D noisy image in raw units.
    params
        Noise parameters from :func:`estimate_noise_params`.
    sigma_multiplier
        BM3D noise level in the VST domain (1 = theory).
    profile
        ``bm3d`` profile name (``"np"`` default, ``"refilter"``, ``"vn"``, ...).
    clip
        Clip the result to this range (the data range), or None.
    """
    import bm3d  # optional benchmark dependency (pip install bm3d)

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"denoise expects a 2-D image, got shape {image.shape}")
    transformed = anscombe_forward(image, params)
    filtered = bm3d.bm3d(transformed, sigma_psd=float(sigma_multiplier), profile=profile)
    result = anscombe_inverse(np.asarray(filtered), params)
    if clip is not None:
        result = np.clip(result, *clip)
    return result.astype(np.float32)


def evaluate(
    noisy_frames: np.ndarray,
    ground_truth: np.ndarray,
    calibration: np.ndarray,
    sigma_multiplier: float = 1.0,
    profile: str = "np",
    data_range: float = 255.0,
) -> dict:
    """Estimate the noise on ``calibration``, denoise each frame and score it against ``ground_truth``.

    Returns a JSON-serialisable dict with the noise parameters, per-frame PSNR of the noisy input
    and of BM3D+VST, their means and standard deviations, and seconds per image.
    """
    params = estimate_noise_params(calibration)
    frames = np.asarray(noisy_frames)
    if frames.ndim == 2:
        frames = frames[None]
    noisy_psnr, bm3d_psnr, bm3d_matched, seconds = [], [], [], []
    for frame in frames:
        t0 = time.perf_counter()
        result = denoise(frame, params, sigma_multiplier, profile, clip=(0.0, data_range))
        seconds.append(time.perf_counter() - t0)
        noisy_psnr.append(psnr(frame, ground_truth, data_range))
        bm3d_psnr.append(psnr(result, ground_truth, data_range))
        bm3d_matched.append(psnr(result, intensity_matched_reference(frame, ground_truth)[0], data_range))
    return {
        "method": "BM3D + generalized Anscombe VST (closed-form unbiased inverse)",
        "noise_params": asdict(params),
        "sigma_multiplier": sigma_multiplier,
        "profile": profile,
        "data_range": data_range,
        "n_frames": len(frames),
        "noisy_psnr": noisy_psnr,
        "psnr": bm3d_psnr,
        "psnr_mean": float(np.mean(bm3d_psnr)),
        "psnr_std": float(np.std(bm3d_psnr)),
        "psnr_matched": bm3d_matched,
        "psnr_matched_mean": float(np.mean(bm3d_matched)),
        "noisy_psnr_mean": float(np.mean(noisy_psnr)),
        "train_seconds": 0.0,
        "predict_seconds_per_image": statistics.median(seconds),
        "predict_seconds_all": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=FMD_DIR, help="folder with the FMD tiffs")
    parser.add_argument("--frames", type=int, default=5, help="number of validation frames to score")
    parser.add_argument("--sigma-multiplier", type=float, nargs="+", default=[1.0],
                        help="BM3D sigma in the VST domain; several values = a sweep")
    parser.add_argument("--profile", default="np")
    parser.add_argument("--json", type=Path, help="write the results (a list, one per sigma) here")
    args = parser.parse_args(argv)

    import tifffile

    noisy = tifffile.imread(args.data / "val_noisy.tif")[: args.frames]
    gt = tifffile.imread(args.data / "val_gt.tif")
    calibration = tifffile.imread(args.data / "calibration_fov01.tif")
    results = []
    for multiplier in args.sigma_multiplier:
        r = evaluate(noisy, gt, calibration, multiplier, args.profile)
        results.append(r)
        p = r["noise_params"]
        print(f"sigma x{multiplier:g} ({args.profile}): noise var = {p['gain']:.3f} * mean + {p['offset']:.2f} "
              f"(R^2 {p['r_squared']:.4f})")
        for i, (a, b) in enumerate(zip(r["noisy_psnr"], r["psnr"])):
            print(f"  frame {i}: noisy {a:6.2f} dB  ->  BM3D+VST {b:6.2f} dB  (+{b - a:.2f})")
        print(f"  mean {r['psnr_mean']:.2f} +- {r['psnr_std']:.2f} dB, "
              f"{r['predict_seconds_per_image']:.1f} s per image")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
