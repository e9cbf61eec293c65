"""Posterior sampling: :func:`predict_iter` streams samples with their running MMSE and variance.

Each view of a frame (an orientation at a latent-grid offset) is encoded once;
latents z = mu + std * eps (eps from
:mod:`.noise`) are decoded in batches (:mod:`.engine`, planned by
:mod:`.tiling`). The running statistics are accumulated where the samples are
(:class:`RunningMoments`, on the GPU when predicting there); what goes to the
host is only what the caller reads or keeps: the kept samples, the final
results, and the arrays of a :class:`~.results.SampleBatch` when read.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import DivNoisingError
from ..events import Progress, run_to_end
from ..io import as_image_stack
from ..network import pad_to_multiple
from ..orientations import DEFAULT_OFFSETS, DEFAULT_ORIENTATIONS, View, plan_views, restore, views_used
from ..validation import check_predict_args
from . import memory
from .engine import (
    HostCopies,
    autocast_for,
    decode_samples,
    encode_frame,
    inference_network,
    resolve_precision,
    run,
)
from .map_estimate import default_chunk_bytes, map_estimate_iter
from .noise import frame_noise, frame_seed, new_seed
from .results import PredictionDone, PredictionResult, SampleBatch, to_host
from .tiling import DecodePlan, check_tile_size, plan_decoding


class RunningMoments:
    """Per-pixel running mean and variance over batches (Chan et al.'s parallel update, float64).

    Accumulates on ``device`` (the CPU by default; on MPS, which has no float64, on the CPU).
    :meth:`update` takes NumPy arrays or tensors; :attr:`mean` and :attr:`variance` are float32 NumPy
    arrays, :meth:`mean_tensor` and :meth:`variance_tensor` new float32 tensors on the device.
    """

    def __init__(self, shape: tuple[int, ...], device: str | torch.device = "cpu"):
        dev = torch.device(device)
        self.device = torch.device("cpu") if dev.type == "mps" else dev
        self.count = 0
        self._mean = torch.zeros(shape, dtype=torch.float64, device=self.device)
        self._m2 = torch.zeros(shape, dtype=torch.float64, device=self.device)

    def update(self, batch: np.ndarray | torch.Tensor) -> None:
        """Add a batch of shape (b, *shape)."""
        b = torch.as_tensor(batch).to(self.device)
        k = b.shape[0]
        if k == 0:
            return
        # The batch's mean and squared deviations, merged into the float64 totals. On a GPU in one pass
        # (Welford inside the reduction); on a CPU that reduction over the batch axis is not vectorised
        # and two passes are many times faster (``benchmarks/compare_commits.py``).
        if b.is_cuda:
            b_var, b_mean32 = torch.var_mean(b, dim=0, correction=0)
            b_m2 = b_var.to(torch.float64) * k
        else:
            b_mean32 = b.mean(0)
            b_m2 = ((b - b_mean32) ** 2).sum(0).to(torch.float64)
        b_mean = b_mean32.to(torch.float64)
        n = self.count + k
        delta = b_mean - self._mean
        self._mean += delta * (k / n)
        self._m2 += b_m2 + delta**2 * (self.count * k / n)
        self.count = n

    def mean_tensor(self) -> torch.Tensor:
        return self._mean.float()

    def variance_tensor(self) -> torch.Tensor:
        """Population variance (``ddof=0``, as ``np.var``)."""
        return (self._m2 / max(1, self.count)).float()

    @property
    def mean(self) -> np.ndarray:
        return to_host(self.mean_tensor())

    @property
    def variance(self) -> np.ndarray:
        """Population variance (``ddof=0``, as ``np.var``)."""
        return to_host(self.variance_tensor())


def predict_iter(
    model: Any,
    image: np.ndarray,
    n_samples: int = 100,
    *,
    batch_size: int | None = None,
    tile_size: int | None = None,
    tiles_per_call: int | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    keep_samples: int = 10,
    compute_map: bool = False,
    precision: str = "auto",
    orientations: int = DEFAULT_ORIENTATIONS,
    offsets: int = DEFAULT_OFFSETS,
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
        Samples decoded together; default from the tile size and the device (see
        :mod:`napari_divnoising.prediction.tiling`).
    tile_size
        Tile side in pixels (rounded down to a multiple of ``2**depth``); default: untiled up to
        1024 x 1024 on the CPU, as large as memory allows on a GPU.
    tiles_per_call
        Tiles stacked into one decoder call; default 1 on the CPU, as many as fit on a GPU.
    device
        Where to run (``"auto"``: CUDA if present, then MPS, then the CPU; ``"cpu"``, ``"cuda"``...);
        None keeps the model's device. The model itself is not moved or changed (a private copy runs).
    seed
        Seed of the latent noise; None draws one (reported in the result). The same seed gives the
        same samples on the same kind of device, whatever the tiling and batch sizes.
    keep_samples
        How many samples per frame to keep in the result (the first ones).
    compute_map
        Also compute the MAP estimate (:func:`~napari_divnoising.prediction.map_estimate.map_estimate`);
        keeps all samples of one frame in memory (on the GPU when they fit there, else on the host).
    precision
        ``"float32"``, ``"bfloat16"``, ``"float16"`` (autocast) or ``"auto"`` (float16 on CUDA, else float32).
    orientations
        1, 2, 4 or 8: the samples of each frame are spread evenly over this many orientations of it
        (rotations by 90 degrees, then mirror images; :mod:`napari_divnoising.orientations`), each encoded once and its
        samples turned back, which averages the network's orientation-dependent errors out of the MMSE.
        Samples come in orientation order (the first ones from the frame as it is).
    offsets
        1 or 2: with 2, each orientation is also seen shifted by half a latent cell (the frame padded at the
        top and left by ``2**(depth - 1)`` mirrored pixels, cut off again), so that the network's latent grid
        falls on other pixels, and the samples are spread over both grids. The views of the first grid come
        first; fewer samples than views use the first views only.
    name
        How to call the image in messages.

    Yields
    ------
    Progress
        While encoding (one per tile), between tile groups of a tiled decode, and during the MAP estimate.
    SampleBatch
        After every batch of samples: the new samples and the running MMSE and variance of the current
        frame (copied to the host when read), so a viewer can show progress and a user who stops early
        still has a valid result.
    PredictionDone
        Last, holding the :class:`~.results.PredictionResult`: results with the input's shape, kept samples
        with shape ``(K, *input shape)``.
    """
    check_predict_args(**locals())
    if int(n_samples) < 1:
        raise DivNoisingError(f"The number of samples must be at least 1 (got {n_samples}).")
    if batch_size is not None and int(batch_size) < 1:
        raise DivNoisingError(f"The batch size must be at least 1 (got {batch_size}).")
    if tiles_per_call is not None and int(tiles_per_call) < 1:
        raise DivNoisingError(f"The number of tiles per call must be at least 1 (got {tiles_per_call}).")
    n_samples = int(n_samples)
    out_shape = np.shape(image)
    stack = as_image_stack(image, name=name)
    keep = max(0, min(int(keep_samples), n_samples))
    net, dev = inference_network(model, device)
    tile = check_tile_size(tile_size, net)
    resolved = resolve_precision(precision, dev)
    frame_shape = stack.shape[1:]
    autocast = autocast_for(dev, resolved)
    jobs: dict[tuple[int, int], _Job] = {}

    def job_for(shape: tuple[int, int]) -> _Job:
        """The decoding job of frames of ``shape`` (a turned frame that is not square has its own plan)."""
        if shape not in jobs:
            plan = plan_decoding(net, shape, n_samples, dev, tile_size=tile, batch_size=batch_size,
                                 tiles_per_call=tiles_per_call, half=resolved != "float32")
            jobs[shape] = _Job(model, net, dev, plan, autocast, shape, plan.batch)
        return jobs[shape]

    job_for(frame_shape)  # planned before any work, so that bad settings are refused first
    map_device = None
    if compute_map:
        map_device = dev if memory.map_fits_on_device(n_samples, frame_shape, dev, default_chunk_bytes(dev)) \
            else torch.device("cpu")
        if map_device.type == "cpu":
            memory.check_map_memory(n_samples, frame_shape, memory.available_memory())
    views = plan_views(n_samples, orientations, offsets, net.size_multiple)
    base_seed = new_seed(seed)

    n_frames = stack.shape[0]
    mmse = np.empty(stack.shape, np.float32)
    variance = np.empty(stack.shape, np.float32)
    kept = np.empty((keep, *stack.shape), np.float32) if keep else None
    map_image = np.empty(stack.shape, np.float32) if compute_map else None
    with HostCopies(dev) as copies:
        copies.prepare(mmse, variance)
        for f in range(n_frames):
            label = f"frame {f + 1}/{n_frames}"
            all_samples: Any = None  # every sample of the frame, for the MAP estimate
            if map_device is not None and map_device.type != "cpu":
                all_samples = run(lambda: torch.empty((n_samples, *frame_shape), device=dev))
            elif map_device is not None:
                all_samples = np.empty((n_samples, *frame_shape), np.float32)
            moments = run(lambda: RunningMoments(frame_shape, dev))
            frame_kept = None if kept is None else kept[:, f]
            job = job_for(frame_shape)
            start = 0
            try:
                # The frame goes to the device once; its views are made there (on a GPU, turning a large frame
                # on the host for every view would cost more than encoding it).
                normalized = run(lambda: model.normalize(torch.as_tensor(stack[f], device=dev)))
                for index, (view, count) in enumerate(views):
                    job = job_for(view.shape(frame_shape))
                    view_label = label if len(views) == 1 else f"{label}, view {index + 1}/{len(views)}"
                    mu, std = yield from _encode(job, run(lambda: view.apply(normalized)), view_label)
                    noise = frame_noise(frame_seed(base_seed, f, n_frames), net.noise_channels, mu.shape[-2:], dev)
                    yield from _sample(job, mu, std, noise, (f, n_frames), (start, start + count, n_samples), view,
                                       moments, frame_kept, all_samples, copies, label)
                    start += count
            except Exception as exc:
                if memory.is_oom(exc):
                    raise memory.oom_error(job.plan.tile, job.batch, frame_shape) from None
                raise
            copies.copy(mmse[f], run(moments.mean_tensor))  # overlaps the next frame's work
            copies.copy(variance[f], run(moments.variance_tensor))
            if map_device is not None and map_image is not None:
                copies.wait()
                for item in map_estimate_iter(all_samples, device=map_device,
                                              chunk_bytes=default_chunk_bytes(map_device)):
                    if isinstance(item, Progress):
                        yield Progress(item.done, item.total, f"{label}: MAP estimate")
                    else:
                        map_image[f] = item
                del all_samples
        copies.wait()

    def shaped(a: np.ndarray) -> np.ndarray:
        return a.reshape(out_shape)

    used_orientations, used_offsets = views_used(n_samples, orientations, offsets)
    result = PredictionResult(
        mmse=shaped(mmse),
        variance=shaped(variance),
        map=None if map_image is None else shaped(map_image),
        samples=None if kept is None else kept.reshape((keep, *out_shape)),
        n_samples=n_samples,
        seed=base_seed,
        orientations=used_orientations,
        offsets=used_offsets,
    )
    yield PredictionDone(result)


@dataclass
class _Job:
    """What the frames of one shape share in one prediction; ``batch`` shrinks when memory runs out."""

    model: Any
    net: Any
    device: torch.device
    plan: DecodePlan
    autocast: Any
    frame_shape: tuple[int, int]
    batch: int


def _encode(job: _Job, frame: torch.Tensor, label: str) -> Generator[Progress, None, tuple[torch.Tensor, torch.Tensor]]:
    """Encode one normalized frame (a tensor on the job's device); yields Progress per tile and returns
    ``(mu, std)`` of its latent grid."""
    m = job.net.size_multiple
    x_padded = run(lambda: pad_to_multiple(frame[None, None], m)[0])
    latents = None
    for item in encode_frame(job.net, x_padded, job.plan.tiling, job.autocast):
        if isinstance(item, Progress):
            yield Progress(item.done, item.total, f"{label}: {item.message}")
        else:
            latents = item
    assert latents is not None
    return latents


def _sample(
    job: _Job,
    mu: torch.Tensor,
    std: torch.Tensor,
    noise: Any,
    frame: tuple[int, int],
    samples_range: tuple[int, int, int],
    view: View,
    moments: RunningMoments,
    kept: np.ndarray | None,
    all_samples: Any,
    copies: HostCopies,
    label: str,
) -> Generator[Progress | SampleBatch, None, None]:
    """Draw samples ``start`` to ``stop`` (of ``total``) of a frame encoded in ``view``, batch by batch.

    Yields Progress and SampleBatch; the samples, cut and turned back to the frame itself, are added to
    ``moments``; those with an index below ``len(kept)`` go to ``kept`` (host) and all of them to
    ``all_samples`` when given.
    """
    h, w = job.frame_shape
    done, stop, total = samples_range
    while done < stop:
        k = min(job.batch, stop - done)
        decoded = None
        try:
            for item in decode_samples(job.model, job.net, mu, std, range(done, done + k), noise, job.plan,
                                       job.autocast):
                if isinstance(item, Progress):
                    yield Progress(item.done, item.total, f"{label}, samples {done + 1}-{done + k}: {item.message}")
                else:
                    decoded = item
        except Exception as exc:
            # Automatic batch too large for the free memory: halve it and decode the same samples again
            # (the noise is keyed by sample, so the results do not depend on the batch size).
            if memory.is_oom(exc) and job.plan.automatic_batch and job.batch > 1:
                job.batch = max(1, job.batch // 2)
                memory.release_cached(job.device)
                continue
            raise
        samples = decoded[:, view.offset : h, view.offset : w]
        if view.orientation or view.offset:
            samples = run(lambda: restore(samples, view.orientation).contiguous())
        run(lambda: moments.update(samples))
        if kept is not None and done < len(kept):
            take = min(len(kept) - done, k)
            copies.copy(kept[done : done + take], samples[:take])
        if isinstance(all_samples, torch.Tensor):
            run(lambda: all_samples[done : done + k].copy_(samples))
        elif all_samples is not None:
            copies.copy(all_samples[done : done + k], samples)
        done += k
        mean, variance = run(lambda: (moments.mean_tensor(), moments.variance_tensor()))
        yield SampleBatch(frame[0], frame[1], samples, done, total, mean, variance)


def predict(model: Any, image: np.ndarray, n_samples: int = 100, **kwargs: Any) -> PredictionResult:
    """Run :func:`predict_iter` to the end and return its :class:`~.results.PredictionResult` (same arguments)."""
    return run_to_end(predict_iter(model, image, n_samples, **kwargs))
