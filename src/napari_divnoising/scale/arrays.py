"""Predict an array already open (a napari layer's data) into an OME-Zarr results store.

The input is read from the file it came from when that file is an OME-Zarr image or a TIFF holding
exactly this array (nothing is copied); otherwise it is written, one frame at a time, to a
temporary OME-Zarr image that is deleted when the run ends, and predicted from there by
:func:`~napari_divnoising.scale.predict_to_zarr_iter`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DivNoisingError
from .events import UnitDone, ZarrPlan, ZarrPredictionDone
from .ome import _require_zarr, open_input
from .runner import ZarrPredictionSettings, predict_to_zarr_iter

#: Axis names that may label the frames of a stack.
STACK_AXES = ("t", "z")


def full_resolution(data: Any) -> Any:
    """A layer's full-resolution array: level 0 of a multiscale list, else the data itself."""
    return data[0] if isinstance(data, (list, tuple)) else data


def array_shape_dtype(data: Any) -> tuple[tuple[int, ...], str]:
    """Shape and dtype string of a layer's data (level 0 of a multiscale list)."""
    level = full_resolution(data)
    return tuple(int(n) for n in level.shape), np.dtype(level.dtype).str


def matching_source(source_path: str | os.PathLike | None, data: Any) -> str | None:
    """``source_path`` when it is an OME-Zarr image or TIFF holding an array of ``data``'s shape and dtype, else None.

    Reads metadata only. Used to predict a layer from its file instead of copying the layer.
    """
    if not source_path:
        return None
    try:
        source = open_input(source_path)
    except (DivNoisingError, OSError, ValueError):
        return None
    shape, dtype = array_shape_dtype(data)
    return source.path if (tuple(source.shape), source.dtype) == (shape, dtype) else None


def stack_axis_name(label: str | None) -> str:
    """NGFF name of a stack's frame axis from a napari axis label (``t`` unless it says ``z``)."""
    name = str(label or "").strip().lower()
    return name if name in STACK_AXES else "t"


def write_array_store(
    path: str | os.PathLike, data: Any, axes: Sequence[str], scale: Sequence[float] | None = None,
) -> Path:
    """Write a 2-D image or 3-D stack as a single-level OME-Zarr image, one frame (one chunk) at a time.

    Parameters
    ----------
    path
        The new store (must not exist).
    data
        Array-like (NumPy, Dask, Zarr): only one frame is held in memory at a time.
    axes
        Axis names, e.g. ``("t", "y", "x")``; the last two must be ``y, x``.
    scale
        Pixel size along each axis (1.0 where None).

    Returns
    -------
    Path
        ``path``.
    """
    zarr = _require_zarr()
    from ome_zarr.writer import write_multiscales_metadata

    shape, dtype = array_shape_dtype(data)
    level = full_resolution(data)
    if len(shape) not in (2, 3) or len(axes) != len(shape) or tuple(axes[-2:]) != ("y", "x"):
        raise DivNoisingError(f"Expected a 2-D image or 3-D stack with axes [t|z,] y, x; got shape {shape}.")
    scale = [1.0] * len(shape) if scale is None else [float(s) for s in scale]
    p = Path(path)
    try:
        root = zarr.open_group(str(p), mode="w-", zarr_format=3)
        array = root.create_array("0", shape=shape, chunks=(1, *shape[1:]) if len(shape) == 3 else shape,
                                  dtype=dtype, fill_value=0, dimension_names=list(axes))
        if len(shape) == 2:
            array[...] = np.asarray(level)
        else:
            for frame in range(shape[0]):
                array[frame] = np.asarray(level[frame])
        write_multiscales_metadata(
            root, datasets=[{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
            axes=[{"name": a, "type": "time" if a == "t" else "space"} for a in axes], name=p.name,
        )
    except OSError as exc:
        raise DivNoisingError(f"Cannot write the temporary copy of the input ({p}): {exc.strerror or exc}") from None
    return p


def predict_array_to_zarr_iter(
    model_path: str | os.PathLike,
    data: Any,
    out_path: str | os.PathLike,
    settings: ZarrPredictionSettings | None = None,
    *,
    source_path: str | os.PathLike | None = None,
    axes: Sequence[str] | None = None,
    scale: Sequence[float] | None = None,
    force: bool = False,
    temp_dir: str | os.PathLike | None = None,
) -> Iterator[ZarrPlan | UnitDone | ZarrPredictionDone]:
    """Denoise an array (e.g. a napari layer's data) into the OME-Zarr results store ``out_path``.

    Parameters
    ----------
    model_path
        Model file (see :func:`~napari_divnoising.scale.predict_to_zarr_iter`).
    data
        2-D image or 3-D stack (NumPy, Dask or Zarr array, or a multiscale list: level 0 is used).
    out_path
        Results store; an existing store of the same job is resumed (see ``predict_to_zarr_iter``).
    settings
        :class:`~napari_divnoising.scale.ZarrPredictionSettings`.
    source_path
        The file ``data`` was read from: used directly when it holds exactly this array.
    axes, scale
        Axis names and pixel sizes written to the temporary copy (default ``[t,] y, x`` and 1.0).
    force
        Start over when ``out_path`` holds another job's results (deletes them).
    temp_dir
        Where the temporary copy goes (default: the system's temporary folder).

    Yields
    ------
    ZarrPlan, UnitDone, ZarrPredictionDone
        As :func:`~napari_divnoising.scale.predict_to_zarr_iter`; closing the generator stops the work
        (finished units stay written) and deletes the temporary copy.
    """
    shape, _ = array_shape_dtype(data)
    if len(shape) not in (2, 3):
        raise DivNoisingError(f"Expected a 2-D image or 3-D stack; got an array of shape {shape}.")
    input_path = matching_source(source_path, data)
    tmp: Path | None = None
    try:
        if input_path is None:
            try:
                tmp = Path(tempfile.mkdtemp(prefix="divnoising-input-", dir=temp_dir))
            except OSError as exc:
                raise DivNoisingError(f"Cannot make a temporary folder for the input: {exc.strerror or exc}") from None
            names = list(axes) if axes is not None else ["t", "y", "x"][-len(shape):]
            input_path = str(write_array_store(tmp / "input.ome.zarr", data, names, scale))
        yield from predict_to_zarr_iter(model_path, input_path, out_path, settings, force=force)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
