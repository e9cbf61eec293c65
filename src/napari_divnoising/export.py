"""Writing results as ImageJ-compatible TIFFs that say what they are, and reading that metadata back.

Files are float32 by default (``dtype="float32"``), or cast to the input's
integer dtype with rounding and clipping to its range. Axes follow ImageJ's
TZYX order:

==================  ================  =========================================
input               MMSE / MAP / var  samples (K of them)
==================  ================  =========================================
image ``YX``        ``YX``            ``TYX``  (sample k = frame k)
Z-stack ``ZYX``     ``ZYX``           ``TZYX`` (sample k = frame k)
T-stack ``TYX``     ``TYX``           ``TZYX`` (time on T, samples on Z)
==================  ================  =========================================

Prior samples are written as ``TYX`` (image k = frame k). The axis holding
samples is recorded in the metadata (``samples_axis``). Pixel size and unit go
into the resolution tags and ImageJ ``unit``; Z spacing and frame interval
into ImageJ ``spacing`` / ``finterval``. The ImageJ ``Info`` text (Image >
Show Info in Fiji) says what the file holds; the same facts are stored as
ImageJ ``Properties`` (``divnoising_kind``, ``divnoising_n_samples``, ...) for
programs. Files are written to a temporary name and renamed into place, so an
existing file is never left half-written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import ensure_folder, write_error
from .errors import DivNoisingError
from .outputs import imagej_dtype, output_kind

#: Resolution units of the TIFF tag in micrometres (2 = inch, 3 = centimetre).
_RESOLUTION_UNIT_UM = {2: 25400.0, 3: 10000.0}


def stack_axes(axes: str | None, ndim: int) -> str:
    """ImageJ axes ('YX', 'ZYX' or 'TYX') for an input of ``ndim`` dimensions read with axes ``axes``.

    A 3-D stack is 'ZYX' when its first axis is Z, else 'TYX' (time, or any other series of frames).
    """
    if ndim == 2:
        return "YX"
    if ndim != 3:
        raise DivNoisingError(f"Expected a 2-D image or a 3-D stack; got {ndim} dimensions.")
    first = (axes or "")[-3:-2].upper() if axes and len(axes) >= 3 else ""
    return "ZYX" if first == "Z" else "TYX"


def output_axes(input_axes: str, kind: str) -> tuple[str, str | None]:
    """ImageJ axes of an output of ``kind`` for an input with ``input_axes``, and the samples axis (or None)."""
    if not output_kind(kind).sample_axis:
        return input_axes, None
    if kind == "prior":
        return "TYX", "T"
    return {"YX": ("TYX", "T"), "ZYX": ("TZYX", "T"), "TYX": ("TZYX", "Z")}[input_axes]


def cast_output(data: np.ndarray, dtype: Any = "float32", clip_min: float | None = None) -> np.ndarray:
    """Optionally clip at ``clip_min``, then cast: float32, or an integer dtype with rounding and clipping."""
    arr = np.asarray(data, dtype=np.float32)
    if clip_min is not None:
        arr = np.maximum(arr, np.float32(clip_min))
    target = np.dtype(dtype)
    if target == np.float32:
        return arr
    if np.issubdtype(target, np.integer):
        info = np.iinfo(target)
        return np.clip(np.rint(arr), info.min, info.max).astype(target)
    if np.issubdtype(target, np.floating):
        return arr.astype(target)
    raise DivNoisingError(f"Cannot write outputs as {target}; use float32 or the input's integer type.")


def write_tiff(
    path: str | Path,
    data: np.ndarray,
    *,
    kind: str,
    input_axes: str | None = None,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    spacing: float | None = None,
    frame_interval: float | None = None,
    n_samples: int | None = None,
    model_name: str | None = None,
    source: str | None = None,
    dtype: Any = "float32",
    clip_min: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write one result as an ImageJ TIFF with metadata; atomic (temporary file, then rename).

    Parameters
    ----------
    path
        Output file (``.tif``/``.tiff``); overwritten if it exists (callers check ``--force``).
    data
        The result: input shape for mmse/map/variance; (K, *input shape) for samples; (count, h, w) for prior.
    kind
        A kind of :data:`~napari_divnoising.outputs.OUTPUT_KINDS`: ``"mmse"``, ``"variance"``, ``"samples"``,
        ``"map"`` or ``"prior"``.
    input_axes
        'YX', 'ZYX' or 'TYX' (see :func:`stack_axes`); default from the data's shape ('TYX' for stacks).
    pixel_size, unit
        (y, x) pixel size and its unit (e.g. 'um'), when known.
    spacing, frame_interval
        Z step (in ``unit``) and time step (seconds), when known.
    n_samples, model_name, source
        Number of posterior samples, the model's name, the input file: recorded in the description.
    dtype
        ``"float32"`` or a numpy integer dtype (e.g. the input's) to cast to with rounding and clipping.
        Kinds marked ``float_only`` in :mod:`~napari_divnoising.outputs` (the variance: squared units
        do not fit the input's type) are always float32.
    clip_min
        Clip values below this (e.g. 0 for unsigned data); not applied to ``float_only`` kinds.
    extra
        More key/value pairs for the description and properties.
    """
    import tifffile

    from . import __version__

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise DivNoisingError(f"TIFF files end in .tif or .tiff; got {path.name}.")
    arr = np.asarray(data)
    info = output_kind(kind)
    per_image_ndim = arr.ndim - 1 if info.sample_axis else arr.ndim
    in_axes = input_axes or stack_axes(None, per_image_ndim)
    if kind == "prior" and arr.ndim != 3:
        raise DivNoisingError(f"Prior samples must have shape (count, Y, X); got {arr.shape}.")
    if kind != "prior" and len(in_axes) != per_image_ndim:
        raise DivNoisingError(f"A {kind} output of shape {arr.shape} does not fit input axes {in_axes}.")
    axes, samples_axis = output_axes(in_axes, kind)
    if info.float_only:
        arr = cast_output(arr, "float32")
    else:
        arr = cast_output(arr, dtype, clip_min)
    if kind == "samples" and in_axes == "TYX":
        arr = np.ascontiguousarray(np.moveaxis(arr, 0, 1))  # (K, T, Y, X) -> (T, K, Y, X): samples on Z
    arr = imagej_dtype(arr)

    facts: dict[str, str] = {"divnoising_kind": kind, "divnoising_version": __version__}
    if n_samples is not None:
        facts["divnoising_n_samples"] = str(int(n_samples))
    if model_name:
        facts["divnoising_model"] = str(model_name)
    if source:
        facts["divnoising_source"] = str(source)
    if samples_axis:
        facts["divnoising_samples_axis"] = samples_axis
    for key, value in (extra or {}).items():
        facts[f"divnoising_{key}"] = str(value)
    lines = [f"napari-divnoising {__version__}: {info.description}"]
    if n_samples is not None:
        lines.append(f"{int(n_samples)} posterior samples per image" if kind != "prior" else f"{int(n_samples)} images")
    if model_name:
        lines.append(f"model: {model_name}")
    if source:
        lines.append(f"input: {source}")
    if samples_axis:
        lines.append(f"samples along ImageJ axis {samples_axis}")
    lines += [f"{k}={v}" for k, v in facts.items()]

    metadata: dict[str, Any] = {"axes": axes, "Info": "\n".join(lines), "Properties": facts}
    kwargs: dict[str, Any] = {}
    if pixel_size is not None:
        py, px = (float(v) for v in pixel_size)
        if py <= 0 or px <= 0:
            raise DivNoisingError(f"Pixel sizes must be positive (got {pixel_size}).")
        kwargs["resolution"] = (1.0 / px, 1.0 / py)
    if unit:
        metadata["unit"] = str(unit)
    if spacing is not None and "Z" in axes:
        metadata["spacing"] = float(spacing)
    if frame_interval is not None and "T" in axes and samples_axis != "T":
        metadata["finterval"] = float(frame_interval)

    ensure_folder(path.parent)  # a file in the way: one clear line
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tifffile.imwrite(tmp, arr, imagej=True, metadata=metadata, **kwargs)
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(exc, path) from exc  # the cause lets StagedFiles name the file of the set
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_tiff_metadata(path: str | Path) -> dict[str, Any]:
    """Axes, pixel size and DivNoising facts of a TIFF file.

    Returns
    -------
    dict
        ``axes`` (tifffile's series axes, e.g. 'TYX'), ``shape``, ``dtype``, ``pixel_size`` ((y, x) or
        None when not recorded), ``unit`` (None when unknown), ``spacing``, ``frame_interval``,
        ``info`` (ImageJ Info text or the image description) and ``properties`` (dict, ImageJ Properties).
    """
    import tifffile

    path = Path(path)
    if not path.exists():
        raise DivNoisingError(f"File not found: {path}")
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            page = tf.pages[0]
            ij = tf.imagej_metadata or {}
            tags = page.tags
            pixel_size = None
            unit = ij.get("unit")
            if "XResolution" in tags and "YResolution" in tags:
                xn, xd = tags["XResolution"].value
                yn, yd = tags["YResolution"].value
                res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 1
                if xn and yn:
                    px, py = xd / xn, yd / yn
                    if not ij and res_unit in _RESOLUTION_UNIT_UM:
                        px, py = px * _RESOLUTION_UNIT_UM[res_unit], py * _RESOLUTION_UNIT_UM[res_unit]
                        unit = "um"
                    if (px, py) != (1.0, 1.0) or unit not in (None, "pixel", "\\u00B5m"):
                        pixel_size = (float(py), float(px))
            if isinstance(unit, str) and unit in ("\\u00B5m", "\u00b5m", "micron"):
                unit = "um"
            return {
                "axes": series.axes,
                "shape": tuple(series.shape),
                "dtype": np.dtype(series.dtype),
                "pixel_size": pixel_size,
                "unit": unit if unit not in ("pixel", "") else None,
                "spacing": ij.get("spacing"),
                "frame_interval": ij.get("finterval"),
                "info": ij.get("Info") or page.description or "",
                "properties": dict(ij.get("Properties") or {}),
            }
    except DivNoisingError:
        raise
    except Exception as exc:  # tifffile raises many types for bad files
        raise DivNoisingError(f"Could not read {path} as a TIFF image ({type(exc).__name__}: {exc})") from None
