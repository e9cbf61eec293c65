"""Saving and loading GMM noise models as reference-layout .npz files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.noise_model_io import REFERENCE_KEYS, load_gmm_npz, read_description, save_gmm_npz
from napari_divnoising.noise_models import GaussianNoiseModel, GMMNoiseModel


def _random_model(seed: int = 0, n_gaussians: int = 3, n_coeffs: int = 2) -> GMMNoiseModel:
    gen = torch.Generator().manual_seed(seed)
    return GMMNoiseModel.initial(100.0, 900.0, n_gaussians, n_coeffs, min_variance=7.5, generator=gen)


def _pairs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    s = rng.uniform(100, 900, 1000)
    x = s + rng.normal(0, 20, 1000)
    return torch.as_tensor(x), torch.as_tensor(s)


def test_round_trip_gives_identical_log_likelihoods(tmp_path):
    model = _random_model(n_gaussians=4, n_coeffs=3)
    path = save_gmm_npz(model, tmp_path / "nm.npz", description="test model")
    loaded = load_gmm_npz(path)
    x, s = _pairs()
    with torch.no_grad():
        assert torch.equal(model.log_likelihood(x, s), loaded.log_likelihood(x, s))
    assert loaded.n_gaussians == 4 and loaded.n_coeffs == 3
    assert float(loaded.min_variance) == pytest.approx(7.5)
    assert read_description(path) == "test model"


def test_file_has_reference_keys_dtypes_and_shapes(tmp_path):
    model = _random_model()
    path = save_gmm_npz(model, tmp_path / "nm.npz")
    with np.load(path, allow_pickle=False) as data:
        assert set(REFERENCE_KEYS) <= set(data.files)
        assert data["trained_weight"].shape == (9, 2) and data["trained_weight"].dtype == np.float32
        assert data["min_signal"].shape == (1,) and data["min_signal"].dtype == np.float32
        assert data["max_signal"].shape == (1,) and data["max_signal"].dtype == np.float32
        assert data["min_sigma"].size == 1
        np.testing.assert_array_equal(data["trained_weight"], model.weight.detach().numpy())
        # What CAREamics' GaussianMixtureNoiseModel does with the arrays.
        assert torch.Tensor([torch.Tensor(data["min_signal"])]).item() == pytest.approx(100.0)
        assert data["min_sigma"].item() == pytest.approx(7.5)


def test_reference_written_file_loads(tmp_path):
    """A file laid out like the reference DivNoising / PPN2V writer (min_sigma a plain Python int)."""
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(9, 2)).astype(np.float32)
    weight[3:6, 1] = np.log(800.0)
    path = tmp_path / "GMM_reference.npz"
    np.savez(
        path, trained_weight=weight, min_signal=np.array([100.0], dtype=np.float32),
        max_signal=np.array([900.0], dtype=np.float32), min_sigma=50,
    )
    model = load_gmm_npz(path)
    assert float(model.min_variance) == 50.0
    np.testing.assert_array_equal(model.weight.detach().numpy(), weight)
    # Independent numpy evaluation of the reference formula at one point.
    s, x = 400.0, 430.0
    u = (s - 100.0) / 800.0
    means = weight[:3, 0] + weight[:3, 1] * u
    var = np.maximum(np.exp(weight[3:6, 0]) + np.exp(weight[3:6, 1]) * u, 50.0)
    logits = weight[6:, 0] + weight[6:, 1] * u
    alpha = np.exp(logits - logits.max())
    alpha /= alpha.sum()
    means = means - (alpha * means).sum() + s
    p = (alpha * np.exp(-((x - means) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)).sum()
    with torch.no_grad():
        ours = model.log_likelihood(torch.tensor([x], dtype=torch.float64), torch.tensor([s], dtype=torch.float64))
    assert float(ours) == pytest.approx(np.log(p), rel=1e-5)


def test_missing_file(tmp_path):
    with pytest.raises(DivNoisingError, match="not found"):
        load_gmm_npz(tmp_path / "absent.npz")


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(DivNoisingError, match="folder"):
        load_gmm_npz(tmp_path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DivNoisingError, match="Could not read"):
        load_gmm_npz(path)


def test_truncated_file(tmp_path):
    good = save_gmm_npz(_random_model(), tmp_path / "good.npz")
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DivNoisingError):
        load_gmm_npz(bad)


def test_single_npy_is_refused(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.zeros((9, 2)))
    with pytest.raises(DivNoisingError, match="single .npy"):
        load_gmm_npz(path)


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, trained_weight=np.array([{"a": 1}], dtype=object), min_signal=[0.0], max_signal=[1.0], min_sigma=1)
    with pytest.raises(DivNoisingError):
        load_gmm_npz(path)


def test_missing_keys(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, trained_weight=np.zeros((9, 2), np.float32), min_signal=np.array([0.0], np.float32))
    with pytest.raises(DivNoisingError, match="missing max_signal, min_sigma"):
        load_gmm_npz(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"trained_weight": np.zeros((8, 2), np.float32)}, "trained_weight"),
        ({"trained_weight": np.zeros(9, np.float32)}, "trained_weight"),
        ({"min_signal": np.array([0.0, 1.0], np.float32)}, "min_signal must be a single number"),
        ({"max_signal": np.array([-5.0], np.float32)}, "must exceed min_signal"),
        ({"min_sigma": np.array(0.0)}, r"min_sigma \(the variance floor\) must be positive"),
        ({"trained_weight": np.full((9, 2), np.nan, np.float32)}, "NaN"),
    ],
)
def test_wrong_shapes_or_values(tmp_path, changes, message):
    arrays = {
        "trained_weight": np.zeros((9, 2), np.float32), "min_signal": np.array([0.0], np.float32),
        "max_signal": np.array([10.0], np.float32), "min_sigma": np.array(1.0),
    }
    arrays.update(changes)
    path = tmp_path / "nm.npz"
    np.savez(path, **arrays)
    with pytest.raises(DivNoisingError, match=message):
        load_gmm_npz(path)


def test_save_refuses_other_models_and_suffixes(tmp_path):
    with pytest.raises(DivNoisingError, match="Only GMM"):
        save_gmm_npz(GaussianNoiseModel(), tmp_path / "g.npz")
    with pytest.raises(DivNoisingError, match=".npz"):
        save_gmm_npz(_random_model(), tmp_path / "nm.txt")


def test_save_leaves_no_temporary_files(tmp_path):
    save_gmm_npz(_random_model(), tmp_path / "nm.npz")
    save_gmm_npz(_random_model(seed=2), tmp_path / "nm.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["nm.npz"]


def test_random_bytes_and_empty_files_get_plain_messages(tmp_path):
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).integers(0, 256, 999, dtype=np.uint8).tobytes())
    with pytest.raises(DivNoisingError, match="not a zip archive") as info:
        load_gmm_npz(tmp_path / "random.npz")
    assert "pickle" not in str(info.value)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DivNoisingError, match="is empty"):
        load_gmm_npz(tmp_path / "empty.npz")
    with pytest.raises(DivNoisingError, match="file path"):
        load_gmm_npz(None)
