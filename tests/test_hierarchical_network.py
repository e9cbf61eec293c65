"""The hierarchical (ladder) network: its latent grid, KL, reach, and that prediction treats it like DivNoisingVAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.hierarchical_network import HierarchicalVAE, gaussian_kl
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.model_io import load_model, save_model
from napari_divnoising.network import DivNoisingVAE, build_network
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.prediction import generate_prior, predict
from napari_divnoising.training import TrainingConfig, train_iter


def small_net(levels: int = 3, seed: int = 0) -> HierarchicalVAE:
    torch.manual_seed(seed)
    return HierarchicalVAE(levels=levels, start_filters=4, z_dim=3).eval()


def test_latent_grid_holds_top_latents_noise_and_features():
    net = small_net()
    x = torch.randn(2, 1, 32, 48)
    mu, logvar = net.encode(x)
    # 3 top latents; noise of the 1/4 and 1/2 levels (3 * 2^2, 3 * 4^2); features (8 * 2^2, 8 * 4^2)
    assert net.z_dim == 3 + 12 + 48 + 32 + 128 == mu.shape[1]
    assert mu.shape == logvar.shape == (2, net.z_dim, 4, 6)
    noise = slice(3, 3 + 12 + 48)
    assert torch.all(mu[:, noise] == 0) and torch.all(logvar[:, noise] == 0)  # z = the noise itself
    assert torch.all(torch.isneginf(logvar[:, 3 + 60 :]))  # features: no noise at all
    assert net.decode(mu).shape == (2, 1, 32, 48)
    assert net.size_multiple == 8 and net.depth == 3


@pytest.mark.parametrize("net", [small_net(), DivNoisingVAE(depth=2, start_filters=4, z_dim=5).eval()],
                         ids=["hierarchical", "divnoising"])
def test_the_posterior_for_sampling_is_the_encoders_grid_with_the_noise_channels_std(net):
    x = torch.randn(2, 1, 32, 48)
    mu, logvar = net.encode(x)
    mu_sampling, std = net.posterior(x)
    torch.testing.assert_close(mu_sampling, mu)
    assert std.shape == (2, net.noise_channels, *mu.shape[-2:])
    torch.testing.assert_close(std, torch.exp(0.5 * logvar[:, : net.noise_channels]))


def test_features_in_the_grid_pass_through_unchanged_and_noise_changes_the_sample():
    net = small_net()
    mu, logvar = net.encode(torch.randn(1, 1, 32, 32))
    std = torch.exp(0.5 * logvar)
    eps = torch.randn((2, *mu.shape[1:]))
    z = mu + std * eps
    torch.testing.assert_close(z[:, 63:], mu[:, 63:].expand(2, -1, -1, -1))
    samples = net.decode(z)
    assert (samples[0] - samples[1]).abs().mean() > 0


def test_a_sample_is_the_same_with_and_without_its_kl_and_with_its_features_shared():
    # Prediction skips the priors of the finer levels (only the KL needs them) and passes the features of one
    # image once for all its samples (computing their share of each posterior once): the samples must not change.
    net = small_net()
    n = net.noise_channels
    mu, logvar = net.encode(torch.randn(2, 1, 32, 32))
    eps = torch.randn((3, *mu.shape[1:]))
    eps[:, n:] = 0
    for image in range(2):
        z = mu[image : image + 1] + torch.exp(0.5 * logvar[image : image + 1]) * eps  # 3 samples of one image
        signal, kl = net.decoder(z, with_kl=True)
        torch.testing.assert_close(net.decode(z), signal, rtol=0, atol=0)
        torch.testing.assert_close(net.decode(z[:, :n], mu[image : image + 1, n:]), signal, rtol=1e-5, atol=1e-6)
        assert kl > 0 and (signal[0] - signal[1]).abs().mean() > 0
    # two images with 3 samples each, their features once per image
    z = (mu[:, None] + torch.exp(0.5 * logvar[:, None]) * eps[None]).flatten(0, 1)
    torch.testing.assert_close(net.decode(z[:, :n], mu[:, n:]), net.decode(z), rtol=1e-5, atol=1e-6)
    # the inference copy's split posterior convolutions, also in channels-last memory
    inference = net.inference_decoder()
    assert inference.posterior_halves is not None and net.decoder.posterior_halves is None
    torch.testing.assert_close(inference(z[:, :n], features=mu[:, n:]), net.decode(z), rtol=1e-5, atol=1e-6)
    last = inference.to(memory_format=torch.channels_last)
    torch.testing.assert_close(last(z[:, :n].contiguous(memory_format=torch.channels_last),
                                    features=mu[:, n:].contiguous(memory_format=torch.channels_last)),
                               net.decode(z), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="equal groups"):
        net.decode(z[:4, :n], mu[:, n:].repeat(3, 1, 1, 1)[:3])


def test_kl_matches_torch_distributions():
    q = torch.distributions.Normal(torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0]))
    p = torch.distributions.Normal(torch.tensor([0.0, 0.5]), torch.tensor([1.5, 0.7]))
    ours = gaussian_kl(q.loc, 2 * q.scale.log(), p.loc, 2 * p.scale.log())
    torch.testing.assert_close(ours, torch.distributions.kl_divergence(q, p))


def test_training_sample_and_kl_equal_decoding_the_encoders_grid():
    # Training skips packing the features into the latent grid: the sample and the KL (the top level's plus
    # every finer level's) must be those of the grid.
    net = small_net()
    x = torch.randn(2, 1, 32, 48)
    eps = torch.randn((2, net.noise_channels, 4, 6))
    signal, kl, mu_top = net.signal_and_kl(x, eps)
    mu, logvar = net.encode(x)
    grid_eps = torch.cat([eps, torch.zeros((2, net.z_dim - net.noise_channels, 4, 6))], 1)
    z = torch.where(torch.isneginf(logvar), mu, mu + torch.exp(0.5 * logvar) * grid_eps)
    grid_signal, grid_kl = net.decoder(z, with_kl=True)
    top = -0.5 * torch.sum(1 + logvar[:, :3] - mu[:, :3] ** 2 - logvar[:, :3].exp())
    torch.testing.assert_close(signal, grid_signal, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl, grid_kl + top, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mu_top, mu[:, :3])
    assert grid_kl > 0 and top > 0


def test_receptive_radius_bounds_the_measured_reach():
    """Perturb one input pixel (one grid cell): outputs change near it and nowhere beyond the radius."""
    net = small_net(levels=2)
    with torch.no_grad():
        for module in net.modules():  # positive weights and biases: no dead ReLUs, every path carries a change
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.uniform_(module.weight, 0.01, 0.1)
                torch.nn.init.constant_(module.bias, 0.1)
    enc_r, dec_r = net.receptive_radius()
    m = net.size_multiple
    size, c = 24 * m, 12 * m
    with torch.no_grad():
        x = torch.ones(1, 1, size, size)
        x2 = x.clone()
        x2[..., c, c] += 1.0
        mu, logvar = net.encode(x)
        mu2, _ = net.encode(x2)
        changed = (mu2 - mu).abs().amax(1)[0] > 0
        ys, xs = torch.nonzero(changed, as_tuple=True)
        reach = max(max(abs(int(i) * m + o - c) for i in ys for o in (0, m - 1)),
                    max(abs(int(j) * m + o - c) for j in xs for o in (0, m - 1)))
        assert 0 < reach <= enc_r + m
        z = torch.where(torch.isneginf(logvar), mu, torch.ones_like(mu))
        z2 = z.clone()
        z2[..., 12, 12] += 1.0
        changed = (net.decode(z2) - net.decode(z)).abs()[0, 0] > 0
        ys, xs = torch.nonzero(changed, as_tuple=True)
        lo, hi = 12 * m, 13 * m - 1
        reach = max(lo - int(ys.min()), int(ys.max()) - hi, lo - int(xs.min()), int(xs.max()) - hi)
        assert 0 < reach <= dec_r


def test_build_network_and_settings_round_trip():
    for settings in ({"network": "divnoising", "depth": 2, "start_filters": 8, "z_dim": 5},
                     {"network": "hierarchical", "depth": 3, "start_filters": 8, "z_dim": 5}):
        net = build_network(**settings)
        assert net.settings() == settings
    assert isinstance(build_network("divnoising"), DivNoisingVAE)
    with pytest.raises(ValueError, match="unknown network"):
        build_network("resnet")


def test_config_refuses_a_single_level_hierarchy():
    with pytest.raises(DivNoisingError, match="depth must be 2 or more for a hierarchical network"):
        TrainingConfig(network="hierarchical", depth=1).validate()
    with pytest.raises(DivNoisingError, match="or the divnoising network for depth 1"):  # the CPU's choice, depth 1
        next(iter(train_iter(np.zeros((2, 64, 64), np.float32), 10.0, TrainingConfig(depth=1, max_steps=1,
                                                                                        device="cpu"))))
    TrainingConfig(depth=1).validate()  # with the network left to the device, a GPU could train it
    assert TrainingConfig(network="Hierarchical").resolved(torch.device("cpu")).network == "hierarchical"
    with pytest.raises(DivNoisingError, match="network must be one of"):
        TrainingConfig(network="unet").validate()


def _model(seed: int = 0) -> DivNoisingModel:
    net = small_net(levels=2, seed=seed)
    with torch.no_grad():
        net.decoder.head[-1].weight.mul_(40.0)  # samples that differ visibly
    return DivNoisingModel(net, GaussianNoiseModel(a=0.0, b=4.0, sigma_min=0.1), data_mean=100.0, data_std=20.0)


def test_tiled_prediction_equals_untiled():
    model = _model()
    img = np.random.default_rng(1).normal(100, 20, (150, 134)).astype(np.float32)
    untiled = predict(model, img, 4, seed=7, keep_samples=4, batch_size=2, orientations=2, offsets=2)
    tiled = predict(model, img, 4, seed=7, keep_samples=4, batch_size=3, tile_size=96, orientations=2, offsets=2)
    spread = untiled.samples.std(0).mean()
    assert spread > 1.0
    assert np.abs(tiled.samples - untiled.samples).max() < 1e-3 * spread


def test_saved_and_loaded_model_predicts_the_same(tmp_path):
    model = _model()
    save_model(model, tmp_path / "h.pt")
    loaded = load_model(tmp_path / "h.pt")
    assert isinstance(loaded.network, HierarchicalVAE) and loaded.network.settings() == model.network.settings()
    img = np.random.default_rng(2).normal(100, 20, (40, 48)).astype(np.float32)
    a = predict(model, img, 3, seed=1, keep_samples=3)
    b = predict(loaded, img, 3, seed=1, keep_samples=3)
    np.testing.assert_allclose(a.samples, b.samples, atol=1e-4)


def test_prior_samples_come_from_the_learned_priors_not_from_an_image():
    model = _model()
    images = generate_prior(model, 3, 32, seed=0)
    assert images.shape == (3, 32, 32) and np.isfinite(images).all()
    assert images.std(0).mean() > 0.1  # different samples
    assert not model.network.decoder.from_prior  # the model's own decoder is left as it was


def test_latent_samples_add_noise_to_the_leading_channels_only():
    from napari_divnoising.prediction.engine import grid_features, latent_samples

    mu, std = torch.randn(1, 5, 3, 4), torch.rand(1, 5, 3, 4)
    eps = torch.randn(2, 3, 3, 4)
    z = latent_samples(mu, std, eps)
    assert z.shape == (2, 3, 3, 4)
    torch.testing.assert_close(z, mu[:, :3] + std[:, :3] * eps)
    full = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(latent_samples(mu, std, full), mu + std * full)
    net = small_net()
    grid = torch.randn(1, net.z_dim, 3, 4)
    torch.testing.assert_close(grid_features(net, grid), grid[:, net.noise_channels :])
