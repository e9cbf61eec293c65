"""MAP estimate from posterior samples: mean shift on local overlapping windows (docs/method.md 6, appendix A.4).

The image is covered by square windows (10 x 10 pixels, overlapping by 3, as
in the paper). Each window's samples are points in R^(10*10); mean shift moves
a point to the kernel-weighted mean of the samples around it, repeatedly, until
it stops moving: it climbs to a mode of the samples' kernel density. Seed = mean
of the samples; the bandwidth ``h`` starts large and shrinks by x0.9 per round,
each round seeded with the last result. Overlapping windows are averaged per
pixel.

Kernel. ``"gaussian"`` (the default) weights every sample by
``exp(-d^2 / (2 h^2))``; ``"flat"`` (the reference's sklearn ``MeanShift``)
averages the samples within distance ``h``. In 100 dimensions the samples lie
at nearly the same distance from any point, so a flat kernel that is small
enough to tell modes apart holds only a handful of samples, and its mode is
about as noisy as the mean of those few. The Gaussian kernel's smooth weights
use every sample: on unimodal samples its mode is about as close to the truth
as the mean, and on samples from two modes it still lands on the heavier one
(benchmarks/results/ablation.md, last section; tests/prediction/test_map_estimate.py).

Bandwidth rule (data-range independent). The reference code uses 200 -> 100
raw units for 16-bit data. Here bandwidths are relative to each window's
spread, ``s = sqrt(mean_k ||v_k - mean||^2)`` (the RMS Euclidean distance of
the window's samples to their mean, which scales with the data's units): ``h``
runs from ``start * s`` down while ``h >= stop * s`` (defaults 1.0 and 0.5, the
reference's 2:1 ratio). The same samples in 8-bit or 16-bit units (any
scale factor) give the same result in their units. Passing an absolute
``bandwidth`` instead uses the reference schedule ``bandwidth -> bandwidth/2``
in raw units for every window.

All windows are processed at once with batched matrix products in torch (in
chunks that bound memory), not in a Python loop per window.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..errors import DivNoisingError
from ..events import Progress

#: The mean-shift kernels: Gaussian weights (the default) or the reference's flat window.
KERNELS = ("gaussian", "flat")

#: Bytes of window data processed at once on the CPU (bounds memory for large images).
CHUNK_BYTES = 256 * 2**20

#: The same on a GPU (fewer, larger batched products).
GPU_CHUNK_BYTES = 1024 * 2**20


def default_chunk_bytes(device: torch.device) -> int:
    """Bytes of window data processed at once on ``device``."""
    return GPU_CHUNK_BYTES if device.type == "cuda" else CHUNK_BYTES


def _starts(length: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def _window_indices(shape: tuple[int, int], window: int, overlap: int) -> torch.Tensor:
    """Flat pixel indices (n_windows, wy * wx) of overlapping windows covering the whole image."""
    h, w = shape
    wy, wx = min(window, h), min(window, w)
    stride = max(1, window - overlap)
    ys = torch.tensor(_starts(h, wy, stride))
    xs = torch.tensor(_starts(w, wx, stride))
    dy, dx = torch.meshgrid(torch.arange(wy), torch.arange(wx), indexing="ij")
    offsets = (dy * w + dx).reshape(-1)
    corners = (ys[:, None] * w + xs[None, :]).reshape(-1)
    return corners[:, None] + offsets[None, :]


def _shift_chunk(
    points: torch.Tensor, bandwidth: float | None, start: float, stop: float, shrink: float, max_iter: int, tol: float,
    kernel: str = "gaussian",
) -> torch.Tensor:
    """Mean shift for a chunk of windows: points (c, N, P), centred on each window's mean; returns modes (c, P)."""
    sq_norms = (points * points).sum(-1)  # (c, N)
    spread = torch.sqrt(sq_norms.mean(1))  # (c,) RMS distance to the mean
    if bandwidth is None:
        h, h_end = start * spread, stop * spread
    else:
        h = torch.full_like(spread, float(bandwidth))
        h_end = h / 2
    mode = torch.zeros_like(points[:, 0])  # seed: the mean (points are centred)
    step_tol = tol * torch.clamp(spread, min=1e-12)
    # Rounds per window: h, h*shrink, ... while >= h_end (7 for the 2:1 schedule at x0.9). No spread: nothing to do.
    safe_h = torch.clamp(h, min=1e-30)
    rounds = torch.floor(torch.log(torch.clamp(h_end, min=1e-30) / safe_h) / np.log(shrink)) + 1
    rounds = torch.where((h > 0) & (h >= h_end), rounds, torch.zeros_like(h))
    for r in range(int(rounds.max().item()) if len(rounds) else 0):
        # Windows that stopped moving are dropped (by re-gathering the rest) once fewer than half move,
        # so the cost follows the slow windows without copying the data on every iteration.
        ids = torch.nonzero(rounds > r)[:, 0]
        full = len(ids) == len(points)
        pts, sq = (points, sq_norms) if full else (points[ids], sq_norms[ids])
        hr2 = (h[ids] * shrink**r) ** 2
        tol_r = step_tol[ids]
        for _ in range(max_iter):
            cur = mode[ids]
            dots = torch.bmm(pts, cur[:, :, None])[..., 0]  # (a, N)
            # Squared distances by expansion; safe because points are centred (no large offsets).
            d2 = sq - 2 * dots + (cur * cur).sum(-1, keepdim=True)
            if kernel == "gaussian":
                weights = torch.softmax(-d2 / (2 * torch.clamp(hr2[:, None], min=1e-30)), dim=1)
                new = torch.bmm(weights[:, None, :], pts)[:, 0]
            else:
                within = (d2 <= hr2[:, None]).to(points.dtype)
                counts = within.sum(1, keepdim=True)
                new = torch.bmm(within[:, None, :], pts)[:, 0] / torch.clamp(counts, min=1)
                new = torch.where(counts > 0, new, cur)  # no sample within h: stay
            moved = (new - cur).abs().amax(1) > tol_r
            mode[ids] = new
            n_moved = int(moved.sum())
            if n_moved == 0:
                break
            if n_moved < len(ids) // 2:
                ids, pts, sq, hr2, tol_r = ids[moved], pts[moved], sq[moved], hr2[moved], tol_r[moved]
    return mode


def map_estimate_iter(
    samples: np.ndarray,
    *,
    window: int = 10,
    overlap: int = 3,
    bandwidth: float | None = None,
    start: float = 1.0,
    stop: float = 0.5,
    shrink: float = 0.9,
    max_iter: int = 100,
    tol: float = 1e-3,
    kernel: str = "gaussian",
    device: str | torch.device = "cpu",
    chunk_bytes: int | None = None,
) -> Iterator[Progress | np.ndarray]:
    """Generator form of :func:`map_estimate`: Progress per chunk of windows, then the MAP image.

    ``samples`` may be a NumPy array or a tensor on any device (used where it is when on ``device``).
    """
    arr = samples if isinstance(samples, torch.Tensor) else np.asarray(samples)
    if arr.ndim != 3:
        raise DivNoisingError(f"MAP needs samples of shape (n_samples, Y, X); got shape {arr.shape}.")
    if arr.shape[0] < 1:
        raise DivNoisingError("MAP needs at least one sample.")
    if window < 1 or overlap < 0 or overlap >= window:
        raise DivNoisingError(f"MAP windows need size >= 1 and 0 <= overlap < size (got {window}, {overlap}).")
    if not 0 < shrink < 1:
        raise DivNoisingError(f"The bandwidth shrink factor must be between 0 and 1 (got {shrink}).")
    if kernel not in KERNELS:
        raise DivNoisingError(f"The MAP kernel must be one of {', '.join(KERNELS)} (got {kernel!r}).")
    if bandwidth is not None and bandwidth <= 0:
        raise DivNoisingError(f"The MAP bandwidth must be positive (got {bandwidth}).")
    n, h, w = arr.shape
    dev = torch.device(device)
    with torch.inference_mode():
        flat = torch.as_tensor(arr).to(dev, torch.float32).reshape(n, h * w)
    idx = _window_indices((h, w), window, overlap).to(dev)
    n_windows, p = idx.shape
    chunk = max(1, (chunk_bytes or default_chunk_bytes(dev)) // (n * p * 4 * 3))
    total = torch.zeros(h * w, dtype=torch.float64, device=dev)
    hits = torch.zeros(h * w, dtype=torch.float64, device=dev)
    for first in range(0, n_windows, chunk):
        with torch.inference_mode():
            ids = idx[first : first + chunk]
            points = flat[:, ids].permute(1, 0, 2).contiguous()  # (c, N, P)
            centre = points.mean(1, keepdim=True)
            points -= centre
            mode = _shift_chunk(points, bandwidth, start, stop, shrink, max_iter, tol, kernel) + centre[:, 0]
            total.index_add_(0, ids.reshape(-1), mode.reshape(-1).double())
            hits.index_add_(0, ids.reshape(-1), torch.ones_like(mode).reshape(-1).double())
        yield Progress(min(n_windows, first + chunk), n_windows, "MAP estimate")
    yield (total / hits).reshape(h, w).float().cpu().numpy()


def map_estimate(samples: np.ndarray, **kwargs: object) -> np.ndarray:
    """MAP estimate of an image from its posterior samples, shape (n_samples, Y, X) -> (Y, X), raw units.

    Samples of a stack, shape (n_samples, frames, Y, X), give (frames, Y, X), frame by frame.

    Parameters
    ----------
    samples
        Posterior samples.
    window, overlap
        Window side and overlap in pixels (10 and 3).
    bandwidth
        None for the data-relative rule (see the module docstring), or an absolute starting
        bandwidth in raw units (the reference used 200 for 16-bit data).
    start, stop, shrink
        Relative schedule: ``h`` from ``start * spread`` shrinking by ``shrink`` while ``>= stop * spread``.
    max_iter, tol
        Mean-shift iterations per round, and the convergence threshold (relative to the spread).
    kernel
        ``"gaussian"`` (default) or ``"flat"`` (the reference's; see the module docstring).
    device
        Torch device to compute on.
    chunk_bytes
        Bytes of window data processed at once (default :func:`default_chunk_bytes`).
    """
    arr = np.asarray(samples)
    if arr.ndim == 4:
        return np.stack([map_estimate(arr[:, f], **kwargs) for f in range(arr.shape[1])])
    result = None
    for item in map_estimate_iter(arr, **kwargs):  # type: ignore[arg-type]
        if isinstance(item, np.ndarray):
            result = item
    assert result is not None
    return result
