"""Memory: what is free on the host and the GPU, what a decoder call needs, and out-of-memory errors.

The per-pixel costs are upper bounds read off the network's layers (largest
input + output activation of any convolution, with head room for the
temporaries around it), so the automatic tile and batch sizes on a GPU follow
the model's width and depth.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from ..errors import DivNoisingError
from ..network import DivNoisingVAE, FoldedUpConv

#: Fraction of the free GPU memory that automatic tile and batch sizes plan to use.
GPU_MEMORY_FRACTION = 0.4


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


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes on a CUDA device (driver's view plus what torch's cache holds), or None elsewhere."""
    if device.type != "cuda":
        return None
    try:
        free, _total = torch.cuda.mem_get_info(device)
        return int(free) + int(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    except Exception:  # pragma: no cover - depends on the driver
        return None


def _peak_elements_per_pixel(layers: list[nn.Module], scale: float) -> float:
    """Largest (input + output) channels per image pixel over the convolutions of ``layers`` entered at ``scale``."""
    peak = 0.0
    for layer in layers:
        if isinstance(layer, FoldedUpConv):  # 4 x c_out channels at this scale, then a pixel shuffle
            c_out4, c_in = layer.weight.shape[:2]
            peak = max(peak, (c_in + c_out4) / scale**2)
            scale = scale / 2
        elif isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            out_scale = scale / layer.stride[0] if isinstance(layer, nn.ConvTranspose2d) else scale * layer.stride[0]
            peak = max(peak, layer.in_channels / scale**2 + layer.out_channels / out_scale**2)
            scale = out_scale
        elif isinstance(layer, nn.MaxPool2d):
            scale *= layer.stride if isinstance(layer.stride, int) else layer.stride[0]
    return peak


def bytes_per_pixel(network: DivNoisingVAE, half: bool) -> tuple[float, float]:
    """Upper bounds on the device memory (bytes per image pixel) of encoding a frame and of decoding one sample.

    ``half``: activations in 16 bits (autocast). The decoder's share includes the float32 latent noise,
    latents and output around the convolutions.
    """
    elt = 2 if half else 4
    m2 = network.size_multiple**2
    if hasattr(network, "peak_activation_elements"):  # a network that is not a plain stack of layers
        encode_elements, decode_elements = network.peak_activation_elements()
    else:
        encode_elements = _peak_elements_per_pixel(list(network.encoder), 1)
        decode_elements = _peak_elements_per_pixel(list(network.decoder), network.size_multiple)
    encode = 1.5 * elt * encode_elements + 16
    decode = 1.5 * elt * decode_elements
    decode += 4 * 4 * network.z_dim / m2 + 16  # noise, latents (+ a channels-last copy) in float32; the output
    return encode, decode


def gpu_pixel_budget(network: DivNoisingVAE, device: torch.device, half: bool, cap: int) -> int:
    """Pixels (samples x tile pixels) one decoder call may cover on ``device``: at most ``cap``, and within
    :data:`GPU_MEMORY_FRACTION` of its free memory by :func:`bytes_per_pixel`."""
    free = free_device_memory(device)
    if free is None:
        return cap
    _encode, decode = bytes_per_pixel(network, half)
    return int(max(256 * 256, min(cap, GPU_MEMORY_FRACTION * free / decode)))


def map_fits_on_device(n_samples: int, frame_shape: tuple[int, ...], device: torch.device, chunk_bytes: int) -> bool:
    """Whether all samples of a frame and the MAP estimate's working set fit in the GPU's free memory."""
    free = free_device_memory(device)
    if free is None:
        return False
    need = n_samples * int(np.prod(frame_shape)) * 4 + 2 * chunk_bytes
    return need <= 0.5 * free


def check_map_memory(n_samples: int, frame_shape: tuple[int, ...], available: int | None) -> None:
    """Refuse a MAP estimate whose samples would not fit in host memory (``available`` bytes; None: unknown)."""
    need = n_samples * int(np.prod(frame_shape)) * 4 * 2  # the frame's samples + one chunk of windows
    if available is not None and need > 0.8 * available:
        raise DivNoisingError(
            f"The MAP estimate keeps all {n_samples} samples of a frame in memory (about {need / 2**30:.1f} GiB), "
            f"more than is free ({available / 2**30:.1f} GiB); use fewer samples or crop the image."
        )


def _oom_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [MemoryError]
    for owner in (torch, getattr(torch, "cuda", None)):
        t = getattr(owner, "OutOfMemoryError", None)
        if isinstance(t, type):
            types.append(t)
    return tuple(types)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` means that memory ran out (host or device)."""
    return isinstance(exc, _oom_types()) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def release_cached(device: torch.device) -> None:
    """Give torch's cached blocks on a CUDA device back (after running out of memory)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def oom_error(tile: int | None, batch: int, shape: tuple[int, ...]) -> DivNoisingError:
    """The one-line error for running out of memory, with a tile size to try."""
    tile_now = tile if tile is not None else max(shape)
    suggestion = max(128, tile_now // 2)
    return DivNoisingError(
        f"Not enough memory to decode {batch} sample(s) of {tile_now}x{tile_now}-pixel tiles; "
        f"try --tile-size {suggestion} or a smaller --batch-size."
    )
