"""Diagnostic plots of noise models (docs/method.md 4a; the paper's Figure 3).

Drawing is separate from saving: :func:`plot_noise_model` and
:func:`plot_noise_histograms` draw on a matplotlib ``Axes`` that the caller
owns (the napari widget embeds its own Figure); :func:`save_noise_model_plot`
makes an Agg figure and writes a PNG for the command line. matplotlib is
imported inside the functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DivNoisingError
from .noise_model_fitting import BinnedNoiseStatistics, empirical_noise_statistics


def _model_curve(model: torch.nn.Module, lo: float, hi: float, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    s = torch.linspace(lo, hi, n, dtype=torch.float64)
    with torch.no_grad():
        var = model.variance(s)
    return s.numpy(), var.double().cpu().numpy()


def plot_noise_model(
    ax: Any,
    model: torch.nn.Module,
    signal: np.ndarray | None = None,
    observations: np.ndarray | None = None,
    *,
    statistics: BinnedNoiseStatistics | None = None,
    signal_range: tuple[float, float] | None = None,
    label: str = "noise model",
    units: str = "grey values",
    n_bins: int = 50,
) -> None:
    """Draw the noise variance against the signal for ``model`` on ``ax``.

    Parameters
    ----------
    ax
        A matplotlib Axes.
    model
        A GMM or Gaussian noise model (anything with ``variance(signal)``).
    signal, observations
        Optional data the model was fitted to (broadcasting arrays, e.g. the
        calibration stack's (1, Y, X) mean and (frames, Y, X) frames): its
        empirical variance, binned by signal, is drawn as dots.
    statistics
        Precomputed binned statistics instead of ``signal`` / ``observations``.
    signal_range
        Signal range of the curve; the model's fitted range (or the data's) by default.
    label, units
        Legend text of the curve and the intensity unit of the axes.
    n_bins
        Bins for the empirical variance.
    """
    if statistics is None and signal is not None and observations is not None:
        statistics = empirical_noise_statistics(signal, observations, n_bins=n_bins)
    if signal_range is None:
        if hasattr(model, "min_signal") and hasattr(model, "max_signal"):
            signal_range = (float(model.min_signal), float(model.max_signal))
        elif statistics is not None and statistics.signal.size:
            signal_range = (float(statistics.signal.min()), float(statistics.signal.max()))
        else:
            signal_range = (0.0, 1.0)
    s, var = _model_curve(model, *signal_range)
    slope, intercept = np.polyfit(s, var, 1)
    sign = "+" if intercept >= 0 else "\u2212"
    ax.plot(s, var, color="tab:red", linewidth=2.0, zorder=3,
            label=f"{label} (variance \u2248 {slope:.3g} \u00d7 signal {sign} {abs(intercept):.3g})")
    if statistics is not None and statistics.signal.size:
        sizes = 8 + 40 * np.sqrt(statistics.count / statistics.count.max())
        ax.scatter(
            statistics.signal, statistics.variance, s=sizes, color="tab:blue", alpha=0.7, zorder=2,
            label="measured: variance of the data, binned by signal (dot size = pixel count)",
        )
    ax.set_xlabel(f"signal s (true brightness, {units})")
    ax.set_ylabel(f"noise variance of x ({units}$^2$)")
    ax.set_title("Noise variance against signal")
    ax.set_xlim(signal_range)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")


def plot_noise_histograms(
    ax: Any,
    model: torch.nn.Module,
    signal: np.ndarray,
    observations: np.ndarray,
    *,
    levels: int = 3,
    units: str = "grey values",
    max_pairs: int = 2_000_000,
    seed: int = 0,
) -> None:
    """Draw histograms of x - s at a few signal levels with the model's density p(x | s) on ``ax``.

    Levels are spread evenly between the 5th and 99th percentile of the
    signal; each histogram uses the pairs whose signal is within 1% of the
    signal range of its level. Data on whole grey values gets bins centred on
    them. The density axis is logarithmic so the tails can be compared.
    """
    shape = np.broadcast_shapes(np.shape(signal), np.shape(observations))
    sig_full, obs_full = np.broadcast_to(signal, shape), np.broadcast_to(observations, shape)
    n_total = int(np.prod(shape))
    if n_total > max_pairs:  # index a random subsample without materialising the broadcast pairs
        pick = np.unravel_index(np.random.default_rng(seed).choice(n_total, max_pairs, replace=False), shape)
        sig, obs = sig_full[pick].astype(np.float64), obs_full[pick].astype(np.float64)
    else:
        sig, obs = sig_full.astype(np.float64).reshape(-1), obs_full.astype(np.float64).reshape(-1)
    lo, hi = np.percentile(sig, [5, 99])
    centres = np.linspace(lo, hi, levels) if levels > 1 else np.array([0.5 * (lo + hi)])
    half_width = 0.01 * (sig.max() - sig.min()) + 1e-9
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink"]
    drawn = 0
    floor = 1.0
    for i, centre in enumerate(centres):
        near = np.abs(sig - centre) <= half_width
        if near.sum() < 50:
            continue
        x, s_near = obs[near], sig[near]
        s_level = float(s_near.mean())
        colour = colours[i % len(colours)]
        x_lo, x_hi = np.percentile(x, [0.1, 99.9])
        if np.mean(np.abs(x - np.round(x)) < 0.25) > 0.9:
            # Whole grey values (8-bit data): whole-number bins centred on them, or narrow bins show gaps.
            width = max(1.0, float(np.ceil((x_hi - x_lo) / 60)))
            edges = np.arange(np.round(x_lo) - 0.5, np.round(x_hi) + 0.5 + width, width)
        else:
            edges = np.linspace(x_lo, x_hi, 61)
        ax.hist(x - s_level, bins=edges - s_level, density=True, histtype="stepfilled", alpha=0.25, color=colour,
                edgecolor=colour, linewidth=1.0,
                label=f"data at signal {s_level:.3g}")
        grid = torch.linspace(float(edges[0]), float(edges[-1]), 400, dtype=torch.float64)
        # Average the density over the signals in the window, as the histogram does.
        s_sample = torch.as_tensor(np.random.default_rng(seed).choice(s_near, min(64, s_near.size), replace=False))
        with torch.no_grad():
            dens = model.log_likelihood(grid[:, None], s_sample[None, :]).exp().mean(1).numpy()
        ax.plot(grid.numpy() - s_level, dens, color=colour, linewidth=2.0, label=f"model p(x | s = {s_level:.3g})")
        floor = min(floor, float(dens[dens > 0].min()) if np.any(dens > 0) else floor)
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "not enough data per signal level", transform=ax.transAxes, ha="center")
    ax.set_xlabel(f"observed minus signal, x - s ({units})")
    ax.set_yscale("log")
    ax.set_ylabel("probability density (log scale)")
    ax.set_title("Noise distribution at fixed signal")
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.set_ylim(bottom=max(floor, 1e-5))
        ax.legend(fontsize="small")


def save_noise_model_plot(
    model: torch.nn.Module,
    path: str | Path,
    signal: np.ndarray | None = None,
    observations: np.ndarray | None = None,
    *,
    title: str = "",
    histograms: bool = True,
    dpi: int = 120,
) -> Path:
    """Save the variance plot (and, when data is given, the histogram panel) as a PNG; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DivNoisingError(f"The plot is saved as PNG; give a file name ending in .png (got {path.name}).")
    with_data = signal is not None and observations is not None
    two = histograms and with_data
    fig = Figure(figsize=(12 if two else 6.5, 5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2) if two else [fig.subplots(1, 1)]
    plot_noise_model(axes[0], model, signal, observations)
    if two:
        plot_noise_histograms(axes[1], model, signal, observations)
    if title:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
