"""The DivNoising variational autoencoder (METHOD.md section 2)."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _conv_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]


class DivNoisingVAE(nn.Module):
    """Fully convolutional VAE whose decoder predicts the clean signal.

    Encoder: ``depth`` blocks of two conv3x3+ReLU and a 2x2 max-pool (filters
    ``start_filters * 2**i``), then linear conv3x3 heads for ``mu`` and
    ``logvar`` with ``z_dim`` channels. The decoder mirrors it with
    transposed convolutions and ends in a linear conv3x3 to one channel. No
    batch norm and no skip connections (skips would let noise bypass the
    bottleneck). Inputs and outputs are in normalised units.
    """

    def __init__(self, depth: int = 2, start_filters: int = 32, z_dim: int = 64, in_channels: int = 1):
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.depth = depth
        self.start_filters = start_filters
        self.z_dim = z_dim
        enc: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            f = start_filters * 2**i
            enc += _conv_relu(c, f) + _conv_relu(f, f) + [nn.MaxPool2d(2)]
            c = f
        self.encoder = nn.Sequential(*enc)
        self.mu_head = nn.Conv2d(c, z_dim, 3, padding=1)
        self.logvar_head = nn.Conv2d(c, z_dim, 3, padding=1)
        dec: list[nn.Module] = []
        c = z_dim
        for i in reversed(range(depth)):
            f = start_filters * 2**i
            dec += _conv_relu(c, f) + _conv_relu(f, f) + [nn.ConvTranspose2d(f, f, 2, stride=2)]
            c = f
        dec.append(nn.Conv2d(c, in_channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    @property
    def size_multiple(self) -> int:
        """Height and width of network inputs must be multiples of this."""
        return 2**self.depth

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mu, logvar)`` of q(z|x) for an input of shape (B, 1, H, W)."""
        h = self.encoder(x)
        return self.mu_head(h), self.logvar_head(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents (B, z_dim, h, w) to signals (B, 1, h*2**depth, w*2**depth)."""
        return self.decoder(z)

    @staticmethod
    def sample_latent(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Reparameterised sample z = mu + exp(logvar / 2) * eps."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(signal, mu, logvar)`` for one posterior sample per input."""
        mu, logvar = self.encode(x)
        return self.decode(self.sample_latent(mu, logvar)), mu, logvar


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the last two axes of ``x`` up to a multiple; return the padded tensor and the original (H, W).

    Falls back to replicate padding where the image is too small for reflection.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the last two axes back to ``size`` (undo :func:`pad_to_multiple`)."""
    return x[..., : size[0], : size[1]]
