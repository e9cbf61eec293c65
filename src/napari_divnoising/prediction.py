"""Posterior sampling with a trained model: MMSE, variance, kept samples, MAP, prior samples (METHOD.md 6).

``predict_iter(model, image, n_samples)`` encodes each frame once, draws
latents z ~ q(z|x) and decodes them in batches under ``torch.inference_mode``.
It yields, in order:

- :class:`~napari_divnoising.events.Progress` while encoding (one per tile),
  between tiles of a tiled decode, and while computing the MAP estimate;
- :class:`SampleBatch` after every batch of samples: the new samples (raw
  units) plus the running MMSE and running variance of the current frame, so a
  viewer can show progress and a user who stops early still has a valid result;
- :class:`PredictionDone` last, holding the :class:`PredictionResult`.

Stacks (a 3-D input: T, Z or S frames) are processed frame by frame; events
carry the frame index. Results have the input's shape; kept samples have shape
``(K, *input shape)`` (sample axis first, for a stack ``(K, frames, Y, X)``).

Tiling. Frames larger than ``tile_size`` are processed in overlapping tiles.
Tile sizes and overlaps are multiples of ``2**depth`` so that tiles line up
with the latent grid. The encoder is deterministic: mu and logvar are computed
tile by tile and only each tile's interior is kept, in one latent grid for the
frame. Latent noise is drawn per 64x64 latent block from a generator seeded by
(seed, sample index, block position), so it does not depend on the tiling; the
decoder then works tile by tile on latent crops with a margin and again only
each tile's interior is kept. Margins are at least the network's receptive
radius, so tiled results equal untiled ones up to float rounding: no seams and
no blending needed. Memory is bounded by the tile and batch sizes plus the
frame-sized results and latent grid.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import resolve_device
from .errors import DivNoisingError
from .events import Progress
from .io import as_image_stack
from .network import DivNoisingVAE, pad_to_multiple

#: Side of the latent blocks that latent noise is drawn in (latent pixels).
NOISE_BLOCK = 64

#: Frames up to this many pixels per side are decoded untiled on the CPU by default.
CPU_UNTILED_SIDE = 1024

#: Automatic batch sizes keep (batch x tile pixels) at or below this.
BATCH_PIXEL_BUDGET = 4 * 512 * 512


# ---------------------------------------------------------------------- events


@dataclass(frozen=True)
class SampleBatch:
    """A new batch of posterior samples of one frame and the running estimates after it.

    Attributes
    ----------
    frame, n_frames
        Index of the frame these samples belong to, and how many frames there are (1 for a 2-D image).
    samples
        The new samples, raw units, shape (b, Y, X).
    done, total
        Samples drawn so far for this frame, and how many are asked for per frame.
    mean, variance
        Running MMSE and per-pixel variance (population variance, ``ddof=0``) of this frame's samples so far.
    """

    frame: int
    n_frames: int
    samples: np.ndarray
    done: int
    total: int
    mean: np.ndarray
    variance: np.ndarray

    @property
    def fraction(self) -> float:
        """Fraction of the whole job (all frames) finished."""
        return (self.frame * self.total + self.done) / max(1, self.n_frames * self.total)


@dataclass(frozen=True)
class PredictionResult:
    """Final results, raw units, with the input's shape.

    ``samples`` holds the first ``keep_samples`` samples, shape (K, *input shape), or None when K = 0;
    ``map`` is the MAP estimate when asked for; ``n_samples`` the number of samples per frame.
    """

    mmse: np.ndarray
    variance: np.ndarray
    samples: np.ndarray | None
    map: np.ndarray | None
    n_samples: int
    seed: int


@dataclass(frozen=True)
class PredictionDone:
    """Last event of :func:`predict_iter`."""

    result: PredictionResult


@dataclass(frozen=True)
class PriorBatch:
    """A batch of prior samples (raw units, shape (b, h, w)); ``done`` of ``total`` generated."""

    images: np.ndarray
    done: int
    total: int


@dataclass(frozen=True)
class PriorDone:
    """Last event of :func:`generate_prior_iter`: all images, shape (count, h, w)."""

    images: np.ndarray


# ---------------------------------------------------------------------- geometry


def receptive_radius(network: DivNoisingVAE) -> tuple[int, int]:
    """Upper bounds (pixels) on how far the encoder and the decoder see from an output position.

    Encoder: two 3x3 convolutions and a 2x2 max-pool per level at scale 2**i, then the 3x3 heads at
    scale 2**depth. Decoder: two 3x3 convolutions per level at scale 2**(i+1), then a final 3x3
    convolution at full resolution.
    """
    depth = network.depth
    encoder = sum(3 * 2**i for i in range(depth)) + 2**depth
    decoder = sum(2 * 2 ** (i + 1) for i in range(depth)) + 1
    return encoder, decoder


def tile_margin(network: DivNoisingVAE) -> int:
    """Margin kept around each tile's interior, in latent pixels (covers both receptive radii)."""
    m = network.size_multiple
    return max(math.ceil(r / m) for r in receptive_radius(network))


def min_tile_size(network: DivNoisingVAE) -> int:
    """Smallest usable tile side in pixels: two margins plus one latent pixel of interior."""
    return (2 * tile_margin(network) + 1) * network.size_multiple


def default_tile_size(shape: tuple[int, int], network: DivNoisingVAE, device: torch.device) -> int | None:
    """Tile side for a frame of ``shape`` on ``device``, or None for untiled.

    CPU: untiled up to 1024 x 1024, tiles of 1024 beyond. GPU: from free memory, about 400 bytes per
    pixel and sample for the decoder's activations at the automatic batch size.
    """
    side = CPU_UNTILED_SIDE
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
            # Activations ~ batch * pixels * 400 B, with batch * pixels <= BATCH_PIXEL_BUDGET when tiled.
            side = 2048 if free > 8 * 2**30 else 1024 if free > 3 * 2**30 else 512
        except Exception:  # pragma: no cover - depends on the driver
            side = 1024
    m = network.size_multiple
    if max(shape) <= side:
        return None
    return side - side % m


def default_batch_size(tile_pixels: int) -> int:
    """Samples decoded together: as many as keep batch x tile pixels within :data:`BATCH_PIXEL_BUDGET` (1 to 32)."""
    return int(max(1, min(32, BATCH_PIXEL_BUDGET // max(1, tile_pixels))))


def _windows(length: int, core: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Split ``range(length)`` (latent pixels) into cores of ``core``; return (win0, win1, core0, core1)."""
    out = []
    for c0 in range(0, length, core):
        c1 = min(length, c0 + core)
        out.append((max(0, c0 - margin), min(length, c1 + margin), c0, c1))
    return out


@dataclass(frozen=True)
class _Tiling:
    """Tiles of a frame in latent pixels: (rows window + core, cols window + core) pairs."""

    rows: list[tuple[int, int, int, int]]
    cols: list[tuple[int, int, int, int]]

    @property
    def tiles(self) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
        return [(r, c) for r in self.rows for c in self.cols]


def _plan(latent_shape: tuple[int, int], tile_size: int | None, network: DivNoisingVAE) -> _Tiling:
    lh, lw = latent_shape
    m = network.size_multiple
    if tile_size is None or (tile_size // m >= lh and tile_size // m >= lw):
        return _Tiling([(0, lh, 0, lh)], [(0, lw, 0, lw)])
    margin = tile_margin(network)
    core = tile_size // m - 2 * margin
    return _Tiling(_windows(lh, core, margin), _windows(lw, core, margin))


def check_tile_size(tile_size: int | None, network: DivNoisingVAE) -> int | None:
    """Validate a user tile size (rounded down to a multiple of ``2**depth``); None means untiled/automatic."""
    if tile_size is None:
        return None
    tile = int(tile_size)
    least = min_tile_size(network)
    if tile < least:
        rf = 2 * max(receptive_radius(network)) + 1
        raise DivNoisingError(
            f"Tile size {tile} px is smaller than this model needs (receptive field about {rf} px, "
            f"tiles of at least {least} px); use a tile size of {max(256, least)} or more."
        )
    return tile - tile % network.size_multiple


# ---------------------------------------------------------------------- latent noise


def _block_seed(seed: int, sample: int, by: int, bx: int) -> int:
    state = np.random.SeedSequence([seed, sample, by, bx]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def latent_noise(
    seed: int, samples: range, rows: tuple[int, int], cols: tuple[int, int], z_dim: int, device: torch.device
) -> torch.Tensor:
    """Standard normal latent noise (len(samples), z_dim, rows, cols) for a crop of the latent grid.

    Drawn per :data:`NOISE_BLOCK` block from a generator seeded by (seed, sample, block), so any crop
    of the same sample sees the same numbers whatever the tiling or batch size.
    """
    r0, r1 = rows
    c0, c1 = cols
    out = torch.empty((len(samples), z_dim, r1 - r0, c1 - c0), device=device)
    gen_device = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    gen = torch.Generator(device=gen_device)
    block = torch.empty((z_dim, NOISE_BLOCK, NOISE_BLOCK), device=gen_device)
    b = NOISE_BLOCK
    for i, k in enumerate(samples):
        for by in range(r0 // b, (r1 - 1) // b + 1):
            for bx in range(c0 // b, (c1 - 1) // b + 1):
                gen.manual_seed(_block_seed(seed, k, by, bx))
                torch.randn(block.shape, generator=gen, out=block, device=gen_device)
                y0, y1 = max(r0, by * b), min(r1, (by + 1) * b)
                x0, x1 = max(c0, bx * b), min(c1, (bx + 1) * b)
                out[i, :, y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = block[
                    :, y0 - by * b : y1 - by * b, x0 - bx * b : x1 - bx * b
                ].to(device)
    return out


# ---------------------------------------------------------------------- running statistics


class RunningMoments:
    """Per-pixel running mean and variance over batches (Chan et al.'s parallel update, float64)."""

    def __init__(self, shape: tuple[int, ...]):
        self.count = 0
        self._mean = np.zeros(shape, np.float64)
        self._m2 = np.zeros(shape, np.float64)

    def update(self, batch: np.ndarray) -> None:
        """Add a batch of shape (b, *shape)."""
        k = batch.shape[0]
        if k == 0:
            return
        b_mean = batch.mean(0, dtype=np.float64)
        b_m2 = ((batch - b_mean) ** 2).sum(0)
        n = self.count + k
        delta = b_mean - self._mean
        self._mean += delta * (k / n)
        self._m2 += b_m2 + delta**2 * (self.count * k / n)
        self.count = n

    @property
    def mean(self) -> np.ndarray:
        return self._mean.astype(np.float32)

    @property
    def variance(self) -> np.ndarray:
        """Population variance (``ddof=0``, as ``np.var``)."""
        return (self._m2 / max(1, self.count)).astype(np.float32)


# ---------------------------------------------------------------------- model plumbing


def _oom_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [MemoryError]
    for owner in (torch, getattr(torch, "cuda", None)):
        t = getattr(owner, "OutOfMemoryError", None)
        if isinstance(t, type):
            types.append(t)
    return tuple(types)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, _oom_types()) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _oom_error(tile: int | None, batch: int, shape: tuple[int, int]) -> DivNoisingError:
    tile_now = tile if tile is not None else max(shape)
    suggestion = max(128, tile_now // 2)
    return DivNoisingError(
        f"Not enough memory to decode {batch} sample(s) of {tile_now}x{tile_now}-pixel tiles; "
        f"try --tile-size {suggestion} or a smaller --batch-size."
    )


class FoldedUpConv(nn.Module):
    """``ConvTranspose2d(k=2, s=2)`` then ``Conv2d(3x3, padding=1)`` as one low-resolution 3x3 convolution
    and a pixel shuffle.

    Both layers are linear with no activation between them, so they compose exactly: output pixel
    (2y+i, 2x+j) depends on input pixels (y+-1, x+-1) through a folded kernel. The transposed
    convolution's bias passes through the zero-padded 3x3 convolution differently at the image border,
    so biases are added as a map computed once per output size. Inference only; about 1.5x faster
    decoding on the CPU (the transposed convolutions and the 1-channel output convolution are slow).
    """

    def __init__(self, up: nn.ConvTranspose2d, conv: nn.Conv2d):
        super().__init__()
        up_w = up.weight.detach()  # (c_in, c_mid, 2, 2)
        conv_w = conv.weight.detach()  # (c_out, c_mid, 3, 3)
        c_in, c_out = up_w.shape[0], conv_w.shape[0]
        folded = torch.zeros(c_out, 2, 2, c_in, 3, 3, dtype=up_w.dtype, device=up_w.device)
        for i in range(2):
            for j in range(2):
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        oy, iy = divmod(i + dy, 2)
                        ox, ix = divmod(j + dx, 2)
                        folded[:, i, j, :, oy + 1, ox + 1] += conv_w[:, :, dy + 1, dx + 1] @ up_w[:, :, iy, ix].T
        self.weight = nn.Parameter(folded.reshape(c_out * 4, c_in, 3, 3), requires_grad=False)
        up_bias = up.bias.detach().clone() if up.bias is not None else torch.zeros(up_w.shape[1])
        self.register_buffer("up_bias", up_bias)
        self.conv = conv
        self._bias_map: tuple[tuple, torch.Tensor] | None = None

    def bias_map(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        key = (h, w, like.device, like.dtype)
        if self._bias_map is None or self._bias_map[0] != key:
            plane = self.up_bias.to(like.device)[None, :, None, None].expand(1, -1, h, w).contiguous()
            self._bias_map = (key, self.conv(plane).to(like.dtype))
        return self._bias_map[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pixel_shuffle(F.conv2d(x, self.weight.to(x.dtype), None, padding=1), 2)
        return y + self.bias_map(y.shape[-2], y.shape[-1], y)


def fold_decoder(decoder: nn.Sequential) -> nn.Sequential:
    """The decoder with every (2x2 transposed conv, 3x3 conv) pair replaced by a :class:`FoldedUpConv`."""
    layers = list(decoder)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if (
            isinstance(layer, nn.ConvTranspose2d) and tuple(layer.kernel_size) == (2, 2)
            and tuple(layer.stride) == (2, 2) and isinstance(nxt, nn.Conv2d)
            and tuple(nxt.kernel_size) == (3, 3) and tuple(nxt.padding) == (1, 1) and nxt.groups == 1
        ):
            out.append(FoldedUpConv(layer, nxt))
            i += 2
        else:
            out.append(layer)
            i += 1
    return nn.Sequential(*out)


def _prepare(model: Any, device: str | torch.device | None) -> tuple[DivNoisingVAE, torch.device]:
    """A private inference copy of the network on ``device`` (None: the model's device), channels-last.

    Copying (about 1 MB) leaves the caller's model untouched: its device, train/eval mode and memory
    format, which matters when a widget keeps training or showing it. Channels-last convolutions are
    about 2.5x faster on the CPU here (oneDNN) and use tensor cores on GPUs; the decoder's upsampling
    layers are folded (:class:`FoldedUpConv`), another 1.5x on the CPU.
    """
    dev = resolve_device(device) if device is not None else model.device
    net = copy.deepcopy(model.network).to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        net.decoder = fold_decoder(net.decoder)
    return net.to(memory_format=torch.channels_last), dev


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "float32":
        return None
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _resolve_precision(precision: str, device: torch.device) -> str:
    choices = ("auto", "float32", "bfloat16", "float16")
    if precision not in choices:
        raise DivNoisingError(f"Unknown precision {precision!r}; choose one of {', '.join(choices)}.")
    if precision == "auto":
        return "float16" if device.type == "cuda" else "float32"
    return precision


def _run(fn: Any, autocast: Any = None) -> Any:
    """Call ``fn`` under inference mode (and autocast); never held across a ``yield``, since the mode is
    thread-local and would leak into the consumer's code while the generator is suspended."""
    with torch.inference_mode():
        if autocast is None:
            return fn()
        with autocast:
            return fn()


def _encode_frame(
    net: DivNoisingVAE, x_padded: torch.Tensor, tiling: _Tiling, autocast: Any
) -> Iterator[Progress | tuple[torch.Tensor, torch.Tensor]]:
    """Yield Progress per tile (when tiled), then ``(mu, std)`` of the whole latent grid (1, z, lh, lw)."""
    m = net.size_multiple
    lh, lw = x_padded.shape[-2] // m, x_padded.shape[-1] // m
    tiles = tiling.tiles
    mu_grid, std_grid = _run(lambda: torch.empty((2, 1, net.z_dim, lh, lw), device=x_padded.device))
    for i, ((r0, r1, cr0, cr1), (c0, c1, cc0, cc1)) in enumerate(tiles):

        def encode_tile() -> None:
            crop = x_padded[..., r0 * m : r1 * m, c0 * m : c1 * m]
            mu, logvar = net.encode(crop)
            inner = (..., slice(cr0 - r0, cr1 - r0), slice(cc0 - c0, cc1 - c0))
            mu_grid[..., cr0:cr1, cc0:cc1] = mu[inner].float()
            std_grid[..., cr0:cr1, cc0:cc1] = torch.exp(0.5 * logvar[inner].float())

        _run(encode_tile, autocast)
        if len(tiles) > 1:
            yield Progress(i + 1, len(tiles), "encoding tiles")
    yield mu_grid, std_grid


def _decode_batch(
    model: Any,
    net: DivNoisingVAE,
    mu: torch.Tensor,
    std: torch.Tensor,
    samples: range,
    seed: int,
    tiling: _Tiling,
    autocast: Any,
    out: np.ndarray,
) -> Iterator[Progress]:
    """Decode ``samples`` into ``out`` (b, H_padded, W_padded), raw units; yields Progress between tiles."""
    m = net.size_multiple
    tiles = tiling.tiles
    for i, ((r0, r1, cr0, cr1), (c0, c1, cc0, cc1)) in enumerate(tiles):

        def decode_tile() -> np.ndarray:
            eps = latent_noise(seed, samples, (r0, r1), (c0, c1), net.z_dim, mu.device)
            z = mu[..., r0:r1, c0:c1] + std[..., r0:r1, c0:c1] * eps
            decoded = net.decode(z.contiguous(memory_format=torch.channels_last))
            inner = decoded[:, 0, (cr0 - r0) * m : (cr1 - r0) * m, (cc0 - c0) * m : (cc1 - c0) * m]
            return model.denormalize(inner.float()).cpu().numpy()

        out[:, cr0 * m : cr1 * m, cc0 * m : cc1 * m] = _run(decode_tile, autocast)
        if len(tiles) > 1 and i + 1 < len(tiles):
            yield Progress(i + 1, len(tiles), "decoding tiles")


def frame_seed(seed: int, frame: int, n_frames: int) -> int:
    """Latent-noise seed of frame ``frame`` of a stack of ``n_frames`` predicted with ``seed`` (a 2-D image: ``seed``)."""
    return seed if n_frames == 1 else _block_seed(seed, frame, 2**32 - 1, 2**32 - 1)


def _new_seed(seed: int | None) -> int:
    if seed is None:
        return int.from_bytes(os.urandom(4), "little")
    if int(seed) < 0:
        raise DivNoisingError(f"The seed must be zero or positive (got {seed}).")
    return int(seed)


# ---------------------------------------------------------------------- prediction


def predict_iter(
    model: Any,
    image: np.ndarray,
    n_samples: int = 100,
    *,
    batch_size: int | None = None,
    tile_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    keep_samples: int = 10,
    compute_map: bool = False,
    precision: str = "auto",
    name: str = "image",
) -> Iterator[Progress | SampleBatch | PredictionDone]:
    """Stream posterior samples of a 2-D image or a 3-D stack and their running MMSE and variance.

    Parameters
    ----------
    model
        A :class:`~napari_divnoising.model.DivNoisingModel`.
    image
        2-D image (Y, X) or stack (frames, Y, X), raw intensities. Checked with
        :func:`~napari_divnoising.io.as_image_stack` (RGB, >3-D, NaN/inf, constant data are refused).
    n_samples
        Posterior samples per frame (at least 1).
    batch_size
        Samples decoded together; default from the tile size (:func:`default_batch_size`).
    tile_size
        Tile side in pixels (rounded down to a multiple of ``2**depth``); default
        :func:`default_tile_size` (untiled up to 1024 x 1024 on the CPU).
    device
        Where to run (``"auto"``, ``"cpu"``, ``"cuda"``...); None keeps the model's device.
        The model itself is not moved or changed (a private copy runs).
    seed
        Seed of the latent noise; None draws one (reported in the result).
    keep_samples
        How many samples per frame to keep in the result (the first ones).
    compute_map
        Also compute the MAP estimate (:func:`~napari_divnoising.map_estimate.map_estimate`);
        keeps all samples of one frame in memory.
    precision
        ``"float32"``, ``"bfloat16"``, ``"float16"`` (autocast) or ``"auto"`` (float16 on CUDA, else float32).
    name
        How to call the image in messages.

    Yields
    ------
    Progress, SampleBatch, PredictionDone
        See the module docstring.
    """
    if int(n_samples) < 1:
        raise DivNoisingError(f"The number of samples must be at least 1 (got {n_samples}).")
    if batch_size is not None and int(batch_size) < 1:
        raise DivNoisingError(f"The batch size must be at least 1 (got {batch_size}).")
    n_samples = int(n_samples)
    out_shape = np.shape(image)
    stack = as_image_stack(image, name=name)
    keep = max(0, min(int(keep_samples), n_samples))
    net, dev = _prepare(model, device)
    tile = check_tile_size(tile_size, net)
    frame_shape = stack.shape[1:]
    if tile is None:
        tile = default_tile_size(frame_shape, net, dev)
    m = net.size_multiple
    padded_shape = tuple(-(-s // m) * m for s in frame_shape)
    tiling = _plan((padded_shape[0] // m, padded_shape[1] // m), tile, net)
    tile_pixels = max((r1 - r0) * (c1 - c0) for (r0, r1, _, _), (c0, c1, _, _) in tiling.tiles) * m * m
    batch = int(batch_size) if batch_size is not None else default_batch_size(tile_pixels)
    batch = min(batch, n_samples)
    if compute_map:
        _check_map_memory(n_samples, frame_shape)
    autocast = _autocast(dev, _resolve_precision(precision, dev))
    base_seed = _new_seed(seed)

    n_frames = stack.shape[0]
    mmse = np.empty(stack.shape, np.float32)
    variance = np.empty(stack.shape, np.float32)
    kept = np.empty((keep, *stack.shape), np.float32) if keep else None
    map_image = np.empty(stack.shape, np.float32) if compute_map else None
    for f in range(n_frames):
        seed_f = frame_seed(base_seed, f, n_frames)
        moments = RunningMoments(frame_shape)
        all_samples = np.empty((n_samples, *frame_shape), np.float32) if compute_map else None
        buffer = np.empty((batch, *padded_shape), np.float32)
        try:
            x_padded = _run(lambda: pad_to_multiple(model.normalize(torch.as_tensor(stack[f], device=dev)[None, None]), m)[0])
            mu = std = None
            for item in _encode_frame(net, x_padded, tiling, autocast):
                if isinstance(item, Progress):
                    yield Progress(item.done, item.total, f"frame {f + 1}/{n_frames}: {item.message}")
                else:
                    mu, std = item
            del x_padded
            done = 0
            while done < n_samples:
                k = min(batch, n_samples - done)
                out = buffer[:k]
                for p in _decode_batch(model, net, mu, std, range(done, done + k), seed_f, tiling, autocast, out):
                    yield Progress(p.done, p.total, f"frame {f + 1}/{n_frames}, samples {done + 1}-{done + k}: {p.message}")
                # a copy: the decode buffer is reused for the next batch, the event's samples must stay valid
                samples = out[:, : frame_shape[0], : frame_shape[1]].copy()
                moments.update(samples)
                if kept is not None and done < keep:
                    take = min(keep - done, k)
                    kept[done : done + take, f] = samples[:take]
                if all_samples is not None:
                    all_samples[done : done + k] = samples
                done += k
                yield SampleBatch(f, n_frames, samples, done, n_samples, moments.mean, moments.variance)
        except Exception as exc:
            if _is_oom(exc):
                raise _oom_error(tile, batch, frame_shape) from None
            raise
        mmse[f] = moments.mean
        variance[f] = moments.variance
        if all_samples is not None and map_image is not None:
            from .map_estimate import map_estimate_iter

            for item in map_estimate_iter(all_samples, device=dev):
                if isinstance(item, Progress):
                    yield Progress(item.done, item.total, f"frame {f + 1}/{n_frames}: MAP estimate")
                else:
                    map_image[f] = item
            del all_samples

    def shaped(a: np.ndarray) -> np.ndarray:
        return a.reshape(out_shape)

    result = PredictionResult(
        mmse=shaped(mmse),
        variance=shaped(variance),
        samples=None if kept is None else kept.reshape((keep, *out_shape)),
        map=None if map_image is None else shaped(map_image),
        n_samples=n_samples,
        seed=base_seed,
    )
    yield PredictionDone(result)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable, else free pages), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


def _check_map_memory(n_samples: int, frame_shape: tuple[int, ...]) -> None:
    need = n_samples * int(np.prod(frame_shape)) * 4 * 2  # the frame's samples + one chunk of windows
    available = available_memory()
    if available is not None and need > 0.8 * available:
        raise DivNoisingError(
            f"The MAP estimate keeps all {n_samples} samples of a frame in memory (about {need / 2**30:.1f} GiB), "
            f"more than is free ({available / 2**30:.1f} GiB); use fewer samples or crop the image."
        )


def predict(model: Any, image: np.ndarray, n_samples: int = 100, **kwargs: Any) -> PredictionResult:
    """Run :func:`predict_iter` to the end and return its :class:`PredictionResult` (same arguments)."""
    result = None
    for event in predict_iter(model, image, n_samples, **kwargs):
        if isinstance(event, PredictionDone):
            result = event.result
    assert result is not None
    return result


# ---------------------------------------------------------------------- prior samples


def generate_prior_iter(
    model: Any,
    count: int,
    size: int | tuple[int, int],
    *,
    batch_size: int | None = None,
    tile_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    precision: str = "auto",
) -> Iterator[Progress | PriorBatch | PriorDone]:
    """Decode z ~ N(0, I): synthetic images of the training domain, raw units (METHOD.md 6, prior samples).

    Parameters
    ----------
    count
        Number of images.
    size
        Image side, or (height, width), in pixels; any size (the network is fully convolutional).
    batch_size, tile_size, device, seed, precision
        As for :func:`predict_iter`.

    Yields
    ------
    Progress, PriorBatch, PriorDone
        Progress between tiles of large images, a :class:`PriorBatch` per batch, :class:`PriorDone` last.
    """
    if int(count) < 1:
        raise DivNoisingError(f"The number of images must be at least 1 (got {count}).")
    h, w = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise DivNoisingError(f"The image size must be at least 1x1 pixels (got {h}x{w}).")
    if batch_size is not None and int(batch_size) < 1:
        raise DivNoisingError(f"The batch size must be at least 1 (got {batch_size}).")
    count = int(count)
    net, dev = _prepare(model, device)
    tile = check_tile_size(tile_size, net)
    if tile is None:
        tile = default_tile_size((h, w), net, dev)
    m = net.size_multiple
    padded = (-(-h // m) * m, -(-w // m) * m)
    tiling = _plan((padded[0] // m, padded[1] // m), tile, net)
    tile_pixels = max((r1 - r0) * (c1 - c0) for (r0, r1, _, _), (c0, c1, _, _) in tiling.tiles) * m * m
    batch = min(count, int(batch_size) if batch_size is not None else default_batch_size(tile_pixels))
    autocast = _autocast(dev, _resolve_precision(precision, dev))
    base_seed = _new_seed(seed)
    images = np.empty((count, h, w), np.float32)
    buffer = np.empty((batch, *padded), np.float32)
    try:
        mu = torch.zeros((1, net.z_dim, padded[0] // m, padded[1] // m), device=dev)
        std = torch.ones_like(mu)
        done = 0
        while done < count:
            k = min(batch, count - done)
            out = buffer[:k]
            yield from _decode_batch(model, net, mu, std, range(done, done + k), base_seed, tiling, autocast, out)
            images[done : done + k] = out[:, :h, :w]
            done += k
            yield PriorBatch(images[done - k : done].copy(), done, count)
    except Exception as exc:
        if _is_oom(exc):
            raise _oom_error(tile, batch, (h, w)) from None
        raise
    yield PriorDone(images)


def generate_prior(model: Any, count: int, size: int | tuple[int, int], **kwargs: Any) -> np.ndarray:
    """Prior samples as an array (count, h, w), raw units; see :func:`generate_prior_iter`."""
    images = None
    for event in generate_prior_iter(model, count, size, **kwargs):
        if isinstance(event, PriorDone):
            images = event.images
    assert images is not None
    return images
