"""Latent noise keyed by position, and seeds.

The standard normal noise that turns (mu, std) into latent samples is a
function of (seed, sample index, latent position) only, never of the tiling or
of how many samples are decoded together, so tiled results equal untiled ones
and any batch size gives the same samples. Two schemes:

- :class:`BlockNoise` (CPU and MPS): drawn per :data:`NOISE_BLOCK` x
  :data:`NOISE_BLOCK` latent block from a generator seeded by (seed, sample,
  block); any crop can be drawn on its own, so memory stays bounded by the tile.
- :class:`GridNoise` (CUDA): drawn per sample over the frame's whole latent
  grid (in (y, x, channel) order, i.e. channels-last memory) with one generator
  seeded by (seed, sample): one kernel per sample instead of one per block and
  sample, which would keep a GPU waiting on the host. Crops of it are slices.

The generators differ between devices (CPU Mersenne Twister, CUDA Philox), so
the same seed gives the same samples on the same kind of device.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import DivNoisingError

#: Side of the latent blocks that :class:`BlockNoise` is drawn in (latent pixels). A crop draws every block it
#: touches whole, so a block much larger than a view's latent grid beyond a multiple of it (a view shifted by
#: half a cell has one latent pixel more per side) draws several times the noise it uses; smaller blocks pay a
#: generator seeding each (``benchmarks/results/networks_prediction_change.md``).
NOISE_BLOCK = 32

#: Block coordinate marking a whole-grid draw (:class:`GridNoise`) in :func:`block_seed`.
_GRID = 2**32 - 2


def block_seed(seed: int, sample: int, by: int, bx: int) -> int:
    """A 63-bit generator seed for (seed, sample, block row, block column)."""
    state = np.random.SeedSequence([seed, sample, by, bx]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def _generator_device(device: torch.device) -> torch.device:
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


def latent_noise(
    seed: int, samples: range, rows: tuple[int, int], cols: tuple[int, int], z_dim: int, device: torch.device
) -> torch.Tensor:
    """Block-keyed standard normal noise (len(samples), z_dim, rows, cols) for a crop of the latent grid.

    Drawn per :data:`NOISE_BLOCK` block from a generator seeded by (seed, sample, block), so any crop
    of the same sample sees the same numbers whatever the tiling or batch size.
    """
    r0, r1 = rows
    c0, c1 = cols
    out = torch.empty((len(samples), z_dim, r1 - r0, c1 - c0), device=device)
    gen_device = _generator_device(device)
    gen = torch.Generator(device=gen_device)
    block = torch.empty((z_dim, NOISE_BLOCK, NOISE_BLOCK), device=gen_device)
    b = NOISE_BLOCK
    for i, k in enumerate(samples):
        for by in range(r0 // b, (r1 - 1) // b + 1):
            for bx in range(c0 // b, (c1 - 1) // b + 1):
                gen.manual_seed(block_seed(seed, k, by, bx))
                torch.randn(block.shape, generator=gen, out=block, device=gen_device)
                y0, y1 = max(r0, by * b), min(r1, (by + 1) * b)
                x0, x1 = max(c0, bx * b), min(c1, (bx + 1) * b)
                out[i, :, y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = block[
                    :, y0 - by * b : y1 - by * b, x0 - bx * b : x1 - bx * b
                ].to(device)
    return out


class BlockNoise:
    """Block-keyed latent noise of one frame (see :func:`latent_noise`); every crop is drawn on demand."""

    def __init__(self, seed: int, z_dim: int, device: torch.device):
        self.seed, self.z_dim, self.device = seed, z_dim, device

    def crop(self, samples: range, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        """Noise (len(samples), z_dim, rows, cols) of a crop of the latent grid."""
        return latent_noise(self.seed, samples, rows, cols, self.z_dim, self.device)


class GridNoise:
    """Latent noise of one frame drawn per sample over the whole latent grid (``grid`` = (lh, lw)).

    The noise of the last range of samples asked for is kept, so the tiles of one batch of samples
    share one draw.
    """

    def __init__(self, seed: int, z_dim: int, grid: tuple[int, int], device: torch.device):
        self.seed, self.z_dim, self.grid, self.device = seed, z_dim, grid, device
        self._samples: range | None = None
        self._noise: torch.Tensor | None = None

    def draw(self, samples: range) -> torch.Tensor:
        """Noise (len(samples), z_dim, lh, lw) of the whole grid for ``samples``."""
        if self._samples != samples or self._noise is None:
            self._noise = None  # free the last batch's noise before drawing the next
            gen_device = _generator_device(self.device)
            gen = torch.Generator(device=gen_device)
            noise = torch.empty((len(samples), *self.grid, self.z_dim), device=gen_device)
            for i, k in enumerate(samples):
                gen.manual_seed(block_seed(self.seed, k, _GRID, _GRID))
                torch.randn(noise.shape[1:], generator=gen, out=noise[i], device=gen_device)
            # (k, z, lh, lw) in channels-last memory, the layout the decoder's latents are built in
            self._noise, self._samples = noise.to(self.device).permute(0, 3, 1, 2), samples
        return self._noise

    def crop(self, samples: range, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        """Noise (len(samples), z_dim, rows, cols) of a crop of the latent grid."""
        return self.draw(samples)[..., rows[0] : rows[1], cols[0] : cols[1]]


def frame_noise(seed: int, z_dim: int, grid: tuple[int, int], device: torch.device) -> BlockNoise | GridNoise:
    """The latent noise of a frame on ``device``: :class:`GridNoise` on CUDA, :class:`BlockNoise` elsewhere."""
    if device.type == "cuda":
        return GridNoise(seed, z_dim, grid, device)
    return BlockNoise(seed, z_dim, device)


def frame_seed(seed: int, frame: int, n_frames: int) -> int:
    """Latent-noise seed of frame ``frame`` of a stack of ``n_frames`` predicted with ``seed`` (2-D image: ``seed``)."""
    return seed if n_frames == 1 else block_seed(seed, frame, 2**32 - 1, 2**32 - 1)


def new_seed(seed: int | None) -> int:
    """``seed`` checked (zero or positive), or a fresh random one when None."""
    if seed is None:
        return int.from_bytes(os.urandom(4), "little")
    if int(seed) < 0:
        raise DivNoisingError(f"The seed must be zero or positive (got {seed}).")
    return int(seed)
