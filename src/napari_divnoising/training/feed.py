"""What a training run reads: batches of training patches and a fixed validation set."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from ..data import PatchSampler, TrainingData, validation_patches
from ..model import DivNoisingModel
from .config import TrainingConfig
from .loss import loss_terms
from .sampling import DevicePatchSampler


def batch_source(data: TrainingData, config: TrainingConfig, device: torch.device, rng: np.random.Generator,
                 start_step: int) -> Callable[[], torch.Tensor]:
    """A function returning the next training batch, shape (batch, 1, patch, patch), on ``device``.

    On a GPU the patches are cut on the device when the training data fit there; otherwise they are
    cut on the host (into pinned memory on a GPU, so the copy overlaps with compute). On a CPU each
    batch reuses the previous one's memory: use a batch before asking for the next.
    """
    on_cpu = device.type == "cpu"
    if not on_cpu and DevicePatchSampler.fits(data.train_regions, device):
        device_sampler = DevicePatchSampler(data.train_regions, config.patch_size, device,
                                            seed=config.seed + start_step)
        return lambda: device_sampler.sample(config.batch_size)
    host_sampler = PatchSampler(data.train_regions, config.patch_size, rng)
    batch_np = np.empty((config.batch_size, config.patch_size, config.patch_size), dtype=np.float32)
    if not on_cpu:
        batch_np = torch.empty(batch_np.shape, dtype=torch.float32).pin_memory().numpy()

    def next_batch() -> torch.Tensor:
        return torch.from_numpy(host_sampler.sample(config.batch_size, batch_np))[:, None].to(
            device, non_blocking=not on_cpu
        )

    return next_batch


class ValidationSet:
    """Fixed, seeded validation patches and latent noise: validation losses of a run are comparable.

    Parameters
    ----------
    data
        The split whose validation regions are cut.
    config
        Patch size, number of validation patches, batch size, ``beta`` and seed.
    z_dim, size_multiple
        The network's latent channels and downsampling factor (the latent grid of a patch).
    device
        Where the patches and noise live.
    """

    def __init__(self, data: TrainingData, config: TrainingConfig, z_dim: int, size_multiple: int,
                 device: torch.device):
        patches = validation_patches(data.val_regions, config.patch_size, config.n_validation_patches,
                                     seed=config.seed)
        self.x = torch.from_numpy(patches)[:, None].to(device)
        lat = config.patch_size // size_multiple
        self.eps = torch.randn(
            (len(patches), z_dim, lat, lat), generator=torch.Generator().manual_seed(config.seed + 17)
        ).to(device)
        self.batch_size = config.batch_size
        self.beta = config.beta

    def loss(self, model: DivNoisingModel, autocast: contextlib.AbstractContextManager | None,
             memory_format: torch.memory_format) -> tuple[float, float, float]:
        """(loss with the full ``beta``, reconstruction, KL) of ``model``, averaged over the set."""
        model.network.eval()
        recon_sum = kl_sum = 0.0
        n = 0
        with torch.no_grad():
            for i in range(0, len(self.x), self.batch_size):
                xb, eb = self.x[i : i + self.batch_size], self.eps[i : i + self.batch_size]
                recon, kl = loss_terms(model, xb, eb, autocast, memory_format)
                recon_sum += float(recon) * len(xb)
                kl_sum += float(kl) * len(xb)
                n += len(xb)
        model.network.train()
        recon, kl = recon_sum / n, kl_sum / n
        return recon + self.beta * kl, recon, kl
