"""npe2 writer: save one image layer as an ImageJ-compatible TIFF (File > Save Layers...).

Pixel size (the layer's scale) and unit are stored as ImageJ resolution and
``unit`` metadata, so Fiji opens the file with the right calibration; stacks
keep their leading axis (as frames/slices). Qt-free: usable without a GUI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .atomic import StagedFiles, check_output_file, ensure_folder
from .errors import DivNoisingError
from .outputs import imagej_dtype, output_kind, provenance_properties, result_facts

TIFF_EXTENSIONS = (".tif", ".tiff")


def _unit_name(units: Any) -> str | None:
    """The unit of the last (X) axis as a string ImageJ understands, or None when unknown/pixels."""
    if units is None:
        return None
    unit = units[-1] if isinstance(units, (list, tuple)) and units else units
    text = str(unit) if unit is not None else ""
    if not text or text in ("pixel", "pixels", "px", "dimensionless", ""):
        return None
    return {"micrometer": "um", "micron": "um", "nanometer": "nm", "millimeter": "mm"}.get(text, text)


def write_image_tiff(path: str | Path, data: Any, meta: dict | None = None) -> Path:
    """Write a single-channel 2-D image or 3-D stack as an ImageJ TIFF, keeping scale and unit.

    Parameters
    ----------
    path
        Output path ending in ``.tif`` or ``.tiff``.
    data
        Image (Y, X) or stack (N, Y, X).
    meta
        napari layer metadata: ``scale``, ``units``, ``name``, ``rgb`` are used.
    """
    import tifffile

    meta = meta or {}
    path = Path(path)
    if path.suffix.lower() not in TIFF_EXTENSIONS:
        raise DivNoisingError(f"TIFF files end in .tif or .tiff; got {path.name}.")
    if meta.get("rgb"):
        raise DivNoisingError("This writer saves single-channel images only; this layer is RGB.")
    array = np.asarray(data)
    if array.ndim < 2 or array.ndim > 3:
        raise DivNoisingError(
            f"Only 2-D images and 3-D stacks can be saved as TIFF here; this layer has shape {array.shape}."
        )
    array = imagej_dtype(array)
    scale = [float(v) for v in (meta.get("scale") if meta.get("scale") is not None else [1.0] * array.ndim)]
    metadata: dict[str, Any] = {"axes": "YX" if array.ndim == 2 else "ZYX"}
    unit = _unit_name(meta.get("units"))
    if unit:
        metadata["unit"] = unit
    if array.ndim == 3:
        metadata["spacing"] = scale[0]
    ensure_folder(path.parent)
    # Atomic, with OS errors (disk full, read-only) as one line naming the file; an old file stays whole.
    with StagedFiles() as staged:
        staged.stage(path, lambda tmp: tifffile.imwrite(
            tmp, array, imagej=True, resolution=(1.0 / scale[-1], 1.0 / scale[-2]), metadata=metadata,
        ))
        staged.commit()
    return path


class SaveLayerError(OSError):
    """A layer could not be saved (one line naming the file and what to do).

    The writer raises this instead of a :class:`~napari_divnoising.errors.DivNoisingError`: that is a
    ``ValueError``, which napari takes for "this writer does not apply" and replaces by a misleading
    warning, dropping the message.
    """


def write_single_image(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer for image layers; returns the paths written.

    Raises :class:`SaveLayerError` with the core's message when the layer cannot be written.
    """
    try:
        return _write_single_image(path, data, meta)
    except DivNoisingError as exc:
        raise SaveLayerError(str(exc)) from exc


def _write_single_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write one image layer (see :func:`write_single_image`).

    Layers the Predict widget made (marked in ``layer.metadata``, see
    :func:`~napari_divnoising.outputs.result_metadata`) are written by the core's
    :func:`~napari_divnoising.export.write_tiff` with their kind and provenance (the same files
    as the Export button and the command line); any other image layer, whatever its name,
    by :func:`write_image_tiff`.
    """
    facts = result_facts(meta.get("metadata"))
    array = np.asarray(data)
    if Path(path).suffix.lower() in TIFF_EXTENSIONS:
        # napari's dialog asked before overwriting; the place is checked before anything is written
        check_output_file(path, force=True, planned_bytes=array.nbytes + 64 * 1024, what="image")
    if not facts or meta.get("rgb") or Path(path).suffix.lower() not in TIFF_EXTENSIONS:
        return [str(write_image_tiff(path, array, meta))]
    from .export import write_tiff

    kind = output_kind(facts["kind"])
    scale = [float(v) for v in (meta.get("scale") if meta.get("scale") is not None else [1.0] * array.ndim)]
    input_ndim = array.ndim - 1 if kind.sample_axis else array.ndim
    if input_ndim not in (2, 3):
        return [str(write_image_tiff(path, array, meta))]
    written = write_tiff(
        path, array, kind=kind.name, input_axes="YX" if input_ndim == 2 else "TYX",
        pixel_size=(scale[-2], scale[-1]), unit=_unit_name(meta.get("units")),
        spacing=scale[-3] if input_ndim == 3 else None, n_samples=facts.get("n_samples"),
        model_name=facts.get("model"), source=facts.get("source") or str(meta.get("name")),
        extra=provenance_properties(facts),
    )
    return [str(written)]
