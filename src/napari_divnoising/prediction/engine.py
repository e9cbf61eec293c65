"""Running the network for inference: the private inference copy, precision, encoding and decoding frames.

Decoding returns device tensors; nothing here copies to the host, so on a GPU
the samples, the running statistics built from them and the next batch's
work stay on the device (callers copy only what they hand out).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..device import resolve_device
from ..errors import DivNoisingError
from ..events import Progress
from ..network import DivNoisingVAE
from .noise import BlockNoise, GridNoise
from .results import copy_to_host
from .tiling import DecodePlan, Tiling


def inference_network(model: Any, device: str | torch.device | None) -> tuple[DivNoisingVAE, torch.device]:
    """A private inference copy of the model's network on ``device`` (None: the model's device), channels-last.

    Copying (about 1 MB) leaves the caller's model untouched: its device, train/eval mode and memory
    format, which matters when a widget keeps training or showing it. Channels-last convolutions are
    about 2.5x faster on the CPU here (oneDNN) and use tensor cores on GPUs; the decoder is the
    network's folded :meth:`~napari_divnoising.network.DivNoisingVAE.inference_decoder`, another 1.5x
    on the CPU.
    """
    dev = resolve_device(device) if device is not None else model.device
    net = copy.deepcopy(model.network).to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    net.decoder = net.inference_decoder()
    return net.to(memory_format=torch.channels_last), dev


PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision to run in: ``"auto"`` is float16 on CUDA, float32 elsewhere."""
    if precision not in PRECISIONS:
        raise DivNoisingError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "float16" if device.type == "cuda" else "float32"
    return precision


def autocast_for(device: torch.device, precision: str) -> Any:
    """An autocast context for a resolved precision (None for float32)."""
    if precision == "float32":
        return None
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def run(fn: Callable[[], Any], autocast: Any = None) -> Any:
    """Call ``fn`` under inference mode (and autocast); never held across a ``yield``, since the mode is
    thread-local and would leak into the consumer's code while a generator is suspended."""
    with torch.inference_mode():
        if autocast is None:
            return fn()
        with autocast:
            return fn()


def encode_frame(
    net: DivNoisingVAE, x_padded: torch.Tensor, tiling: Tiling, autocast: Any
) -> Iterator[Progress | tuple[torch.Tensor, torch.Tensor]]:
    """Yield Progress per tile (when tiled), then ``(mu, std)`` of the whole latent grid: ``mu`` (1, z_dim, lh, lw),
    ``std`` of the noise channels only (1, noise_channels, lh, lw)."""
    m = net.size_multiple
    lh, lw = x_padded.shape[-2] // m, x_padded.shape[-1] // m
    tiles = tiling.tiles
    # On a GPU the latent grid is kept channels-last, like the latent noise and the decoder's input, so that
    # z = mu + std * eps is one coalesced pass (mixed layouts make it the slowest kernel of a large frame).
    layout = torch.channels_last if x_padded.is_cuda else torch.contiguous_format
    mu_grid, std_grid = run(lambda: [torch.empty((1, c, lh, lw), device=x_padded.device, memory_format=layout)
                                     for c in (net.z_dim, net.noise_channels)])
    for i, ((r0, r1, cr0, cr1), (c0, c1, cc0, cc1)) in enumerate(tiles):

        def encode_tile() -> None:
            crop = x_padded[..., r0 * m : r1 * m, c0 * m : c1 * m]
            mu, std = net.posterior(crop)
            inner = (..., slice(cr0 - r0, cr1 - r0), slice(cc0 - c0, cc1 - c0))
            mu_grid[..., cr0:cr1, cc0:cc1] = mu[inner].float()
            std_grid[..., cr0:cr1, cc0:cc1] = std[inner].float()

        run(encode_tile, autocast)
        if len(tiles) > 1:
            yield Progress(i + 1, len(tiles), "encoding tiles")
    yield mu_grid, std_grid


def latent_samples(mu: torch.Tensor, std: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``z = mu + std * eps`` for samples ``eps`` (k, c, h, w) of the first c channels of a latent grid crop
    ``mu`` (1, z_dim, h, w), ``std`` (1, c or more, h, w); the channels after them (a hierarchical network's
    features, the same for every sample) are left out: see :func:`grid_features`."""
    n = eps.shape[1]
    return torch.addcmul(mu[:, :n], std[:, :n], eps)


def grid_features(net: DivNoisingVAE, mu: torch.Tensor) -> torch.Tensor | None:
    """The channels of a latent grid crop ``mu`` (1, z_dim, h, w) after the network's noise channels, or None
    where every channel takes noise."""
    n = net.noise_channels
    return None if n == mu.shape[1] else mu[:, n:]


def decode_latents(net: DivNoisingVAE, z: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
    """``net.decode(z)``, given the shared features (:func:`grid_features`, one per group of consecutive
    samples) where the network has them."""
    return net.decode(z) if features is None else net.decode(z, features)


def decode_samples(
    model: Any,
    net: DivNoisingVAE,
    mu: torch.Tensor,
    std: torch.Tensor,
    samples: range,
    noise: BlockNoise | GridNoise,
    plan: DecodePlan,
    autocast: Any,
) -> Iterator[Progress | torch.Tensor]:
    """Decode ``samples``; yield Progress between groups of tiles, then the samples (k, H_padded, W_padded),
    raw units, float32, on the latents' device.

    Each decoder call covers ``plan.tiles_per_call`` tiles (stacked along the batch axis; their windows
    have one shape) of all ``len(samples)`` samples; only each tile's core is kept.
    """
    m = net.size_multiple
    n = net.noise_channels
    # On a GPU the latents are built in the autocast's precision, which the decoder's first layers cast them
    # to anyway: half the memory traffic of the largest tensors of a call.
    dtype = getattr(autocast, "fast_dtype", torch.float32) if autocast is not None and mu.is_cuda else torch.float32
    shared_features = grid_features(net, mu)
    k = len(samples)
    tiles = plan.tiling.tiles
    groups = [tiles[i : i + plan.tiles_per_call] for i in range(0, len(tiles), plan.tiles_per_call)]
    lh, lw = mu.shape[-2:]
    if len(tiles) == 1:
        out = None
    else:
        out = run(lambda: torch.empty((k, lh * m, lw * m), device=mu.device))
    for gi, group in enumerate(groups):

        def decode_group() -> torch.Tensor | None:
            (r0, r1, _, _), (c0, c1, _, _) = group[0]
            if mu.is_cuda:
                z = torch.empty((len(group) * k, n, r1 - r0, c1 - c0), device=mu.device, dtype=dtype,
                                memory_format=torch.channels_last)
                for t, ((r0, r1, _, _), (c0, c1, _, _)) in enumerate(group):  # z = mu + std * eps, written once
                    eps = noise.crop(samples, (r0, r1), (c0, c1))
                    torch.addcmul(mu[:, :n, r0:r1, c0:c1], std[:, :n, r0:r1, c0:c1], eps, out=z[t * k : (t + 1) * k])
            else:
                # On a CPU, writing channels-last directly is several times slower than converting afterwards.
                latents = [latent_samples(mu[..., r0:r1, c0:c1], std[..., r0:r1, c0:c1],
                                          noise.crop(samples, (r0, r1), (c0, c1)))
                           for (r0, r1, _, _), (c0, c1, _, _) in group]
                z = (latents[0] if len(latents) == 1 else torch.cat(latents)).contiguous(
                    memory_format=torch.channels_last)
            features = None
            if shared_features is not None:  # one copy per tile, shared by its k samples
                features = torch.cat([shared_features[..., r0:r1, c0:c1]
                                      for (r0, r1, _, _), (c0, c1, _, _) in group]).to(
                    dtype, memory_format=torch.channels_last)
            decoded = decode_latents(net, z, features)[:, 0]
            if out is None:
                return model.image_from_decoded(decoded.float())
            for t, ((r0, _r1, cr0, cr1), (c0, _c1, cc0, cc1)) in enumerate(group):
                core = decoded[t * k : (t + 1) * k, (cr0 - r0) * m : (cr1 - r0) * m, (cc0 - c0) * m : (cc1 - c0) * m]
                out[:, cr0 * m : cr1 * m, cc0 * m : cc1 * m] = model.image_from_decoded(core.float())
            return None

        whole = run(decode_group, autocast)
        if whole is not None:
            yield whole
            return
        if gi + 1 < len(groups):
            yield Progress(gi + 1, len(groups), "decoding tiles")
    yield out


class HostCopies:
    """Copies of device tensors into host arrays that overlap the GPU's next work.

    On CUDA each copy runs in a worker thread: the tensor is copied on a side stream (after the work that
    produced it) into a pinned staging buffer, chunk by chunk, and from there into the array, so neither the
    transfer nor the host's side of it (page faults of a new array) keeps the GPU waiting. Elsewhere copies
    are done at once. :meth:`wait` returns when all are done (and raises the first error). Use as a context
    manager, so a stopped prediction leaves no copy running.
    """

    #: Size of the pinned staging buffer (bytes).
    STAGING_BYTES = 64 * 2**20

    def __init__(self, device: torch.device):
        self.device = device
        self._pool: ThreadPoolExecutor | None = None
        self._stream: Any = None
        self._staging: torch.Tensor | None = None
        self._pending: list[Future] = []
        if device.type == "cuda":
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="divnoising-copy")
            self._stream = torch.cuda.Stream(device)

    def copy(self, destination: np.ndarray, source: torch.Tensor) -> None:
        """Copy ``source`` into ``destination`` (same shape), now or in the background."""
        if self._pool is None or not (destination.flags.c_contiguous and destination.dtype == np.float32):
            self.wait()
            copy_to_host(destination, source)
            return
        flat_source = run(lambda: source.reshape(-1))  # a device copy only where the source is not contiguous
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        self._pending.append(self._pool.submit(self._copy, destination.reshape(-1), flat_source, ready))

    def prepare(self, *arrays: np.ndarray) -> None:
        """Touch new host arrays that copies will fill, in the background while the GPU works (on CUDA), so the
        operating system's first-touch cost of their pages is not paid after the last sample."""
        if self._pool is None:
            return
        for array in arrays:
            self._pending.append(self._pool.submit(array.fill, 0))

    def _copy(self, destination: np.ndarray, source: torch.Tensor, ready: Any) -> None:
        if self._staging is None:
            self._staging = torch.empty(self.STAGING_BYTES // 4, dtype=torch.float32, pin_memory=True)
        staging, staged = self._staging, self._staging.numpy()
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(ready)
            for start in range(0, source.numel(), staging.numel()):
                n = min(staging.numel(), source.numel() - start)
                staging[:n].copy_(source[start : start + n], non_blocking=True)
                self._stream.synchronize()
                destination[start : start + n] = staged[:n]

    def wait(self) -> None:
        """Block until every copy so far is done."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def __enter__(self) -> HostCopies:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
