"""Quality and diversity metrics against a known ground truth (docs/method.md 7, paper appendix A.7)."""

from __future__ import annotations

import numpy as np

from .errors import DivNoisingError


def _checked(x: np.ndarray, gt: np.ndarray, same_shape: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64; ``x`` must end in the ground truth's shape (or have exactly its shape: ``same_shape``)."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(gt, dtype=np.float64)
    if (a.shape if same_shape else a.shape[-b.ndim :]) != b.shape:
        raise DivNoisingError(f"Image shape {a.shape} does not match the ground truth shape {b.shape}.")
    return a, b


def psnr(x: np.ndarray, gt: np.ndarray, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB: ``20 log10(data_range) - 10 log10(MSE)``.

    Parameters
    ----------
    x
        The estimate.
    gt
        The ground truth, same shape.
    data_range
        The range to quote (e.g. 255 for 8-bit data); always state it with the number.
    """
    a, b = _checked(x, gt, same_shape=True)
    if data_range <= 0:
        raise DivNoisingError(f"The PSNR data range must be positive (got {data_range}).")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return float(20 * np.log10(data_range) - 10 * np.log10(mse))


def sample_psnrs(samples: np.ndarray, gt: np.ndarray, data_range: float) -> np.ndarray:
    """PSNR of each sample (first axis) against the ground truth."""
    s, _ = _checked(samples, gt)
    if s.ndim != np.ndim(gt) + 1:
        raise DivNoisingError(f"Samples need one axis more than the ground truth; got {s.shape} and {np.shape(gt)}.")
    return np.array([psnr(sample, gt, data_range) for sample in s])


def std_psnr(samples: np.ndarray, gt: np.ndarray, data_range: float) -> float:
    """The "standard deviation PSNR" diversity metric: std over samples of each sample's PSNR (dB).

    Higher means more diverse samples (Prakash et al. 2021, appendix A.7). Population std (``ddof=0``).
    """
    values = sample_psnrs(samples, gt, data_range)
    if len(values) < 2:
        raise DivNoisingError("The std-PSNR diversity metric needs at least two samples.")
    return float(np.std(values))


def intensity_matched_reference(noisy: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The ground truth brought to the intensity of one noisy frame: ``(a * gt + b, a, b)``.

    ``a`` and ``b`` are the least-squares fit of ``noisy`` on ``gt``. A ground truth averaged over many
    frames can differ in brightness from any single one of them (bleaching, drift): a denoiser that is
    faithful to the frame then pays for the difference. The PSNR against this reference measures the
    denoising alone; quote it beside the plain PSNR, never instead of it.

    Parameters
    ----------
    noisy
        One noisy frame.
    gt
        Its ground truth, same shape.
    """
    x, g = _checked(noisy, gt, same_shape=True)
    g_centred = g - g.mean()
    spread = float(np.sum(g_centred**2))
    if spread == 0:
        raise DivNoisingError("The ground truth is constant: there is no intensity to match.")
    a = float(np.sum(g_centred * (x - x.mean())) / spread)
    b = float(x.mean() - a * g.mean())
    return a * g + b, a, b
