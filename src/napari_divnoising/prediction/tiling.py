"""Tiling geometry and the decoding plan: tile size, samples and tiles per decoder call.

All geometry is in latent pixels (image pixels / ``2**depth``), so tiles line
up with the latent grid. A tile is a *window* (what the network sees) around a
*core* (what is kept). Margins between core and window edge are at least the
network's receptive radius (:meth:`DivNoisingVAE.receptive_radius`), except
where the window ends at the frame border, so each core's result equals the
untiled result up to float rounding.

Windows are clipped at the frame border (smallest work, the CPU default) or,
when tiles are stacked into one decoder call, all of one size (border windows
shifted inwards, which only widens their margins).

Defaults. CPU: frames up to 1024 x 1024 untiled, one tile per call, samples per
call from :data:`BATCH_PIXEL_BUDGET`. CUDA: tiles as large as the memory
budget allows (a 4096 x 4096 frame is decoded whole on a large GPU), and as
many samples and tiles per call as fit in :func:`~.memory.gpu_pixel_budget`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import DivNoisingError
from ..network import DivNoisingVAE
from .memory import bytes_per_pixel, free_device_memory, gpu_pixel_budget

#: Frames up to this many pixels per side are decoded untiled on the CPU by default.
CPU_UNTILED_SIDE = 1024

#: Automatic batch sizes on the CPU keep (batch x tile pixels) at or below this.
BATCH_PIXEL_BUDGET = 4 * 512 * 512

#: At most this many pixels (samples x tiles x tile pixels) per decoder call on a GPU.
GPU_CALL_PIXELS = 64 * 2**20

#: Largest automatic tile side on a GPU.
GPU_MAX_TILE = 8192


def tile_margin(network: DivNoisingVAE) -> int:
    """Margin kept around each tile's core, in latent pixels (covers both receptive radii)."""
    m = network.size_multiple
    return max(math.ceil(r / m) for r in network.receptive_radius())


def min_tile_size(network: DivNoisingVAE) -> int:
    """Smallest usable tile side in pixels: two margins plus one latent pixel of core."""
    return (2 * tile_margin(network) + 1) * network.size_multiple


def check_tile_size(tile_size: int | None, network: DivNoisingVAE) -> int | None:
    """Validate a user tile size (rounded down to a multiple of ``2**depth``); None means automatic."""
    if tile_size is None:
        return None
    tile = int(tile_size)
    least = min_tile_size(network)
    if tile < least:
        rf = 2 * max(network.receptive_radius()) + 1
        raise DivNoisingError(
            f"Tile size {tile} px is smaller than this model needs (receptive field about {rf} px, "
            f"tiles of at least {least} px); use a tile size of {max(256, least)} or more."
        )
    return tile - tile % network.size_multiple


def default_tile_size(
    shape: tuple[int, int], network: DivNoisingVAE, device: torch.device, half: bool = False
) -> int | None:
    """Tile side for a frame of ``shape`` on ``device``, or None for untiled.

    CPU (and MPS): untiled up to 1024 x 1024, tiles of 1024 beyond. CUDA: the largest side (at most
    :data:`GPU_MAX_TILE`) whose encoding and one decoded sample fit in the memory budget.
    """
    side = CPU_UNTILED_SIDE
    if device.type == "cuda":
        pixels = gpu_pixel_budget(network, device, half, GPU_CALL_PIXELS)
        free = free_device_memory(device)
        if free is not None:  # the encoder works on one whole tile at full resolution
            encode, _decode = bytes_per_pixel(network, half)
            pixels = min(pixels, int(0.4 * free / encode))
        side = max(min_tile_size(network), min(GPU_MAX_TILE, math.isqrt(max(1, pixels))))
    if max(shape) <= side:
        return None
    return side - side % network.size_multiple


def default_batch_size(tile_pixels: int) -> int:
    """CPU: samples decoded together, as many as keep batch x tile pixels within :data:`BATCH_PIXEL_BUDGET` (1-32)."""
    return int(max(1, min(32, BATCH_PIXEL_BUDGET // max(1, tile_pixels))))


Span = tuple[int, int, int, int]  # (window start, window end, core start, core end), latent pixels


def _windows(length: int, core: int, margin: int, uniform: bool) -> list[Span]:
    """Split ``range(length)`` into cores of ``core``; windows add ``margin`` each side (clipped, or shifted
    inwards to one common size when ``uniform``)."""
    size = min(length, core + 2 * margin)
    out = []
    for c0 in range(0, length, core):
        c1 = min(length, c0 + core)
        w0, w1 = max(0, c0 - margin), min(length, c1 + margin)
        if uniform:
            w0 = min(w0, length - size)
            w1 = w0 + size
        out.append((w0, w1, c0, c1))
    return out


@dataclass(frozen=True)
class Tiling:
    """Tiles of a frame: row spans x column spans (latent pixels)."""

    rows: list[Span]
    cols: list[Span]

    @property
    def tiles(self) -> list[tuple[Span, Span]]:
        return [(r, c) for r in self.rows for c in self.cols]

    @property
    def window_pixels(self) -> int:
        """Latent pixels of the largest window."""
        return max(r1 - r0 for r0, r1, _, _ in self.rows) * max(c1 - c0 for c0, c1, _, _ in self.cols)

    @property
    def uniform(self) -> bool:
        """Whether all windows have the same shape (so tiles can be stacked in one call)."""
        return len({r1 - r0 for r0, r1, _, _ in self.rows}) == 1 and len({c1 - c0 for c0, c1, _, _ in self.cols}) == 1


def plan_tiles(
    latent_shape: tuple[int, int], tile_size: int | None, network: DivNoisingVAE, uniform: bool = False
) -> Tiling:
    """The tiles of a latent grid for tiles of ``tile_size`` pixels (None: one tile)."""
    lh, lw = latent_shape
    m = network.size_multiple
    if tile_size is None or (tile_size // m >= lh and tile_size // m >= lw):
        return Tiling([(0, lh, 0, lh)], [(0, lw, 0, lw)])
    margin = tile_margin(network)
    core = tile_size // m - 2 * margin
    return Tiling(_windows(lh, core, margin, uniform), _windows(lw, core, margin, uniform))


@dataclass(frozen=True)
class DecodePlan:
    """How a frame is decoded: its tiles, samples per decoder call, tiles stacked per call."""

    tiling: Tiling
    tile: int | None
    batch: int
    tiles_per_call: int
    automatic_batch: bool


def plan_decoding(
    network: DivNoisingVAE,
    frame_shape: tuple[int, int],
    n_samples: int,
    device: torch.device,
    *,
    tile_size: int | None = None,
    batch_size: int | None = None,
    tiles_per_call: int | None = None,
    half: bool = False,
) -> DecodePlan:
    """Plan the decoding of ``n_samples`` samples of a frame of ``frame_shape`` pixels on ``device``.

    Parameters
    ----------
    tile_size, batch_size, tiles_per_call
        User settings (None: automatic, see the module docstring). ``tile_size`` must have passed
        :func:`check_tile_size`.
    half
        Whether the decoder runs in 16 bits (memory estimate on a GPU).
    """
    m = network.size_multiple
    tile = tile_size if tile_size is not None else default_tile_size(frame_shape, network, device, half)
    latent = (-(-frame_shape[0] // m), -(-frame_shape[1] // m))
    gpu = device.type == "cuda"
    stacked = (tiles_per_call is None and gpu) or (tiles_per_call is not None and int(tiles_per_call) > 1)
    tiling = plan_tiles(latent, tile, network, uniform=stacked)
    n_tiles = len(tiling.tiles)
    window = tiling.window_pixels * m * m
    budget = gpu_pixel_budget(network, device, half, GPU_CALL_PIXELS) if gpu else BATCH_PIXEL_BUDGET
    if batch_size is not None:
        batch = int(batch_size)
    elif gpu:
        batch = max(1, budget // (n_tiles * window))
    else:
        batch = default_batch_size(window)
    batch = max(1, min(batch, n_samples))
    if tiles_per_call is not None:
        group = int(tiles_per_call)
    elif gpu:
        group = budget // (batch * window)
    else:
        group = 1
    group = max(1, min(group, n_tiles))
    if group > 1 and not tiling.uniform:
        tiling = plan_tiles(latent, tile, network, uniform=True)
    return DecodePlan(tiling, tile, batch, group, automatic_batch=batch_size is None)
