"""The DivNoising loss: noise-model reconstruction term plus KL divergence, both per pixel."""

from __future__ import annotations

import contextlib

import torch

from ..hierarchical_network import HierarchicalVAE
from ..model import DivNoisingModel


def kl_per_pixel(mu: torch.Tensor, logvar: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over all latents, divided by the number of input pixels (B*H*W)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n_pixels


def loss_terms(
    model: DivNoisingModel,
    x_raw: torch.Tensor,
    eps: torch.Tensor | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
    memory_format: torch.memory_format | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (reconstruction, kl), both per pixel, for raw-unit patches ``x_raw`` of shape (B, 1, H, W).

    The network runs in normalised units (optionally under ``autocast``, with its input in
    ``memory_format``, which should match the weights'); its output is de-normalised and the
    noise-model likelihood and KL are evaluated in float32.
    """
    net = model.network
    x_norm = (x_raw - model.data_mean) / model.data_std
    if memory_format is not None:
        x_norm = x_norm.contiguous(memory_format=memory_format)
    n_pixels = x_raw.shape[0] * x_raw.shape[-2] * x_raw.shape[-1]
    if isinstance(net, HierarchicalVAE):  # its KL involves the learned priors of the finer levels
        if eps is None:
            m = net.size_multiple
            eps = torch.randn((x_raw.shape[0], net.noise_channels, x_raw.shape[-2] // m, x_raw.shape[-1] // m),
                              device=x_raw.device)
        with autocast or contextlib.nullcontext():
            signal_norm, kl_sum, _ = net.signal_and_kl(x_norm, eps)
        signal = signal_norm.float() * model.data_std + model.data_mean
        return -model.noise_model.log_likelihood(x_raw, signal).mean(), kl_sum.float() / n_pixels
    with autocast or contextlib.nullcontext():
        mu, logvar = net.encode(x_norm)
    mu, logvar = mu.float(), logvar.float()
    if eps is None:
        eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    with autocast or contextlib.nullcontext():
        signal_norm = net.decode(z)
    signal = signal_norm.float() * model.data_std + model.data_mean
    reconstruction = -model.noise_model.log_likelihood(x_raw, signal).mean()
    kl = kl_per_pixel(mu, logvar, n_pixels)
    return reconstruction, kl
