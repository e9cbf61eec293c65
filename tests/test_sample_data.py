"""Synthetic sample data: shapes, Poisson-Gaussian noise with the documented gain / read noise, napari LayerData."""

import numpy as np

from napari_divnoising import _sample_data as sd


def test_noisy_image_has_documented_noise():
    noisy, clean = sd.noisy_image()
    assert noisy.shape == sd.IMAGE_SHAPE and noisy.dtype == np.uint16
    assert clean.shape == sd.IMAGE_SHAPE
    residual = noisy.astype(float) - clean
    assert abs(residual.mean()) < 1.0  # unbiased noise
    # Variance grows with the signal as gain * (s - offset) + read^2.
    for lo, hi in ((100, 110), (180, 260)):
        sel = (clean >= lo) & (clean < hi)
        assert sel.sum() > 200
        expected = sd.GAIN * (clean[sel].mean() - sd.OFFSET) + sd.READ_NOISE**2
        assert abs(residual[sel].var() / expected - 1) < 0.2
    # There is structure to denoise: a good fraction of pixels well above the background.
    assert (clean > sd.OFFSET + 50).mean() > 0.05


def test_calibration_stack_is_static_sample_with_same_noise():
    stack = sd.calibration_stack()
    assert stack.shape == sd.CALIBRATION_SHAPE and stack.dtype == np.uint16
    signal = stack.mean(0)
    clean = sd.clean_image(sd.CALIBRATION_SHAPE[1:], seed=1)
    assert np.abs(signal - clean).mean() < 2.0
    n = stack.shape[0]
    var = stack.astype(float).var(0) * n / (n - 1)
    sel = (clean > 150) & (clean < 250)
    expected = sd.GAIN * (clean[sel] - sd.OFFSET) + sd.READ_NOISE**2
    assert abs(var[sel].mean() / expected.mean() - 1) < 0.15
    # A different sample than the noisy image.
    assert not np.allclose(clean, sd.clean_image(sd.CALIBRATION_SHAPE[1:], seed=0))


def test_sample_functions_return_layer_data():
    layers = sd.noisy_and_calibration_sample()
    assert [kind for _, _, kind in layers] == ["image", "image"]
    assert [meta["name"] for _, meta, _ in layers] == ["calibration", "noisy"]
    assert sd.noisy_image_sample()[0][0].shape == sd.IMAGE_SHAPE


def test_deterministic():
    a, _ = sd.noisy_image()
    b, _ = sd.noisy_image()
    np.testing.assert_array_equal(a, b)
