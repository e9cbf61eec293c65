"""The DivNoising VAE: reference sizes, shapes, padding, no skip connections."""

from __future__ import annotations

import pytest
import torch

from napari_divnoising.network import DivNoisingVAE, FoldedUpConv, crop_to, fold_decoder, pad_to_multiple


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("depth", "expected"), [(2, 261_000), (3, 880_000)])
def test_parameter_counts_match_the_reference(depth, expected):
    # docs/method.md 2: depth 2 about 261k parameters, depth 3 about 880k.
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


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_folded_decoder_equals_the_original(depth):
    torch.manual_seed(depth)
    net = DivNoisingVAE(depth=depth, start_filters=8, z_dim=6).eval()
    for module in net.decoder:  # non-zero biases, so the border handling of biases is exercised
        if getattr(module, "bias", None) is not None:
            torch.nn.init.uniform_(module.bias, -1, 1)
    folded = fold_decoder(net.decoder)
    assert sum(isinstance(m, FoldedUpConv) for m in folded) == depth
    with torch.no_grad():
        for shape in [(2, 6, 5, 7), (1, 6, 9, 4)]:
            z = torch.randn(shape)
            expected = net.decode(z)
            torch.testing.assert_close(folded(z), expected, rtol=1e-4, atol=1e-5)


def test_inference_decoder_is_a_frozen_folded_copy():
    torch.manual_seed(0)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=6)
    decoder = net.inference_decoder()
    assert sum(isinstance(m, FoldedUpConv) for m in decoder) == 2
    assert not decoder.training and not any(p.requires_grad for p in decoder.parameters())
    assert all(p.requires_grad for p in net.parameters())  # the network itself is unchanged
    folded_net = DivNoisingVAE(depth=2, start_filters=8, z_dim=6)
    folded_net.decoder = decoder
    assert folded_net.receptive_radius() == net.receptive_radius()  # the folding changes no geometry
    z = torch.randn(2, 6, 6, 5)
    with torch.no_grad():
        expected = net.decode(z)
        torch.testing.assert_close(decoder(z), expected, rtol=1e-4, atol=1e-5)
        net.decoder[0].weight.add_(1.0)  # later training does not reach the copy
        torch.testing.assert_close(decoder(z), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("depth, expected", [(1, (5, 5)), (2, (13, 13)), (3, (29, 29))])
def test_receptive_radius_from_the_layers(depth, expected):
    assert DivNoisingVAE(depth=depth, start_filters=4, z_dim=2).receptive_radius() == expected


@pytest.mark.parametrize("depth", [1, 2])
def test_receptive_radius_bounds_the_measured_reach(depth):
    """Perturb one input (latent) pixel: outputs change within the radius and nowhere beyond it."""
    torch.manual_seed(0)
    net = DivNoisingVAE(depth=depth, start_filters=4, z_dim=3).eval()
    with torch.no_grad():
        for module in net.modules():  # positive weights and no dead ReLUs, so every path carries a change
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.uniform_(module.weight, 0.01, 0.1)
                torch.nn.init.constant_(module.bias, 0.1)
    enc_r, dec_r = net.receptive_radius()
    m = net.size_multiple
    size = 16 * m
    c = size // 2
    with torch.no_grad():
        x = torch.ones(1, 1, size, size)
        x2 = x.clone()
        x2[..., c, c] += 1.0
        changed = (net.encode(x2)[0] - net.encode(x)[0]).abs().amax(1)[0] > 0
        ys, xs = torch.nonzero(changed, as_tuple=True)
        # latent pixel (i, j) covers image pixels [i*m, (i+1)*m): its reach to pixel c is at most enc_r
        reach = max(max(abs(int(i) * m + o - c) for i in ys for o in (0, m - 1)),
                    max(abs(int(j) * m + o - c) for j in xs for o in (0, m - 1)))
        assert 0 < reach <= enc_r + m
        z = torch.ones(1, 3, 16, 16)
        z2 = z.clone()
        z2[..., 8, 8] += 1.0
        changed = (net.decode(z2) - net.decode(z)).abs()[0, 0] > 0
        ys, xs = torch.nonzero(changed, as_tuple=True)
        lo, hi = 8 * m, 9 * m - 1  # the image pixels under the perturbed latent pixel
        reach = max(lo - int(ys.min()), int(ys.max()) - hi, lo - int(xs.min()), int(xs.max()) - hi)
        assert reach == dec_r


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_folded_decoder_on_a_gpu_in_channels_last_equals_the_original():
    torch.manual_seed(0)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=6).cuda().eval()
    for module in net.decoder:
        if getattr(module, "bias", None) is not None:
            torch.nn.init.uniform_(module.bias, -1, 1)
    folded = net.inference_decoder().to(memory_format=torch.channels_last)
    z = torch.randn(3, 6, 9, 7, device="cuda")
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = net.decode(z)
        got = folded(z.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
