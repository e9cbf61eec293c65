"""Diagnostic noise-model plots: drawing on a caller's Axes and saving PNGs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.noise_models import GaussianNoiseModel, GMMNoiseModel
from napari_divnoising.plotting import plot_noise_histograms, plot_noise_model, save_noise_model_plot


def _linear_gmm(slope: float = 2.0, intercept: float = 9.0, lo: float = 100.0, hi: float = 500.0) -> GMMNoiseModel:
    """A one-component GMM whose variance is exactly slope * s + intercept on [lo, hi]."""
    var_lo = slope * lo + intercept
    weight = torch.tensor([[0.0, 0.0], [np.log(var_lo), np.log(slope * (hi - lo))], [0.0, 0.0]])
    return GMMNoiseModel(weight, lo, hi, min_variance=1.0)


def _calibration(seed: int = 0):
    rng = np.random.default_rng(seed)
    signal = rng.uniform(100, 500, (1, 40, 40))
    frames = signal + rng.normal(0, 1, (10, 40, 40)) * np.sqrt(2.0 * signal + 9.0)
    return signal, frames


@pytest.fixture
def axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    return fig.subplots(1, 2)


def test_plot_noise_model_draws_model_variance_and_data(axes):
    model = _linear_gmm()
    signal, frames = _calibration()
    plot_noise_model(axes[0], model, signal, frames, n_bins=10)
    curve = axes[0].lines[0]
    xs, ys = curve.get_xdata(), curve.get_ydata()
    np.testing.assert_allclose(ys, 2.0 * xs + 9.0, rtol=1e-4)
    assert (xs.min(), xs.max()) == pytest.approx((100.0, 500.0))
    dots = axes[0].collections[0].get_offsets()
    assert 5 <= len(dots) <= 10
    np.testing.assert_allclose(dots[:, 1], 2.0 * dots[:, 0] + 9.0, rtol=0.2)
    assert "variance" in axes[0].get_ylabel() and "grey values" in axes[0].get_xlabel()
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert any("2 \u00d7 signal + 9" in label for label in labels)
    assert any("measured" in label for label in labels)


def test_plot_noise_model_without_data_and_for_gaussian(axes):
    plot_noise_model(axes[0], GaussianNoiseModel(a=1.0, b=4.0), signal_range=(0.0, 10.0), units="photons")
    ys = axes[0].lines[0].get_ydata()
    assert ys[0] == pytest.approx(4.0) and ys[-1] == pytest.approx(14.0)
    assert not axes[0].collections
    assert "photons" in axes[0].get_xlabel()


def test_histograms_match_model_density(axes):
    model = _linear_gmm()
    signal, frames = _calibration()
    plot_noise_histograms(axes[1], model, signal, frames, levels=2)
    assert len(axes[1].lines) == 2
    for line in axes[1].lines:
        x, dens = line.get_xdata(), line.get_ydata()
        # The density integrates to about one over the drawn range (0.1 to 99.9 percentile of the data).
        assert np.trapezoid(dens, x) == pytest.approx(1.0, abs=0.03)
    assert axes[1].get_yscale() == "log"


def test_save_noise_model_plot_writes_png(tmp_path):
    signal, frames = _calibration()
    path = save_noise_model_plot(_linear_gmm(), tmp_path / "plots" / "nm.png", signal, frames, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[1] > matplotlib.image.imread(path).shape[0]  # two panels
    single = save_noise_model_plot(_linear_gmm(), tmp_path / "single.png")
    img = matplotlib.image.imread(single)
    assert img.shape[1] < 1000


def test_save_refuses_non_png(tmp_path):
    with pytest.raises(DivNoisingError, match="PNG"):
        save_noise_model_plot(_linear_gmm(), tmp_path / "nm.jpg")


def test_importing_plotting_does_not_import_pyplot():
    code = ("import sys, napari_divnoising.plotting, napari_divnoising.noise_model_fitting; "
            "print('matplotlib.pyplot' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
