"""Prior samples: decode z ~ N(0, I) into synthetic images of the training domain (docs/method.md 6)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..errors import DivNoisingError
from ..events import Progress, run_to_end
from ..validation import check_generate_args
from . import memory
from .engine import autocast_for, decode_samples, inference_network, resolve_precision, run
from .noise import frame_noise, new_seed
from .results import PriorBatch, PriorDone, copy_to_host
from .tiling import check_tile_size, plan_decoding


def generate_prior_iter(
    model: Any,
    count: int,
    size: int | tuple[int, int],
    *,
    batch_size: int | None = None,
    tile_size: int | None = None,
    tiles_per_call: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    precision: str = "auto",
) -> Iterator[Progress | PriorBatch | PriorDone]:
    """Decode z ~ N(0, I): synthetic images of the training domain, raw units (docs/method.md 6, prior samples).

    Parameters
    ----------
    model
        A :class:`~napari_divnoising.model.DivNoisingModel`.
    count
        Number of images.
    size
        Image side, or (height, width), in pixels; any size (the network is fully convolutional).
    batch_size, tile_size, tiles_per_call, device, seed, precision
        As for :func:`~napari_divnoising.prediction.predict_iter`.

    Yields
    ------
    Progress, PriorBatch, PriorDone
        Progress between tile groups of large images, a :class:`~.results.PriorBatch` per batch,
        :class:`~.results.PriorDone` last.
    """
    check_generate_args(**locals())
    if int(count) < 1:
        raise DivNoisingError(f"The number of images must be at least 1 (got {count}).")
    h, w = (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise DivNoisingError(f"The image size must be at least 1x1 pixels (got {h}x{w}).")
    if batch_size is not None and int(batch_size) < 1:
        raise DivNoisingError(f"The batch size must be at least 1 (got {batch_size}).")
    if tiles_per_call is not None and int(tiles_per_call) < 1:
        raise DivNoisingError(f"The number of tiles per call must be at least 1 (got {tiles_per_call}).")
    count = int(count)
    net, dev = inference_network(model, device)
    if hasattr(net.decoder, "from_prior"):  # a hierarchical network: its finer levels from their prior too
        net.decoder.from_prior = True
    tile = check_tile_size(tile_size, net)
    resolved = resolve_precision(precision, dev)
    plan = plan_decoding(net, (h, w), count, dev, tile_size=tile, batch_size=batch_size,
                         tiles_per_call=tiles_per_call, half=resolved != "float32")
    autocast = autocast_for(dev, resolved)
    base_seed = new_seed(seed)
    m = net.size_multiple
    latent = (-(-h // m), -(-w // m))
    noise = frame_noise(base_seed, net.noise_channels, latent, dev)
    images = np.empty((count, h, w), np.float32)
    batch = plan.batch
    try:
        layout = torch.channels_last if dev.type == "cuda" else torch.contiguous_format  # as encode_frame's grid
        mu = run(lambda: torch.zeros((1, net.z_dim, *latent), device=dev).contiguous(memory_format=layout))
        std = run(lambda: torch.ones_like(mu))
        done = 0
        while done < count:
            k = min(batch, count - done)
            decoded = None
            try:
                for item in decode_samples(model, net, mu, std, range(done, done + k), noise, plan, autocast):
                    if isinstance(item, Progress):
                        yield item
                    else:
                        decoded = item
            except Exception as exc:
                if memory.is_oom(exc) and plan.automatic_batch and batch > 1:
                    batch = max(1, batch // 2)  # same images with a smaller batch (noise keyed by image)
                    memory.release_cached(dev)
                    continue
                raise
            copy_to_host(images[done : done + k], decoded[:, :h, :w])
            done += k
            yield PriorBatch(images[done - k : done].copy(), done, count)
    except Exception as exc:
        if memory.is_oom(exc):
            raise memory.oom_error(plan.tile, batch, (h, w)) from None
        raise
    yield PriorDone(images)


def generate_prior(model: Any, count: int, size: int | tuple[int, int], **kwargs: Any) -> np.ndarray:
    """Prior samples as an array (count, h, w), raw units; see :func:`generate_prior_iter`."""
    return run_to_end(generate_prior_iter(model, count, size, **kwargs))
