"""Plan, create or resume a results store, and run its units in this process or on a Dask cluster."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DivNoisingError
from .events import UnitDone, ZarrPlan, ZarrPredictionDone
from .ome import (
    InputSource,
    create_results,
    done_units,
    file_sha256,
    is_zarr_path,
    open_input,
    pyramid_levels,
    read_info,
    region_grid,
    remove_store,
)
from .units import Job, run_unit

#: Default side of the units large frames are split into (pixels); frames up to this size are one unit.
DEFAULT_REGION_SIZE = 1024


@dataclass(frozen=True)
class ZarrPredictionSettings:
    """Prediction settings of a results store (as ``divnoising predict``'s options of the same names).

    A store can only be resumed with the same settings (``seed`` None adopts the store's seed).
    ``region_size`` is the side of the units that frames larger than it are split into. ``threads``:
    torch CPU threads per process (None: torch's default in one process, the cores shared out on a
    local cluster). CPU kernels may round differently with different thread counts, so runs are
    bit-identical across worker counts when they use the same ``threads``.
    """

    n_samples: int = 100
    keep_samples: int = 10
    compute_map: bool = False
    seed: int | None = None
    batch_size: int | None = None
    tile_size: int | None = None
    precision: str = "auto"
    device: str = "auto"
    clip: bool = False
    dtype: str = "float32"
    region_size: int = DEFAULT_REGION_SIZE
    threads: int | None = None

    def compared(self) -> dict[str, Any]:
        """The settings that must match to resume a store (everything that changes the numbers)."""
        out = asdict(self)
        for key in ("seed", "device", "threads"):
            out.pop(key)
        return out


def _check_settings(s: ZarrPredictionSettings) -> None:
    if s.n_samples < 1:
        raise DivNoisingError(f"--samples must be at least 1 (got {s.n_samples}).")
    if s.keep_samples < 0:
        raise DivNoisingError(f"--save-samples must be 0 or more (got {s.keep_samples}).")
    if s.batch_size is not None and s.batch_size < 1:
        raise DivNoisingError(f"--batch-size must be at least 1 (got {s.batch_size}).")
    if s.seed is not None and s.seed < 0:
        raise DivNoisingError(f"--seed must be 0 or more (got {s.seed}).")
    if s.threads is not None and s.threads < 1:
        raise DivNoisingError(f"--threads must be at least 1 (got {s.threads}).")
    if s.region_size < 64:
        raise DivNoisingError(f"--region-size must be at least 64 pixels (got {s.region_size}).")


def _clip_min(source: InputSource) -> float:
    """``--clip``'s minimum: 0 for unsigned or non-negative data, else the data's minimum (one lazy pass)."""
    if np.issubdtype(np.dtype(source.dtype), np.unsignedinteger):
        return 0.0
    array = source.open()
    h, w = source.frame_shape
    low = min(float(np.min(source.read(array, f, (0, h), (0, w)))) for f in range(source.n_frames))
    return 0.0 if low >= 0 else low


def _describe_mismatch(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    diffs = [f"{k} {stored.get(k)!r} (this run: {wanted[k]!r})" for k in wanted if stored.get(k) != wanted[k]]
    return ", ".join(diffs)


def existing_store_problem(
    out: str | os.PathLike, model_sha256: str, model_label: str, shape: tuple[int, ...], dtype: str,
    settings: ZarrPredictionSettings, fingerprint: str | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """What is at ``out`` compared with the job about to run (reads metadata only; changes nothing).

    Parameters
    ----------
    out
        The results store's path.
    model_sha256, model_label
        Fingerprint (:func:`~napari_divnoising.scale.ome.file_sha256`) and name of the model file.
    shape, dtype
        Shape and dtype (``numpy.dtype.str``) of the input.
    settings
        The job's :class:`ZarrPredictionSettings`.
    fingerprint
        :func:`~napari_divnoising.scale.ome.content_fingerprint` of the input; a store written for
        other data of the same shape is then refused (stores written before fingerprints: not checked).

    Returns
    -------
    info, problem
        ``(info, None)``: a store of this very job, to resume. ``(None, None)``: nothing there (or an
        empty folder), a new store is made. ``(None, problem)``: a store of another model, input or
        settings (one line saying which), that only starting over (deleting it) would replace.

    Raises
    ------
    DivNoisingError
        When ``out`` holds something that is not a Zarr store (never replaced).
    """
    out = Path(out)
    wanted = settings.compared()
    if not out.exists():
        return None, None
    if not (out.is_dir() and any((out / name).exists() for name in ("zarr.json", ".zgroup"))):
        if out.is_dir() and not any(out.iterdir()):
            return None, None
        raise DivNoisingError(f"{out} exists and is not a Zarr store; choose another results store.")
    info = read_info(out)
    if info is None:
        problem = f"{out} exists but is not a DivNoising results store (or its creation was interrupted)"
    elif info["model"]["sha256"] != model_sha256:
        problem = (
            f"{out} was written by another model ({info['model'].get('name')}, "
            f"{info['model']['sha256'][:12]}) than {model_label} ({model_sha256[:12]}); mixing them is refused"
        )
    elif info["input"]["shape"] != list(shape) or info["input"]["dtype"] != dtype:
        problem = f"{out} was written for another input (shape {tuple(info['input']['shape'])})"
    elif fingerprint is not None and info["input"].get("fingerprint", fingerprint) != fingerprint:
        problem = f"{out} was written for other image data of the same shape"
    elif info["settings"] != wanted:
        problem = f"{out} was written with other settings: {_describe_mismatch(info['settings'], wanted)}"
    elif settings.seed is not None and info["seed"] != settings.seed:
        problem = f"{out} was written with seed {info['seed']} (this run: {settings.seed})"
    else:
        return info, None
    return None, problem


def _existing_store(
    out: Path, source: InputSource, model_path: Path, sha: str, settings: ZarrPredictionSettings, force: bool
) -> dict[str, Any] | None:
    """The info of an existing store of this very job (to resume), or None when a new store must be made.

    Refuses (one line) a store of another model, input or settings unless ``force``, and anything at
    ``out`` that is not a Zarr store, even with ``force``. Deletes nothing.
    """
    info, problem = existing_store_problem(out, sha, model_path.name, source.shape, source.dtype, settings,
                                           fingerprint=source.fingerprint() if out.exists() else None)
    if problem is not None and not force:
        raise DivNoisingError(f"{problem}; pass --force to start over (deletes it) or choose another --out.")
    return info


def _create_store(
    out: Path, source: InputSource, model_path: Path, sha: str, model: Any, settings: ZarrPredictionSettings
) -> dict[str, Any]:
    """Replace whatever :func:`_existing_store` allowed to replace at ``out`` by a new, empty store."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder: nothing to lose
    elif out.exists():
        remove_store(out)
    wanted = settings.compared()
    seed = settings.seed if settings.seed is not None else int.from_bytes(os.urandom(4), "little")
    levels = pyramid_levels(source.frame_shape)
    multiple = max(model.network.size_multiple, 2 ** (levels - 1))
    grid = region_grid(source.frame_shape, settings.region_size, multiple)
    in_dtype = np.dtype(source.dtype)
    out_dtype = in_dtype.str if settings.dtype == "input" and np.issubdtype(in_dtype, np.integer) else "<f4"
    info = {
        "model": {"sha256": sha, "name": model.name, "file": model_path.name},
        "input": {"path": source.path, "shape": list(source.shape), "dtype": source.dtype,
                  "fingerprint": source.fingerprint()},
        "settings": wanted,
        "seed": int(seed),
        "clip_min": _clip_min(source) if settings.clip else None,
        "out_dtype": out_dtype,
        "grid": list(grid),
        "levels": levels,
        "keep_samples": settings.keep_samples,
        "compute_map": settings.compute_map,
        "store_id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    create_results(out, source, info)
    return info


def _run_here(job: Job, units: list[tuple[int, int, int]]) -> Iterator[dict[str, Any]]:
    """Run units in this process (with ``job.torch_threads`` torch threads, restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    try:
        for unit in units:
            if job.torch_threads:
                torch.set_num_threads(int(job.torch_threads))
            result = run_unit(job, unit)
            torch.set_num_threads(before)  # the caller's setting while it handles the event
            yield result
    finally:
        torch.set_num_threads(before)


def predict_to_zarr_iter(
    model_path: str | os.PathLike,
    input_path: str | os.PathLike,
    out_path: str | os.PathLike,
    settings: ZarrPredictionSettings | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    force: bool = False,
) -> Iterator[ZarrPlan | UnitDone | ZarrPredictionDone]:
    """Denoise ``input_path`` (OME-Zarr or TIFF, read lazily) into the OME-Zarr results store ``out_path``.

    Parameters
    ----------
    model_path
        Model file from ``divnoising train`` (workers load it from this path: on a cluster it must be
        readable at the same path on every worker; its SHA-256 is checked there).
    input_path, out_path
        Input image and results store. An existing store of the same job is resumed: units marked
        complete are skipped. A store of another model, input or settings is refused unless ``force``
        (which deletes it and starts over).
    settings
        :class:`ZarrPredictionSettings`.
    workers
        Run on an embedded Dask ``LocalCluster`` of this many worker processes (None: this process).
    scheduler
        Address of an existing Dask scheduler (``tcp://host:port``); overrides ``workers``.
    client
        An open ``distributed.Client`` to run on (left open); overrides ``workers`` and ``scheduler``.
    force
        Start over when ``out_path`` holds another job's results.

    Yields
    ------
    ZarrPlan, UnitDone, ZarrPredictionDone
        The plan first, one :class:`UnitDone` per unit computed now, then :class:`ZarrPredictionDone`.
        Closing the generator stops the work (finished units stay written and marked).
    """
    from ..model_io import load_model
    from ..prediction import check_tile_size

    settings = settings or ZarrPredictionSettings()
    _check_settings(settings)
    # As predict_iter: at most as many samples are kept as are drawn.
    settings = replace(settings, keep_samples=min(settings.keep_samples, settings.n_samples))
    if workers is not None and workers < 1:
        raise DivNoisingError(f"--workers must be at least 1 (got {workers}).")
    model_path, out = Path(model_path), Path(out_path)
    if not is_zarr_path(out):
        raise DivNoisingError(f"--out {out} must name a Zarr store ending in .zarr (e.g. results.ome.zarr).")
    source = open_input(input_path)
    if out.resolve() == Path(source.path).resolve():
        raise DivNoisingError(f"--out {out} is the input; choose another store.")
    model = load_model(model_path)  # validates the file before anything is created
    check_tile_size(settings.tile_size, model.network)
    sha = file_sha256(model_path)
    info = _existing_store(out, source, model_path, sha, settings, force)
    todo_before = None if info is None else int((~done_units(out)).sum())
    own_client = cluster = results = None
    if client is None and (scheduler or workers) and todo_before != 0:
        from .distributed import open_client

        # Connect (or start the local cluster) before creating anything, so a wrong address changes nothing.
        own_client, cluster = open_client(workers, scheduler)
        client = own_client
    try:
        if info is None:
            info = _create_store(out, source, model_path, sha, model, settings)
        job = Job(
            model_path=str(model_path.resolve()), model_sha256=sha, source=source, out=str(out.resolve()),
            store_id=info["store_id"], n_samples=settings.n_samples, keep_samples=settings.keep_samples,
            compute_map=settings.compute_map, seed=int(info["seed"]), batch_size=settings.batch_size,
            tile_size=settings.tile_size, precision=settings.precision, device=settings.device,
            clip_min=info["clip_min"], out_dtype=info["out_dtype"], grid=tuple(info["grid"]),
            levels=int(info["levels"]), torch_threads=settings.threads,
        )
        done = done_units(out)
        todo = [tuple(int(i) for i in idx) for idx in np.argwhere(~done)]
        total = int(done.size)
        finished = total - len(todo)
        where = (
            "the given Dask client" if client is not None and own_client is None else f"scheduler {scheduler}"
            if scheduler else f"{workers} local worker(s)" if workers else "this process"
        )
        yield ZarrPlan(str(out), total, finished, source.n_frames, job.seed, where)
        if todo and client is not None:
            from .distributed import run_on_dask

            results = run_on_dask(job, todo, client=client, share_cores=cluster is not None and not settings.threads)
        else:
            results = _run_here(job, todo)
        computed = 0
        for result in results:
            computed += 1
            frame, ry, rx = result["unit"]
            yield UnitDone(frame, (ry, rx), finished + computed, total, result["seconds"], result["worker"],
                           result["peak_rss"])
        yield ZarrPredictionDone(str(out), total, computed, job.seed)
    finally:
        if results is not None:
            results.close()  # cancels the units still queued on a cluster
        if own_client is not None:
            own_client.close()
            if cluster is not None:
                cluster.close()


def predict_to_zarr(model_path: str | os.PathLike, input_path: str | os.PathLike, out_path: str | os.PathLike,
                    settings: ZarrPredictionSettings | None = None, **kwargs: Any) -> ZarrPredictionDone:
    """Run :func:`predict_to_zarr_iter` to the end; returns its last event."""
    last = None
    for event in predict_to_zarr_iter(model_path, input_path, out_path, settings, **kwargs):
        last = event
    if not isinstance(last, ZarrPredictionDone):
        raise DivNoisingError("The prediction ended without a result.")
    return last
