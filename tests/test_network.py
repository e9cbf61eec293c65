"""The DivNoising VAE: reference sizes, shapes, padding, no skip connections."""

from __future__ import annotations

import pytest
import torch

from napari_divnoising.network import DivNoisingVAE, crop_to, pad_to_multiple


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("depth", "expected"), [(2, 261_000), (3, 880_000)])
def test_parameter_counts_match_the_reference(depth, expected):
    # METHOD.md 2: depth 2 about 261k parameters, depth 3 about 880k.
    assert abs(n_params(DivNoisingVAE(depth=depth)) - expected) / expected < 0.02


@pytest.mark.parametrize("depth", [2, 3])
def test_shapes_of_latents_and_output(depth):
    net = DivNoisingVAE(depth=depth, start_filters=8, z_dim=16)
    x = torch.randn(3, 1, 32, 48)
    signal, mu, logvar = net(x)
    assert signal.shape == x.shape
    assert mu.shape == logvar.shape == (3, 16, 32 // 2**depth, 48 // 2**depth)
    assert net.size_multiple == 2**depth


def test_invalid_depth_is_refused():
    with pytest.raises(ValueError, match="depth"):
        DivNoisingVAE(depth=0)


def test_latent_sampling_follows_mu_and_variance():
    torch.manual_seed(0)
    mu = torch.full((20000,), 2.0)
    logvar = torch.full((20000,), torch.log(torch.tensor(0.25)).item())
    z = DivNoisingVAE.sample_latent(mu, logvar)
    assert abs(z.mean().item() - 2.0) < 0.02
    assert abs(z.std().item() - 0.5) < 0.02


def test_output_depends_on_the_input_only_through_the_latent():
    # No skip connections: the same latent decodes to the same signal whatever the input was.
    torch.manual_seed(0)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=8).eval()
    z = torch.randn(1, 8, 4, 4)
    out = net.decode(z)
    assert out.shape == (1, 1, 16, 16)
    assert torch.equal(out, net.decode(z.clone()))
    modules = list(net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in modules)


def test_receptive_field_is_finite():
    # A pixel's output must not change when a far-away input pixel changes (tiling relies on this).
    torch.manual_seed(0)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=8).eval()
    x = torch.randn(1, 1, 96, 96)
    with torch.no_grad():
        mu, _ = net.encode(x)
        y = net.decode(mu)
        x2 = x.clone()
        x2[..., 90:, 90:] += 10.0
        mu2, _ = net.encode(x2)
        y2 = net.decode(mu2)
    assert torch.equal(y[..., :40, :40], y2[..., :40, :40])
    assert not torch.equal(y[..., 80:, 80:], y2[..., 80:, 80:])


@pytest.mark.parametrize("size", [(37, 50), (5, 3), (64, 64)])
def test_pad_then_crop_restores_the_size(size):
    x = torch.randn(2, 1, *size)
    padded, original = pad_to_multiple(x, 8)
    assert padded.shape[-2] % 8 == 0 and padded.shape[-1] % 8 == 0
    assert original == size
    assert torch.equal(crop_to(padded, original), x)


def test_odd_sized_input_runs_through_the_network_after_padding():
    net = DivNoisingVAE(depth=3, start_filters=8, z_dim=8)
    x = torch.randn(1, 1, 45, 71)
    padded, original = pad_to_multiple(x, net.size_multiple)
    signal, _, _ = net(padded)
    assert crop_to(signal, original).shape == x.shape
