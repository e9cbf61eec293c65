"""Prediction beyond one image in memory: OME-Zarr input and output, resumable batch work, Dask clusters.

:func:`predict_to_zarr_iter` denoises a stack read lazily from an OME-Zarr
store (or a TIFF) into an OME-Zarr results store, one *unit* (a frame, or a
region of a large frame) at a time, so memory stays bounded by a few units
whatever the input size. Every finished unit is written with a completion
marker after its data; running the same job again skips finished units.
With ``workers=N`` (a local Dask cluster of N processes) or
``scheduler="tcp://host:port"`` (an existing Dask cluster) units run on Dask
workers that each load the model once and write their results straight into
the store; results equal the single-process run bit for bit.

Needs the optional dependencies ``zarr``, ``ome-zarr`` and (for clusters)
``dask[distributed]``: ``pip install napari-divnoising[scale]``.
"""

from __future__ import annotations

from .events import UnitDone, ZarrPlan, ZarrPredictionDone
from .ome import is_zarr_path, open_input, read_results
from .runner import ZarrPredictionSettings, predict_to_zarr, predict_to_zarr_iter

__all__ = [
    "UnitDone",
    "ZarrPlan",
    "ZarrPredictionDone",
    "ZarrPredictionSettings",
    "is_zarr_path",
    "open_input",
    "predict_to_zarr",
    "predict_to_zarr_iter",
    "read_results",
]
