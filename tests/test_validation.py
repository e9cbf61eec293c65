"""Argument checks of the public API, range warnings both ways, finite results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel, GMMNoiseModel
from napari_divnoising.training import TrainingConfig
from napari_divnoising.validation import (
    check_finite_result,
    check_generate_args,
    check_predict_args,
    check_train_args,
    noise_model_range_warning,
    prediction_range_warning,
)


@pytest.fixture(scope="module")
def model():
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=4)
    return DivNoisingModel(net, GaussianNoiseModel(a=0.0, b=4.0, sigma_min=0.1), 100.0, 20.0)


X = np.random.default_rng(0).normal(100, 20, (16, 16)).astype(np.float32)


def test_good_arguments_pass(model):
    check_predict_args(model, X, 3, batch_size=np.int64(2), tile_size=None, seed=0, keep_samples=0,
                       compute_map=np.bool_(True), precision="float32", name="x")
    check_generate_args(model, 2, (16, 24), seed=None)
    check_train_args([X, X], 5.0, TrainingConfig(max_steps=1, learning_rate=1), None, "m.pt")
    check_train_args(X, "co-learn")
    check_train_args(X, None, None, model)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"model": "model.pt"}, "load_model('model.pt')"),
        ({"model": None}, "DivNoisingModel"),
        ({"image": None}, "is None"),
        ({"image": "noisy.tif"}, "file name"),
        ({"image": 3.0}, "2-D image"),
        ({"n_samples": 2.5}, "whole number"),
        ({"n_samples": True}, "whole number"),
        ({"n_samples": 0}, "at least 1"),
        ({"batch_size": "4"}, "whole number"),
        ({"seed": -2}, "at least 0"),
        ({"keep_samples": -1}, "at least 0"),
        ({"compute_map": "yes"}, "True or False"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"name": 5}, "string"),
        ({"device": 0}, "device"),
    ],
)
def test_predict_arguments_are_refused_clearly(model, kwargs, words):
    args = {"model": model, "image": X, "n_samples": 3, **kwargs}
    with pytest.raises(DivNoisingError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_predict_args(**args)


@pytest.mark.parametrize(
    "args, words",
    [
        ((None, 5.0), "is None"),
        (("data.tif", 5.0), "file name"),
        ((X, "nm.npz"), "load_gmm_npz"),
        ((X, "poisson"), "noise_model must be"),
        ((X, -1.0), "positive"),
        ((X, float("nan")), "finite number"),
        ((X, True), "noise_model must be"),
        ((X, 5.0, {"max_steps": 1}), r"TrainingConfig\(max_steps=1\)"),
        ((X, 5.0, TrainingConfig(max_steps=1.5)), "config.max_steps must be a whole number"),
        ((X, 5.0, TrainingConfig(patch_size="64")), "config.patch_size must be a whole number"),
        ((X, 5.0, TrainingConfig(beta="1")), "config.beta must be a finite number"),
        ((X, 5.0, TrainingConfig(mixed_precision=1)), "True or False"),
        ((X, 5.0, None, "model.pt"), "load_model"),
        ((X, 5.0, None, None, 3), "checkpoint_path must be a file path"),
    ],
)
def test_train_arguments_are_refused_clearly(args, words):
    with pytest.raises(DivNoisingError, match=words):
        check_train_args(*args)


def test_generate_arguments_are_refused_clearly(model):
    for kwargs, words in [({"count": "2"}, "whole number"), ({"count": 0}, "at least 1"),
                          ({"size": 3.5}, "whole number"), ({"size": (1, 2, 3)}, "height, width")]:
        args = {"model": model, "count": 2, "size": 16, **kwargs}
        with pytest.raises(DivNoisingError, match=words):
            check_generate_args(**args)


def _gmm(lo: float, hi: float) -> GMMNoiseModel:
    return GMMNoiseModel.initial(lo, hi, generator=torch.Generator().manual_seed(0))


def test_noise_model_range_warning_both_ways():
    data8 = np.random.default_rng(1).integers(5, 250, (64, 64)).astype(np.float32)
    assert noise_model_range_warning(_gmm(0, 255), data8) is None
    assert noise_model_range_warning(_gmm(20, 240), data8) is None  # within 10% of the range
    high = noise_model_range_warning(_gmm(1652, 22648), data8)  # a 16-bit noise model on 8-bit data
    assert "1652 to 22648" in high and "do not overlap" in high
    low = noise_model_range_warning(_gmm(0, 100), data8)  # data beyond the noise model
    assert "covered" in low and "calibration data" in low
    assert noise_model_range_warning(GaussianNoiseModel(a=0.0, b=1.0, sigma_min=0.1), data8) is None


def test_prediction_range_warning(model):
    rng = np.random.default_rng(2)
    assert prediction_range_warning(model, rng.normal(100, 20, (32, 32))) is None
    assert prediction_range_warning(model, rng.normal(100, 5, (32, 32))) is None  # a flat crop is fine
    far = prediction_range_warning(model, rng.normal(100, 20, (32, 32)) * 200, name="x200.tif")
    assert "x200.tif" in far and "standard deviations above" in far and "rescale" in far
    wide = prediction_range_warning(model, rng.normal(100, 2000, (32, 32)))
    assert "spread" in wide
    nan = rng.normal(100, 20, (32, 32))
    nan[:20] = np.nan
    assert prediction_range_warning(model, nan) is None  # refused by the input checks, not warned about as "nan"


def test_non_finite_results_are_refused():
    check_finite_result({"mmse": np.ones(3), "samples": None})
    with pytest.raises(DivNoisingError, match="variance result.*NaN or infinite.*nothing was written"):
        check_finite_result({"mmse": np.ones(3), "variance": np.array([1.0, np.inf])})
