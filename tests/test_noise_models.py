"""The noise model classes against an independent numpy implementation of the reference formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising.noise_models import GaussianNoiseModel, GMMNoiseModel, noise_model_from_config


def reference_gmm_log_likelihood(weight, min_signal, max_signal, min_sigma, x, s):
    """PPN2V / DivNoising formula in plain numpy (float64), evaluated in log space."""
    k = weight.shape[0] // 3
    u = (s - min_signal) / (max_signal - min_signal)
    powers = np.stack([u**j for j in range(weight.shape[1])])
    means = weight[:k] @ powers
    variances = np.maximum(np.exp(weight[k : 2 * k]) @ powers, min_sigma)
    logits = weight[2 * k :] @ powers
    alpha = np.exp(logits - logits.max(0))
    alpha /= alpha.sum(0)
    means = means - (alpha * means).sum(0) + s
    log_terms = np.log(alpha) - 0.5 * ((x - means) ** 2 / variances + np.log(2 * np.pi * variances))
    top = log_terms.max(0)
    return top + np.log(np.exp(log_terms - top).sum(0)), means, variances, alpha


@pytest.fixture
def gmm_setup():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(12, 3))  # K = 4, cubic polynomials
    weight[4:8, 1] = np.log(1000.0)
    s = rng.uniform(100, 1100, 500)
    x = s + rng.normal(0, 40, 500)
    return weight, s, x


def test_gmm_matches_numpy_reference(gmm_setup):
    weight, s, x = gmm_setup
    model = GMMNoiseModel(weight, 100.0, 1100.0, min_variance=25.0)
    w32 = model.weight.detach().double().numpy()  # the model stores float32 like the reference files
    expected, means, variances, alpha = reference_gmm_log_likelihood(w32, 100.0, 1100.0, 25.0, x, s)
    with torch.no_grad():
        ours = model.log_likelihood(torch.as_tensor(x), torch.as_tensor(s)).numpy()
        m, v, lw = model.parameters_at(torch.as_tensor(s))
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.numpy(), means, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(v.numpy(), variances, rtol=1e-6)
    np.testing.assert_allclose(lw.exp().numpy(), alpha, rtol=1e-6, atol=1e-12)


def test_gmm_mixture_mean_is_signal_and_variance_is_mixture_variance(gmm_setup):
    weight, s, _ = gmm_setup
    model = GMMNoiseModel(weight, 100.0, 1100.0, min_variance=25.0)
    st = torch.as_tensor(s)
    with torch.no_grad():
        np.testing.assert_allclose(model.mean(st).numpy(), s, rtol=1e-9)
        means, variances, log_w = (t.numpy() for t in model.parameters_at(st))
        total = model.variance(st).numpy()
    a = np.exp(log_w)
    expected = (a * (variances + (means - s) ** 2)).sum(0)
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    assert np.all(total >= 25.0 - 1e-6)


def test_gmm_log_likelihood_stays_finite_for_outliers():
    """The reference adds 1e-10 in probability space (log p >= -23); ours keeps the true tail."""
    model = GMMNoiseModel.initial(0.0, 255.0, min_variance=1.0, generator=torch.Generator().manual_seed(1))
    s = torch.tensor([10.0, 10.0], dtype=torch.float64)
    x = torch.tensor([10.0, 10_000.0], dtype=torch.float64)
    ll = model.log_likelihood(x, s)
    assert torch.isfinite(ll).all()
    assert float(ll[1]) < -1000.0
    ll.sum().backward()
    assert torch.isfinite(model.weight.grad).all()


def test_gmm_works_in_float32_batches_and_keeps_shape():
    model = GMMNoiseModel.initial(0.0, 1.0, n_gaussians=2)
    x = torch.rand(2, 1, 8, 8)
    ll = model.log_likelihood(x, x.clone())
    assert ll.shape == x.shape and ll.dtype == torch.float32


def test_gmm_rejects_bad_construction():
    with pytest.raises(ValueError):
        GMMNoiseModel(np.zeros((8, 2)), 0.0, 1.0)
    with pytest.raises(ValueError):
        GMMNoiseModel(np.zeros((9, 2)), 1.0, 1.0)


def test_initial_follows_reference():
    model = GMMNoiseModel.initial(10.0, 510.0, n_gaussians=3, n_coeffs=2, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(model.weight[3:6, 1].detach().numpy(), np.log(500.0), rtol=1e-6)


@pytest.mark.parametrize("model", [
    GMMNoiseModel.initial(5.0, 300.0, 2, 3, min_variance=2.0, generator=torch.Generator().manual_seed(2)),
    GaussianNoiseModel(a=1.5, b=7.0, sigma_min=0.5, offset=100.0, scale=50.0, trainable=False),
])
def test_config_round_trip(model):
    rebuilt = noise_model_from_config(model.to_config(), model.state_dict())
    s = torch.linspace(10, 290, 30)
    x = s + 3.0
    with torch.no_grad():
        assert torch.equal(model.log_likelihood(x, s), rebuilt.log_likelihood(x, s))
    assert rebuilt.to_config() == model.to_config()


def test_gaussian_formula_and_raw_unit_parameters():
    model = GaussianNoiseModel(a=2.0, b=9.0, sigma_min=1.0, offset=100.0, scale=400.0)
    assert model.a == pytest.approx(2.0) and model.b == pytest.approx(9.0)
    s = torch.tensor([0.0, 100.0, 300.0], dtype=torch.float64)
    x = s + torch.tensor([1.0, -2.0, 5.0], dtype=torch.float64)
    var = np.maximum(2.0 * s.numpy() + 9.0, 1.0)
    expected = -0.5 * ((x - s).numpy() ** 2 / var + np.log(2 * np.pi * var))
    with torch.no_grad():
        np.testing.assert_allclose(model.log_likelihood(x, s).numpy(), expected, rtol=1e-5)
        assert float(model.variance(torch.tensor([-1000.0]))) == pytest.approx(1.0)


def test_gaussian_co_learned_recovers_linear_variance():
    """a and b are trainable by gradient descent and converge to the known variance line."""
    rng = np.random.default_rng(0)
    s = rng.uniform(100, 500, 20_000)
    x = s + rng.normal(0, np.sqrt(2.0 * (s - 100) + 9.0))
    st, xt = torch.as_tensor(s, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
    model = GaussianNoiseModel(
        a=0.0, b=float(np.var(x - s)), sigma_min=1.0, offset=float(s.mean()), scale=float(s.std())
    )
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"alpha", "beta"}
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(400):
        optimizer.zero_grad()
        loss = -model.log_likelihood(xt, st).mean()
        loss.backward()
        optimizer.step()
    assert model.a == pytest.approx(2.0, rel=0.1)
    assert model.a * 300 + model.b == pytest.approx(2.0 * 200 + 9.0, rel=0.05)


def test_gaussian_not_trainable_when_fixed():
    model = GaussianNoiseModel(a=0.0, b=4.0, trainable=False)
    assert not any(p.requires_grad for p in model.parameters())


def test_gmm_state_and_config_written_before_the_min_variance_rename_still_load():
    model = GMMNoiseModel.initial(5.0, 300.0, 2, 3, min_variance=2.0, generator=torch.Generator().manual_seed(3))
    state = {("min_sigma" if k == "min_variance" else k): v for k, v in model.state_dict().items()}
    config = {("min_sigma" if k == "min_variance" else k): v for k, v in model.to_config().items()}
    rebuilt = noise_model_from_config(config, state)
    assert float(rebuilt.min_variance) == 2.0
    torch.testing.assert_close(rebuilt.weight, model.weight)


def test_every_registered_noise_model_follows_the_protocol():
    from napari_divnoising.noise_models import NOISE_MODEL_TYPES, NoiseModelProtocol

    examples = {
        "gmm": GMMNoiseModel.initial(5.0, 300.0, 2, 3, generator=torch.Generator().manual_seed(2)),
        "gaussian": GaussianNoiseModel(a=1.5, b=7.0, sigma_min=0.5, offset=100.0, scale=50.0),
    }
    assert set(NOISE_MODEL_TYPES) == set(examples)
    for kind, cls in NOISE_MODEL_TYPES.items():
        assert cls.kind == kind
        model = cls.from_config(examples[kind].to_config())
        assert isinstance(model, NoiseModelProtocol)


def _clipped_camera(signal: float, sigma: float, floor: float, ceiling: float, n: int, seed: int = 0) -> np.ndarray:
    """Whole-number observations of ``signal`` with Gaussian noise, clipped as a camera clips them."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(signal + sigma * rng.standard_normal(n)), floor, ceiling)


@pytest.mark.parametrize("signal", [0.0, 3.0, 6.0, 40.0, 252.0])
def test_clipped_gaussian_gives_the_recorded_values_their_probabilities_and_mean(signal):
    """With a floor and a ceiling the clipped values get the probability of everything beyond the limit, and the
    model's mean is the mean of the recorded values (Monte Carlo), not the signal."""
    model = GaussianNoiseModel(a=0.0, b=4.0, sigma_min=0.5, quantum=1.0, floor=3.0, ceiling=255.0, trainable=False)
    recorded = _clipped_camera(signal, 2.0, 3.0, 255.0, 400_000)
    values, counts = np.unique(recorded, return_counts=True)
    with torch.no_grad():
        log_p = model.log_likelihood(torch.tensor(values, dtype=torch.float32),
                                     torch.full((len(values),), signal)).numpy()
        mean = float(model.mean(torch.tensor([signal]))[0])
    frequent = counts > 2000
    np.testing.assert_allclose(log_p[frequent], np.log(counts[frequent] / recorded.size), atol=0.08)
    assert np.exp(log_p).sum() == pytest.approx(1.0, abs=0.01)
    assert mean == pytest.approx(recorded.mean(), abs=0.05)
    if signal <= 3.0:
        assert mean > signal + 0.4  # clipping lifts the dark pixels' mean above the signal


def test_clipped_gaussian_learns_the_noise_that_a_plain_gaussian_misreads():
    """Fitted to clipped dark data, the clipped model recovers the true variance line; a plain density does not."""
    rng = np.random.default_rng(1)
    s = rng.uniform(0.0, 12.0, 40_000)  # dark, as fluorescence backgrounds are: a third of the values clipped
    x = np.clip(np.round(s + rng.normal(0.0, np.sqrt(1.0 * s + 1.0))), 3.0, 255.0)
    st, xt = torch.as_tensor(s, dtype=torch.float32), torch.as_tensor(x, dtype=torch.float32)
    fitted = {}
    for label, limits in (("clipped", {"quantum": 1.0, "floor": 3.0}), ("density", {})):
        model = GaussianNoiseModel(a=0.5, b=10.0, sigma_min=0.5, offset=6.0, scale=4.0, **limits)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
        for _ in range(600):
            optimizer.zero_grad()
            (-model.log_likelihood(xt, st).mean()).backward()
            optimizer.step()
        fitted[label] = model.a
    assert fitted["clipped"] == pytest.approx(1.0, rel=0.1)
    assert fitted["density"] < 0.7


def test_clipped_gaussian_stays_finite_far_from_the_signal():
    model = GaussianNoiseModel(a=0.0, b=1.0, sigma_min=1.0, quantum=1.0, floor=3.0, ceiling=255.0)
    signal = torch.tensor([500.0, -500.0, 3.0, 255.0], requires_grad=True)
    observation = torch.tensor([3.0, 255.0, 255.0, 3.0])
    log_p = model.log_likelihood(observation, signal)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and (log_p < -100).sum() >= 2
    assert torch.isfinite(signal.grad).all() and torch.isfinite(model.alpha.grad) and torch.isfinite(model.beta.grad)


def test_clipped_gaussian_config_round_trip_and_older_configs():
    model = GaussianNoiseModel(a=1.5, b=7.0, sigma_min=0.5, offset=100.0, scale=50.0, quantum=1.0, floor=3.0)
    rebuilt = noise_model_from_config(model.to_config(), model.state_dict())
    assert (rebuilt.quantum, rebuilt.floor, rebuilt.ceiling) == (1.0, 3.0, None) and not rebuilt.mean_is_signal
    s = torch.linspace(0, 50, 11)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.mean(s), model.mean(s))
    older = {k: v for k, v in model.to_config().items() if k not in ("quantum", "floor", "ceiling")}
    plain = noise_model_from_config(older, model.state_dict())
    assert plain.mean_is_signal and torch.equal(plain.mean(s), s)
    with pytest.raises(ValueError, match="ceiling"):
        GaussianNoiseModel(floor=10.0, ceiling=5.0)
