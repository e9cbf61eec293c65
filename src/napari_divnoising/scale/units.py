"""One unit of work: predict a frame (or a region of a large frame) and write it into the results store.

:func:`run_unit` is what a Dask worker (or the single-process loop) runs. It
loads the model once per process (cached by path and fingerprint), reads only
the unit's pixels (plus a margin for regions), predicts, writes every output
and the pyramid levels of the unit, and only then writes the unit's completion
marker. A process killed half-way leaves the marker unset, so the unit is
computed again on the next run and its half-written chunks are overwritten.

Whole frames go through :func:`~napari_divnoising.prediction.predict_iter` with
the frame's seed (:func:`~napari_divnoising.prediction.frame_seed`), so each
frame equals the same frame of an in-memory prediction of the whole stack.
Regions of frames larger than the region size are predicted from the region
plus a margin of at least the network's receptive radius, with latent noise
drawn at the region's global latent position
(:func:`~napari_divnoising.prediction.latent_noise`): the same property that
makes tiled prediction seamless, so regions agree with whole-frame prediction
up to float rounding. The MAP estimate of a region uses the region's samples.
"""

from __future__ import annotations

import copy
import os
import resource
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DivNoisingError
from .ome import DONE_ARRAY, InputSource, downsample2, region_bounds, samples_axis_position


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to compute any unit of one results store (small and picklable)."""

    model_path: str
    model_sha256: str
    source: InputSource
    out: str
    store_id: str
    n_samples: int
    keep_samples: int
    compute_map: bool
    seed: int
    batch_size: int | None
    tile_size: int | None
    precision: str
    device: str
    clip_min: float | None
    out_dtype: str
    grid: tuple[int, int, int]
    levels: int
    torch_threads: int | None = None


# ---------------------------------------------------------------------- per-process caches

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str, str], Any] = {}
_STORES: dict[tuple[str, str], Any] = {}
_INPUTS: dict[str, Any] = {}
#: How many times this process loaded a model (a worker loads each model once).
MODEL_LOADS = 0


def model_loads() -> int:
    """Number of model loads in this process (for tests and benchmarks: one per worker and model)."""
    return MODEL_LOADS


def _model(job: Job) -> Any:
    global MODEL_LOADS
    key = (job.model_path, job.model_sha256, job.device)
    with _LOCK:
        if key not in _MODELS:
            from ..device import resolve_device
            from ..model_io import load_model
            from .ome import file_sha256

            if not Path(job.model_path).exists():
                raise DivNoisingError(f"Model file not found on this worker: {job.model_path}")
            if file_sha256(job.model_path) != job.model_sha256:
                raise DivNoisingError(f"{job.model_path} on this worker is not the model the job was started with.")
            _MODELS[key] = load_model(job.model_path, device=resolve_device(job.device))
            MODEL_LOADS += 1
        return _MODELS[key]


def _store(job: Job) -> Any:
    import zarr

    key = (job.out, job.store_id)
    with _LOCK:
        if key not in _STORES:
            _STORES.clear()
            _STORES[key] = zarr.open_group(job.out, mode="r+")
        return _STORES[key]


def _input(job: Job) -> Any:
    key = job.source.path + "::" + job.source.array_path
    with _LOCK:
        if key not in _INPUTS:
            _INPUTS.clear()
            _INPUTS[key] = job.source.open()
        return _INPUTS[key]


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (bytes): Linux ``VmHWM``, else ``getrusage``."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# ---------------------------------------------------------------------- prediction of one unit


def _predict_frame(model: Any, job: Job, image: np.ndarray, seed: int) -> dict[str, np.ndarray | None]:
    from ..prediction import PredictionDone, predict_iter

    result = None
    for event in predict_iter(
        model, image, job.n_samples, batch_size=job.batch_size, tile_size=job.tile_size, seed=seed,
        keep_samples=job.keep_samples, compute_map=job.compute_map, precision=job.precision,
        # The frame as it is: a region must give what the whole frame gives there, and the latent noise
        # of a turned or shifted frame is laid out on that view's grid.
        orientations=1, offsets=1,
    ):
        if isinstance(event, PredictionDone):
            result = event.result
    assert result is not None
    return {"mmse": result.mmse, "variance": result.variance, "map": result.map, "samples": result.samples}


def _inference_net(model: Any) -> Any:
    """A private, folded, channels-last inference copy of the network (cached on the model object)."""
    import torch

    net = getattr(model, "_scale_inference_net", None)
    if net is None:
        net = copy.deepcopy(model.network).to(model.device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        net.decoder = net.inference_decoder()
        net = net.to(memory_format=torch.channels_last)
        model._scale_inference_net = net
    return net


def _predict_region(
    model: Any, job: Job, array: Any, frame: int, rows: tuple[int, int], cols: tuple[int, int], seed: int
) -> dict[str, np.ndarray | None]:
    """Samples of one region of a frame, from the region plus a margin; latent noise at global positions."""
    import torch

    from ..network import pad_to_multiple
    from ..prediction import RunningMoments, default_batch_size, latent_noise, tile_margin
    from ..prediction.engine import decode_latents, grid_features, latent_samples

    net = _inference_net(model)
    dev = model.device
    m = net.size_multiple
    fh, fw = job.source.frame_shape
    # The decoder needs latents up to one margin outside the region, and each of those latents needs
    # the encoder's view up to one margin further: read the region plus two margins.
    margin = tile_margin(net) * m
    wy0, wx0 = max(0, rows[0] - 2 * margin), max(0, cols[0] - 2 * margin)
    wy1, wx1 = min(fh, rows[1] + 2 * margin), min(fw, cols[1] + 2 * margin)
    # Latent crop decoded: the region plus one margin (latent pixels, global coordinates).
    dy0, dx0 = max(0, rows[0] - margin) // m, max(0, cols[0] - margin) // m
    dy1, dx1 = -(-min(fh, rows[1] + margin) // m), -(-min(fw, cols[1] + margin) // m)
    window = job.source.read(array, frame, (wy0, wy1), (wx0, wx1))
    if not np.isfinite(window).all():
        raise DivNoisingError(
            f"{job.source.path}: frame {frame} contains NaN or infinite values; clean the data first."
        )
    precision = job.precision
    if precision == "auto":
        precision = "float16" if dev.type == "cuda" else "float32"
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)

    def run(fn: Any) -> Any:
        with torch.inference_mode():
            if dtype is None:
                return fn()
            with torch.autocast(device_type=dev.type, dtype=dtype):
                return fn()

    def encode() -> tuple[Any, Any]:
        x = pad_to_multiple(model.normalize(torch.as_tensor(window, device=dev)[None, None]), m)[0]
        mu, std = net.posterior(x.contiguous(memory_format=torch.channels_last))
        return mu.float(), std.float()

    mu, std = run(encode)
    crop = (..., slice(dy0 - wy0 // m, dy1 - wy0 // m), slice(dx0 - wx0 // m, dx1 - wx0 // m))
    mu, std = mu[crop], std[crop]
    lr, lc = (dy0, dy1), (dx0, dx1)
    iy, ix = slice(rows[0] - dy0 * m, rows[1] - dy0 * m), slice(cols[0] - dx0 * m, cols[1] - dx0 * m)
    features = grid_features(net, mu)  # the region's shared features, the same for every batch
    if features is not None:
        features = features.contiguous(memory_format=torch.channels_last)
    n, keep = job.n_samples, job.keep_samples
    batch = min(n, job.batch_size or default_batch_size(mu.shape[-2] * mu.shape[-1] * m * m))
    shape = (rows[1] - rows[0], cols[1] - cols[0])
    moments = RunningMoments(shape)
    kept = np.empty((keep, *shape), np.float32) if keep else None
    every = np.empty((n, *shape), np.float32) if job.compute_map else None
    done = 0
    while done < n:
        k = min(batch, n - done)

        def decode(done: int = done, k: int = k) -> np.ndarray:
            eps = latent_noise(seed, range(done, done + k), lr, lc, net.noise_channels, dev)
            z = latent_samples(mu, std, eps).contiguous(memory_format=torch.channels_last)
            out = decode_latents(net, z, features)[:, 0, iy, ix]
            return model.image_from_decoded(out.float()).cpu().numpy()

        samples = run(decode)
        moments.update(samples)
        if kept is not None and done < keep:
            take = min(keep - done, k)
            kept[done : done + take] = samples[:take]
        if every is not None:
            every[done : done + k] = samples
        done += k
    map_image = None
    if every is not None:
        from ..map_estimate import map_estimate

        map_image = map_estimate(every, device=dev)
    return {"mmse": moments.mean, "variance": moments.variance, "map": map_image, "samples": kept}


def _cast(job: Job, data: np.ndarray) -> np.ndarray:
    from ..export import cast_output

    return cast_output(data, job.out_dtype, job.clip_min)


def compute_unit(job: Job, frame: int, ry: int, rx: int) -> dict[str, np.ndarray | None]:
    """Predict one unit; returns its outputs (raw units, float32), region-shaped."""
    from ..prediction import frame_seed

    model = _model(job)
    array = _input(job)
    rows, cols = region_bounds(job.source.frame_shape, job.grid, ry, rx)
    seed = frame_seed(job.seed, frame, job.source.n_frames)
    ny, nx, _ = job.grid
    if ny == nx == 1:
        image = job.source.read(array, frame, rows, cols)
        finite = np.isfinite(image)
        if not finite.all():
            raise DivNoisingError(
                f"{job.source.path}: frame {frame} contains NaN or infinite values; clean the data first."
            )
        if float(image.max()) != float(image.min()):
            return _predict_frame(model, job, image, seed)
        # predict_iter refuses constant images; a blank frame inside a stack is still predicted (as a region).
    return _predict_region(model, job, array, frame, rows, cols, seed)


def write_unit(job: Job, frame: int, ry: int, rx: int, outputs: dict[str, np.ndarray | None]) -> None:
    """Write a unit's outputs and pyramid levels, then its completion marker.

    A failed write (a full disk, a lost mount) is one :class:`DivNoisingError`; the unit stays unmarked.
    """
    try:
        _write_unit(job, frame, ry, rx, outputs)
    except OSError as exc:
        raise DivNoisingError(
            f"Could not write to {job.out} ({exc.strerror or exc}); fix that and run the same command again "
            "to resume."
        ) from None


def _write_unit(job: Job, frame: int, ry: int, rx: int, outputs: dict[str, np.ndarray | None]) -> None:
    root = _store(job)
    lead = job.source.frame_index(frame)
    rows, cols = region_bounds(job.source.frame_shape, job.grid, ry, rx)
    mmse = _cast(job, outputs["mmse"])
    root["0"][lead + (slice(*rows), slice(*cols))] = mmse
    level = mmse.astype(np.float32)
    for lv in range(1, job.levels):
        level = downsample2(level)
        r0, c0 = rows[0] >> lv, cols[0] >> lv
        root[str(lv)][lead + (slice(r0, r0 + level.shape[0]), slice(c0, c0 + level.shape[1]))] = _cast(job, level)
    root["variance/0"][lead + (slice(*rows), slice(*cols))] = outputs["variance"].astype(np.float32)
    if job.compute_map and outputs["map"] is not None:
        root["map/0"][lead + (slice(*rows), slice(*cols))] = _cast(job, outputs["map"])
    if job.keep_samples and outputs["samples"] is not None:
        pos = samples_axis_position(job.source)
        index = list(lead + (slice(*rows), slice(*cols)))
        index.insert(pos, slice(None))
        samples = _cast(job, outputs["samples"])  # (K, h, w)
        root["samples/0"][tuple(index)] = samples
    mark_done(job, frame, ry, rx)


def mark_done(job: Job, frame: int, ry: int, rx: int) -> None:
    """Set the unit's completion marker (after all its data is written)."""
    _store(job)[DONE_ARRAY][frame, ry, rx] = 1


def run_unit(job: Job, unit: tuple[int, int, int]) -> dict[str, Any]:
    """Compute and write one unit ``(frame, ry, rx)``; returns its time, this process's peak memory and id.

    Sets torch's thread count to ``job.torch_threads`` when given (a worker process's own setting).
    """
    if job.torch_threads:
        import torch

        if torch.get_num_threads() != int(job.torch_threads):
            torch.set_num_threads(int(job.torch_threads))
    start = time.perf_counter()
    frame, ry, rx = unit
    outputs = compute_unit(job, frame, ry, rx)
    write_unit(job, frame, ry, rx, outputs)
    return {
        "unit": unit, "seconds": time.perf_counter() - start, "peak_rss": peak_rss_bytes(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
