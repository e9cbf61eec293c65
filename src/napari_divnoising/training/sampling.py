"""Training patches cut on the accelerator, so that a GPU step needs no host work or host-to-device copy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: The training data may take at most this fraction of the device's free memory to live there.
MAX_DEVICE_DATA_FRACTION = 0.25


def _symmetry_grids(patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source row and column of every output pixel for the 8 symmetries of :func:`data.augment`."""
    from ..data import augment

    rows, cols = np.meshgrid(np.arange(patch_size), np.arange(patch_size), indexing="ij")
    grid_rows = np.stack([augment(rows, s) for s in range(8)])
    grid_cols = np.stack([augment(cols, s) for s in range(8)])
    return np.ascontiguousarray(grid_rows), np.ascontiguousarray(grid_cols)


class DevicePatchSampler:
    """Random, randomly augmented square patches from 2-D regions, cut on ``device`` by one gather.

    Draws from the same distribution as :class:`~napari_divnoising.data.PatchSampler`
    (every position of every region equally likely, one of the 8 symmetries of the
    square), with a seeded torch generator on the device: no host synchronisation.
    """

    def __init__(self, regions: Sequence[np.ndarray], patch_size: int, device: torch.device, seed: int):
        p = int(patch_size)
        self.patch_size = p
        self.device = device
        flat = [torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32)).reshape(-1) for r in regions]
        sizes = [f.numel() for f in flat]
        self.data = torch.cat(flat).to(device)
        self.offsets = torch.tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]), dtype=torch.long, device=device)
        self.heights = torch.tensor([r.shape[0] for r in regions], dtype=torch.long, device=device)
        self.widths = torch.tensor([r.shape[1] for r in regions], dtype=torch.long, device=device)
        counts = (self.heights - p + 1).clamp(min=0) * (self.widths - p + 1).clamp(min=0)
        self.probabilities = counts.double() / counts.sum().double()
        rows, cols = _symmetry_grids(p)
        self.grid_rows = torch.from_numpy(rows).to(device)
        self.grid_cols = torch.from_numpy(cols).to(device)
        self.generator = torch.Generator(device=device).manual_seed(int(seed))

    @staticmethod
    def fits(regions: Sequence[np.ndarray], device: torch.device) -> bool:
        """True when the regions take at most :data:`MAX_DEVICE_DATA_FRACTION` of the device's free memory."""
        need = 4 * sum(int(r.size) for r in regions)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return need <= MAX_DEVICE_DATA_FRACTION * free
        return device.type == "mps" and need <= 2 * 1024**3

    def sample(self, batch_size: int) -> torch.Tensor:
        """A float32 tensor (batch_size, 1, patch_size, patch_size) of raw-unit patches on the device."""
        g, p = self.generator, self.patch_size
        which = torch.multinomial(self.probabilities, batch_size, replacement=True, generator=g)
        heights, widths = self.heights[which], self.widths[which]
        ys = (torch.rand(batch_size, generator=g, device=self.device) * (heights - p + 1)).long()
        xs = (torch.rand(batch_size, generator=g, device=self.device) * (widths - p + 1)).long()
        ys = torch.minimum(ys, heights - p)
        xs = torch.minimum(xs, widths - p)
        symmetry = torch.randint(0, 8, (batch_size,), generator=g, device=self.device)
        rows = ys[:, None, None] + self.grid_rows[symmetry]
        cols = xs[:, None, None] + self.grid_cols[symmetry]
        index = self.offsets[which][:, None, None] + rows * widths[:, None, None] + cols
        return self.data[index][:, None]
