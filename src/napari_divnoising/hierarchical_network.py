"""A hierarchical (ladder) variational autoencoder for DivNoising (docs/method.md section 8).

Latents at several scales (half, a quarter and an eighth of the image's resolution for three levels), in
the spirit of hierarchical DivNoising (HDN, Prakash et al., ICLR 2022): a bottom-up pass computes
features of the noisy image at each scale; a top-down pass samples the coarsest latents from the
encoder's posterior and each finer level from a posterior that combines the top-down state with the
bottom-up features of that scale, while a learned prior predicts the same level from the top-down state
alone. The KL term sums KL(posterior || prior) over the levels.

To the rest of the package the network looks like :class:`~napari_divnoising.network.DivNoisingVAE`:
:meth:`HierarchicalVAE.encode` returns ``(mu, logvar)`` on one latent grid (the coarsest scale) and
:meth:`HierarchicalVAE.decode` maps ``z = mu + exp(logvar / 2) * eps`` on that grid to an image, so
prediction, tiling, orientations and the noise of each sample work unchanged. The grid's channels are

- the coarsest level's posterior (``z_dim`` channels);
- for each finer level, its standard normal noise, pixel-unshuffled onto the grid (``mu`` 0, ``logvar`` 0,
  so ``z`` is the noise itself);
- for each finer level, the bottom-up features, pixel-unshuffled onto the grid (``logvar`` minus infinity,
  so ``z`` is the features themselves).

The decoder turns each finer level's noise into a posterior sample of that level (or, in prior mode, a
prior sample), so every random number of a sample is an entry of the grid's noise.

The features are the same for every sample of an image, so prediction passes them apart, once per tile
(``decode(z, features)``, ``z`` holding the latents and the noise only): copying them into each sample's
grid would move far more memory than the samples themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 (the usual PyTorch name)
from torch import nn

#: Log-variances are squashed into (-LOGVAR_BOUND, LOGVAR_BOUND): an unbounded one overflows exp() early in
#: training, when a KL between two learned Gaussians divides by the prior's variance.
LOGVAR_BOUND = 5.0


def bounded_logvar(logvar: torch.Tensor) -> torch.Tensor:
    """``logvar`` squashed smoothly into (-LOGVAR_BOUND, LOGVAR_BOUND)."""
    return LOGVAR_BOUND * torch.tanh(logvar / LOGVAR_BOUND)


def gaussian_kl(q_mu: torch.Tensor, q_logvar: torch.Tensor, p_mu: torch.Tensor, p_logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(q_mu, exp q_logvar) || N(p_mu, exp p_logvar))."""
    return 0.5 * (p_logvar - q_logvar + (q_logvar.exp() + (q_mu - p_mu) ** 2) * torch.exp(-p_logvar) - 1)


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format ``x`` is in (channels-last or contiguous)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` with 3x3 convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x)), inplace=True))


class _Layout:
    """Channel layout of the latent grid for ``levels`` levels of ``z_dim`` latents and ``channels`` features."""

    def __init__(self, levels: int, z_dim: int, channels: int):
        self.levels, self.z_dim, self.channels = levels, z_dim, channels
        #: Unshuffle factor of each finer level (finest first): how many of its pixels one grid cell holds per side.
        self.factors = [2 ** (levels - 1 - i) for i in range(levels - 1)]
        self.noise = [z_dim * f * f for f in self.factors]
        self.context = [channels * f * f for f in self.factors]
        self.total = z_dim + sum(self.noise) + sum(self.context)

    def split(self, grid: torch.Tensor, features: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(top latents, noise of each finer level, features of each finer level), finer levels at their scale.

        ``features``: the grid's feature channels given apart (then ``grid`` holds the latents and noise only).
        """
        n = self.levels - 1
        if features is None:
            parts = torch.split(grid, [self.z_dim, *self.noise, *self.context], dim=1)
            return parts[0], self.at_scales(parts[1 : 1 + n]), self.at_scales(parts[1 + n :])
        parts = torch.split(grid, [self.z_dim, *self.noise], dim=1)
        return parts[0], self.at_scales(parts[1:]), self.at_scales(torch.split(features, self.context, dim=1))

    def at_scales(self, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One grid part per finer level (finest first), pixel-shuffled from the grid to that level's scale."""
        return [F.pixel_shuffle(p, f) if f > 1 else p for p, f in zip(parts, self.factors, strict=True)]


class HierarchicalEncoder(nn.Module):
    """Bottom-up pass: image (B, 1, H, W) to ``(mu, logvar)`` on the latent grid (see the module docstring)."""

    def __init__(self, layout: _Layout, start_filters: int):
        super().__init__()
        c = layout.channels
        self.layout = layout
        self.stem = nn.Sequential(nn.Conv2d(1, start_filters, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(start_filters, c, 3, stride=2, padding=1))
        self.levels = nn.ModuleList(
            [nn.Sequential(ResidualBlock(c))]
            + [nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), ResidualBlock(c))
               for _ in range(layout.levels - 1)]
        )
        self.posterior = nn.Conv2d(c, 2 * layout.z_dim, 3, padding=1)

    def bottom_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(mu, logvar)`` of the coarsest level and the features of the finer levels (finest first), each at its
        own scale."""
        features = []
        h = self.stem(x)
        for level in self.levels:
            h = level(h)
            features.append(h)
        mu, logvar = self.posterior(h).chunk(2, 1)
        return mu, bounded_logvar(logvar), features[:-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar, features = self.bottom_up(x)
        n, _, gh, gw = mu.shape
        noise_logvar = logvar.new_zeros((n, sum(self.layout.noise), gh, gw))
        context_logvar = logvar.new_full((n, sum(self.layout.context), gh, gw), float("-inf"))
        return self._grid_means(mu, features), torch.cat([logvar, noise_logvar, context_logvar], 1)

    def sampling_grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent grid's means and the standard deviations (float32) of its first ``noise_channels`` channels."""
        mu, logvar, features = self.bottom_up(x)
        n, _, gh, gw = mu.shape
        noise_std = logvar.new_ones((n, sum(self.layout.noise), gh, gw), dtype=torch.float32)
        return self._grid_means(mu, features), torch.cat([torch.exp(0.5 * logvar.float()), noise_std], 1)

    def _grid_means(self, mu: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """The latent grid's means: the top latents, zeros for the finer levels' noise, then the features."""
        lay = self.layout
        context = [F.pixel_unshuffle(f, k) if k > 1 else f for f, k in zip(features, lay.factors, strict=True)]
        n, _, gh, gw = mu.shape
        return torch.cat([mu, mu.new_zeros((n, sum(lay.noise), gh, gw)), *context], 1)


class HierarchicalDecoder(nn.Module):
    """Top-down pass: latent grid to image; with ``with_kl`` also the summed KL of the finer levels.

    ``from_prior``: the finer levels are sampled from the learned prior (the features in the grid are
    ignored), for samples of the training domain.
    """

    def __init__(self, layout: _Layout, start_filters: int):
        super().__init__()
        c, z = layout.channels, layout.z_dim
        self.layout = layout
        self.from_prior = False
        #: The posterior convolutions split in two (:meth:`split_posteriors`; inference copies only).
        self.posterior_halves: nn.ModuleList | None = None
        finer = layout.levels - 1
        self.top_in = nn.Conv2d(z, c, 3, padding=1)
        self.top_block = ResidualBlock(c)
        self.up = nn.ModuleList([nn.ConvTranspose2d(c, c, 2, stride=2) for _ in range(finer)])
        self.prior = nn.ModuleList([nn.Conv2d(c, 2 * z, 3, padding=1) for _ in range(finer)])
        self.posterior = nn.ModuleList([nn.Conv2d(2 * c, 2 * z, 3, padding=1) for _ in range(finer)])
        self.latent_in = nn.ModuleList([nn.Conv2d(z, c, 3, padding=1) for _ in range(finer)])
        self.blocks = nn.ModuleList([ResidualBlock(c) for _ in range(finer)])
        self.head = nn.Sequential(nn.ConvTranspose2d(c, start_filters, 2, stride=2), nn.ReLU(inplace=True),
                                  nn.Conv2d(start_filters, start_filters, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(start_filters, 1, 3, padding=1))

    def forward(self, grid: torch.Tensor, with_kl: bool = False, features: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Decode latent grids; ``features`` as for :meth:`HierarchicalVAE.decode`."""
        top, noise, context = self.layout.split(grid, features)
        return self.top_down(top, noise, context, with_kl)

    def top_down(self, top: torch.Tensor, noise: list[torch.Tensor], context: list[torch.Tensor],
                 with_kl: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The top-down pass from the coarsest latents and, per finer level (finest first, each at its own scale),
        its standard normal noise and bottom-up features (one per sample, or one per group of consecutive
        samples)."""
        h = self.top_block(self.top_in(top))
        kl = top.new_zeros((), dtype=torch.float32)
        # Coarse to fine: the finer levels are stored finest first.
        for j, i in enumerate(reversed(range(self.layout.levels - 1))):
            h = self.up[j](h)
            # Posterior samples without the KL (prediction) do not need the prior at all.
            if self.from_prior or with_kl:
                p_mu, p_logvar = self.prior[j](h).chunk(2, 1)
                p_logvar = bounded_logvar(p_logvar)
            if self.from_prior:
                z = p_mu + torch.exp(0.5 * p_logvar) * noise[i]
            else:
                q_mu, q_logvar = self._posterior(j, h, context[i]).chunk(2, 1)
                q_logvar = bounded_logvar(q_logvar)
                z = q_mu + torch.exp(0.5 * q_logvar) * noise[i]
                if with_kl:
                    kl = kl + gaussian_kl(q_mu.float(), q_logvar.float(), p_mu.float(), p_logvar.float()).sum()
            h = self.blocks[j](h + self.latent_in[j](z))
        signal = self.head(h)
        return (signal, kl) if with_kl else signal

    def _posterior(self, j: int, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The posterior convolution of finer level ``j`` on the top-down state and the bottom-up features.

        Features with fewer entries than ``h`` are shared by groups of consecutive samples (prediction): the
        features' half of the convolution (it is linear in them) is computed once per group.
        """
        conv = self.posterior[j]
        if len(context) == len(h):
            return conv(torch.cat([h, context], 1))
        if len(h) % len(context):
            raise ValueError(f"{len(h)} samples cannot share {len(context)} sets of features in equal groups")
        if self.posterior_halves is not None:
            state_conv, features_conv = self.posterior_halves[j]
            out, shared = state_conv(h), features_conv(context)
        else:
            c = h.shape[1]
            out = F.conv2d(h, conv.weight[:, :c], conv.bias, conv.stride, conv.padding)
            shared = F.conv2d(context, conv.weight[:, c:], None, conv.stride, conv.padding)
        # in the samples' memory layout, so that the broadcast addition runs at memory speed
        shared = shared.to(out.dtype).contiguous(memory_format=_layout_of(out))
        out.view(len(context), -1, *out.shape[1:]).add_(shared.unsqueeze(1))
        return out

    def split_posteriors(self) -> None:
        """Give each posterior convolution's two halves (on the top-down state, on the features) their own
        convolutions, for inference: their weights are then whole tensors in the network's memory layout
        (slices of the joint weight are neither, which makes GPU convolutions copy their inputs)."""
        halves = []
        for conv in self.posterior:
            c = conv.in_channels // 2
            state_conv = nn.Conv2d(c, conv.out_channels, 3, padding=1).to(conv.weight)
            features_conv = nn.Conv2d(conv.in_channels - c, conv.out_channels, 3, padding=1, bias=False).to(conv.weight)
            with torch.no_grad():
                state_conv.weight.copy_(conv.weight[:, :c])
                state_conv.bias.copy_(conv.bias)
                features_conv.weight.copy_(conv.weight[:, c:])
            halves.append(nn.ModuleList([state_conv, features_conv]))
        self.posterior_halves = nn.ModuleList(halves)
        for p in self.posterior_halves.parameters():
            p.requires_grad_(False)


class HierarchicalVAE(nn.Module):
    """Ladder VAE with ``levels`` latent levels at 1/2, 1/4, ... of the image's resolution.

    Parameters
    ----------
    levels
        Latent levels (at least 2); the latent grid is at 1 / 2**levels of the image's resolution.
    start_filters
        Channels of the full-resolution layers (first and last); every other layer has twice as many.
    z_dim
        Latent channels of each level.
    """

    kind = "hierarchical"

    def __init__(self, levels: int = 3, start_filters: int = 16, z_dim: int = 16):
        super().__init__()
        if levels < 2:
            raise ValueError("a hierarchical network needs at least 2 levels")
        channels = 2 * start_filters
        self.levels, self.start_filters, self.channels, self.level_z_dim = levels, start_filters, channels, z_dim
        layout = _Layout(levels, z_dim, channels)
        self.encoder = HierarchicalEncoder(layout, start_filters)
        self.decoder = HierarchicalDecoder(layout, start_filters)
        #: Channels of the latent grid (latents, noise and features of every level).
        self.z_dim = layout.total

    @property
    def noise_channels(self) -> int:
        """The leading channels of the latent grid that take standard normal noise: the top latents and the finer
        levels' noise (the features after them take none)."""
        return self.level_z_dim + sum(self.encoder.layout.noise)

    @property
    def depth(self) -> int:
        """Down-sampling levels (the latent grid's scale is ``2**depth``)."""
        return self.levels

    @property
    def size_multiple(self) -> int:
        """Height and width of network inputs must be multiples of this."""
        return 2**self.levels

    def settings(self) -> dict:
        """The training settings that build this network again (``network.build_network``)."""
        return {"network": self.kind, "depth": self.levels, "start_filters": self.start_filters,
                "z_dim": self.level_z_dim}

    def receptive_radius(self) -> tuple[int, int]:
        """Upper bounds (pixels) on how far the encoder and the decoder see (see ``DivNoisingVAE``).

        Encoder: the stem (3x3 at scale 1, then a stride-2 3x3), a residual block (two 3x3) per level and a
        stride-2 3x3 between levels, and the posterior's 3x3 at the grid's scale. Decoder: the top level's
        3x3 and residual block at the grid's scale; per finer level at scale s a prior or posterior 3x3, the
        latent's 3x3 and a residual block (4 s, the context entering there adds nothing); the head's two 3x3
        at scale 1. The 2x2 stride-2 transposed convolutions and pixel (un)shuffles add nothing.
        """
        m = self.size_multiple
        encoder = 1 + 1  # stem
        for i in range(self.levels):
            s = 2 ** (i + 1)
            if i > 0:
                encoder += s // 2  # the stride-2 3x3 entered at the previous scale
            encoder += 2 * s
        encoder += m
        decoder = m + 2 * m + sum(4 * 2 ** (i + 1) for i in range(self.levels - 1)) + 2
        return encoder, decoder

    def inference_decoder(self) -> nn.Module:
        """A frozen copy of the decoder for inference, its posterior convolutions split in two
        (:meth:`HierarchicalDecoder.split_posteriors`)."""
        decoder = copy.deepcopy(self.decoder)
        decoder.split_posteriors()
        for p in decoder.parameters():
            p.requires_grad_(False)
        return decoder.eval()

    def peak_activation_elements(self) -> tuple[float, float]:
        """Upper bounds on the activation elements per image pixel held at once by encoding and decoding."""
        c, f = self.channels, self.start_filters
        grid = self.z_dim / self.size_multiple**2
        encode = 2 * f + c / 4 + c / 2 + grid  # the stem's two maps, the features kept per level, the grid
        decode = grid + 2 * f + 1 + 3 * c / 4 + 4 * self.level_z_dim / 4
        return encode, decode

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of the latent grid for an input of shape (B, 1, H, W)."""
        return self.encoder(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, std)`` for posterior samples: the latent grid of :meth:`encode` and the standard deviations of
        its first :attr:`noise_channels` channels only (the features after them take no noise)."""
        return self.encoder.sampling_grid(x)

    def decode(self, z: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Map latent grids (B, z_dim, H / 2**levels, W / 2**levels) to signals (B, 1, H, W).

        ``features``: the grid's channels after the first :attr:`noise_channels` (the bottom-up features),
        given apart with one entry per group of B / len(features) consecutive samples that share them; ``z``
        then holds only the first :attr:`noise_channels` channels.
        """
        return self.decoder(z, features=features)

    def signal_and_kl(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One posterior sample per input and the KL of every level, summed: ``(signal, kl_sum, top_mu)``.

        ``eps``: standard normal noise of the latent grid's first :attr:`noise_channels` channels.
        """
        # The same computation as decoding the encoder's latent grid, without packing the features into the grid
        # and unpacking them again (a large share of a training step; benchmarks/results/ablation.md).
        mu, logvar, features = self.encoder.bottom_up(x)
        layout, top = self.encoder.layout, self.level_z_dim
        z_top = mu + torch.exp(0.5 * logvar) * eps[:, :top]
        noise = layout.at_scales(torch.split(eps[:, top : top + sum(layout.noise)], layout.noise, dim=1))
        signal, kl = self.decoder.top_down(z_top, noise, features, with_kl=True)
        mu_top, logvar_top = mu.float(), logvar.float()
        kl = kl - 0.5 * torch.sum(1 + logvar_top - mu_top.pow(2) - logvar_top.exp())
        return signal, kl, mu_top

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(signal, mu, logvar)`` for one posterior sample per input (as ``DivNoisingVAE``)."""
        mu, logvar = self.encode(x)
        return self.decode(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)), mu, logvar
