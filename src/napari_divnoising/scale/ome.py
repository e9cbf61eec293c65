"""OME-Zarr input (read lazily, frame or region at a time) and the OME-Zarr results store.

Input: an OME-Zarr image (NGFF 0.4 on Zarr v2 or 0.5 on Zarr v3), read with
``ome-zarr``'s reader for the metadata and ``zarr`` for the pixels of its full
resolution level; or a TIFF, read lazily through tifffile's Zarr view. The last
two axes must be ``y, x``; the axes before them (``t``, ``z``, or ``c`` of size
one) are frames, numbered in C order.

Results store (Zarr v3, OME-NGFF 0.5, written with ``ome-zarr``'s metadata
writers)::

    results.ome.zarr/          the MMSE as a multiscale image: levels 0, 1, ...
      0, 1, ...                MMSE, full resolution and 2x-downsampled levels (mean of 2x2 blocks)
      variance/0               per-pixel variance of the samples (an OME-Zarr image)
      map/0                    MAP estimate (with --map)
      samples/0                the first K samples, a ``sample`` axis after ``t`` (or first)
      divnoising_done          one byte per unit: 1 once all of the unit's chunks are written

Every output has the input's axes and pixel sizes. Arrays are chunked so that
one unit (a frame, or a region of a large frame) owns whole chunks of every
array, pyramid levels included: units never write the same chunk, so any
number of processes may write at once. The root attribute ``divnoising``
(model fingerprint, input, settings, seed) is written last when the store is
created, so an interrupted creation is recognised.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DivNoisingError

#: Version of the ``divnoising`` block in the results store's attributes.
STORE_VERSION = 1

#: Name of the per-unit completion marker array.
DONE_ARRAY = "divnoising_done"

#: Pyramid levels are added while the next level is at least this many pixels on its longer side.
PYRAMID_MIN_SIDE = 64

#: At most this many pyramid levels (full resolution included).
PYRAMID_MAX_LEVELS = 6

FRAME_AXES = ("t", "z", "c")


def _require_zarr() -> Any:
    try:
        import ome_zarr  # noqa: F401
        import zarr
    except ImportError:
        raise DivNoisingError(
            "OME-Zarr support needs the optional packages zarr and ome-zarr: pip install 'napari-divnoising[scale]'."
        ) from None
    return zarr


def is_zarr_path(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` names a Zarr store: a ``.zarr`` name, or a folder with Zarr metadata."""
    if path is None:
        return False
    p = Path(path)
    if p.name.lower().rstrip("/").endswith(".zarr"):
        return True
    return p.is_dir() and any((p / name).exists() for name in ("zarr.json", ".zgroup", ".zarray"))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (the model fingerprint recorded in a results store)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- input


@dataclass(frozen=True)
class InputSource:
    """A lazily read input (picklable: workers reopen it from its path).

    Attributes
    ----------
    path
        The OME-Zarr image or TIFF file.
    kind
        ``"zarr"`` or ``"tiff"``.
    array_path
        Path of the full-resolution array inside the Zarr group (``""`` for a TIFF).
    shape, dtype
        Shape and dtype of the full-resolution array.
    axes
        NGFF axis dicts (``name``, ``type``, optional ``unit``), one per dimension.
    scale
        Physical size of one pixel along each axis (1.0 where unknown).
    """

    path: str
    kind: str
    array_path: str
    shape: tuple[int, ...]
    dtype: str
    axes: tuple[tuple[tuple[str, str], ...], ...]
    scale: tuple[float, ...]

    @property
    def axis_dicts(self) -> list[dict[str, str]]:
        return [dict(a) for a in self.axes]

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return self.shape[:-2]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.shape[-2]), int(self.shape[-1])

    @property
    def n_frames(self) -> int:
        return int(np.prod(self.lead_shape, dtype=np.int64)) if self.lead_shape else 1

    def frame_index(self, frame: int) -> tuple[int, ...]:
        """Index of frame ``frame`` over the leading axes."""
        return tuple(int(i) for i in np.unravel_index(frame, self.lead_shape)) if self.lead_shape else ()

    def open(self) -> Any:
        """The full-resolution array, opened read-only (reads nothing yet)."""
        zarr = _require_zarr()
        if self.kind == "tiff":
            import tifffile

            return zarr.open(tifffile.imread(self.path, aszarr=True), mode="r")
        return zarr.open_group(self.path, mode="r")[self.array_path]

    def read(self, array: Any, frame: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Pixels of ``frame`` in ``rows`` x ``cols`` as float32 (reads only the chunks needed)."""
        index = self.frame_index(frame) + (slice(*rows), slice(*cols))
        return np.asarray(array[index], dtype=np.float32)

    def fingerprint(self) -> str:
        """:func:`content_fingerprint` of this input (reads a few crops of at most three frames)."""
        array = self.open()
        return content_fingerprint(array, self.shape)


#: Side of the square crops (pixels) a content fingerprint reads from each sampled frame.
FINGERPRINT_CROP = 256


def content_fingerprint(array: Any, shape: tuple[int, ...]) -> str:
    """A sha256 of an image's shape, dtype and a few crops of its first, middle and last frame, as stored.

    Tells a results store whether it was written for this very image data, not only for data of the
    same shape: a stack whose contents were replaced is noticed. From each sampled frame only three
    crops of at most ``FINGERPRINT_CROP`` pixels square are read (top left, centre, bottom right), so
    the cost stays small for frames of any size; an edit outside them goes unnoticed. ``array`` is
    anything indexable over its leading axes (numpy, dask, zarr).
    """
    lead = tuple(int(n) for n in shape[:-2])
    height, width = int(shape[-2]), int(shape[-1])
    n_frames = int(np.prod(lead, dtype=np.int64)) if lead else 1
    ch, cw = min(height, FINGERPRINT_CROP), min(width, FINGERPRINT_CROP)
    corners = sorted({(0, 0), ((height - ch) // 2, (width - cw) // 2), (height - ch, width - cw)})
    digest = hashlib.sha256(repr((tuple(int(n) for n in shape), np.dtype(array.dtype).str)).encode())
    for frame in sorted({0, n_frames // 2, n_frames - 1}):
        index = tuple(int(i) for i in np.unravel_index(frame, lead)) if lead else ()
        for row, col in corners:
            pixels = np.ascontiguousarray(np.asarray(array[(*index, slice(row, row + ch), slice(col, col + cw))]))
            digest.update(pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def _axes_tuple(axes: list[dict[str, Any]]) -> tuple[tuple[tuple[str, str], ...], ...]:
    return tuple(tuple(sorted((str(k), str(v)) for k, v in a.items() if v is not None)) for a in axes)


def _check_axes(axes: list[dict[str, Any]], shape: tuple[int, ...], name: str) -> None:
    names = [str(a.get("name", "")).lower() for a in axes]
    shown = ",".join(names)
    if len(names) != len(shape):
        raise DivNoisingError(f"{name}: {len(names)} axes ({shown}) for {len(shape)}-D data; the metadata is damaged.")
    if len(names) < 2 or names[-2:] != ["y", "x"]:
        raise DivNoisingError(f"{name} has axes {shown}; the last two axes must be y,x (2-D frames).")
    for axis, size in zip(names[:-2], shape[:-2]):
        if axis not in FRAME_AXES:
            raise DivNoisingError(f"{name} has axes {shown}; axes before y,x may only be t, z or c (got {axis}).")
        if axis == "c" and size != 1:
            raise DivNoisingError(
                f"{name} has {size} channels; DivNoising denoises one channel: write that channel to its own store."
            )


def open_input(path: str | os.PathLike) -> InputSource:
    """Check an OME-Zarr image (or a TIFF) and describe it for lazy reading; reads no pixels.

    Raises :class:`DivNoisingError` for a missing path, a Zarr store without OME multiscales
    metadata, axes other than ``[t|z|c...,] y, x``, several channels, or a non-numeric dtype.
    """
    p = Path(path)
    if not p.exists():
        raise DivNoisingError(f"Input not found: {p}")
    if not is_zarr_path(p):
        return _open_tiff(p)
    _require_zarr()
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Node

    location = parse_url(str(p), mode="r")
    if location is None or not location.exists():
        raise DivNoisingError(f"{p} is not a readable Zarr store.")
    if not Multiscales.matches(location):
        raise DivNoisingError(
            f"{p} has no OME-Zarr image metadata (no 'multiscales'); write it as OME-Zarr (e.g. with ome-zarr) "
            "or open the image group inside it."
        )
    try:
        node = Node(location, None)
        multiscales = location.root_attrs["multiscales"][0]
        dataset = multiscales["datasets"][0]
        array_path = str(dataset["path"])
        data = node.data[0]
    except DivNoisingError:
        raise
    except Exception as exc:  # ome-zarr raises ValueError/KeyError/TypeError for bad metadata
        raise DivNoisingError(f"{p} has unreadable OME-Zarr metadata ({type(exc).__name__}: {exc}).") from None
    shape = tuple(int(s) for s in data.shape)
    raw_axes = node.metadata.get("axes") or []
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in raw_axes]
    if not axes:
        axes = [{"name": n} for n in ("t", "c", "z", "y", "x")[-len(shape):]]
    _check_axes(axes, shape, str(p))
    _check_dtype(np.dtype(data.dtype), str(p))
    scale = [1.0] * len(shape)
    for transform in dataset.get("coordinateTransformations") or []:
        if transform.get("type") == "scale" and len(transform.get("scale", [])) == len(shape):
            scale = [float(s) for s in transform["scale"]]
    return InputSource(str(p), "zarr", array_path, shape, np.dtype(data.dtype).str, _axes_tuple(axes), tuple(scale))


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if np.dtype(dtype) == np.dtype(bool) or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DivNoisingError(f"{name}: unsupported data type {dtype}; expected integer or float pixels.")


def _open_tiff(p: Path) -> InputSource:
    from ..export import read_tiff_metadata, stack_axes

    meta = read_tiff_metadata(p)
    shape = tuple(int(s) for s in meta["shape"])
    squeezed = tuple(s for i, s in enumerate(shape) if not (s == 1 and i < len(shape) - 2))
    if len(squeezed) not in (2, 3) or squeezed != shape:
        raise DivNoisingError(
            f"{p} has shape {shape}; a TIFF input for an OME-Zarr output must be a 2-D image or a 3-D stack."
        )
    _check_dtype(np.dtype(meta["dtype"]), str(p))
    names = stack_axes(meta["axes"], len(shape)).lower()
    unit = {"um": "micrometer", "nm": "nanometer", "mm": "millimeter"}.get(meta["unit"] or "")
    axes = []
    for name in names:
        axis = {"name": name, "type": "time" if name == "t" else "space"}
        if unit and name in "zyx":
            axis["unit"] = unit
        axes.append(axis)
    scale = [1.0] * len(shape)
    if meta["pixel_size"]:
        scale[-2], scale[-1] = (float(v) for v in meta["pixel_size"])
    if names[0] == "z" and meta.get("spacing"):
        scale[0] = float(meta["spacing"])
    if names[0] == "t" and meta.get("frame_interval"):
        scale[0] = float(meta["frame_interval"])
    return InputSource(str(p), "tiff", "", shape, np.dtype(meta["dtype"]).str, _axes_tuple(axes), tuple(scale))


# ---------------------------------------------------------------------- layout of the results


def pyramid_levels(frame_shape: tuple[int, int]) -> int:
    """Levels of the MMSE pyramid for frames of ``frame_shape`` (1: full resolution only)."""
    levels = 1
    while levels < PYRAMID_MAX_LEVELS and (max(frame_shape) >> levels) >= PYRAMID_MIN_SIDE:
        levels += 1
    return levels


def level_shape(frame_shape: tuple[int, int], level: int) -> tuple[int, int]:
    h, w = frame_shape
    for _ in range(level):
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def region_grid(frame_shape: tuple[int, int], region_size: int, multiple: int) -> tuple[int, int, int]:
    """(rows, cols, side): how frames are split into units of ``side`` pixels (a multiple of ``multiple``)."""
    side = max(multiple, int(region_size) - int(region_size) % multiple)
    h, w = frame_shape
    if h <= side and w <= side:
        return 1, 1, max(h, w)
    return math.ceil(h / side), math.ceil(w / side), side


def region_bounds(
    frame_shape: tuple[int, int], grid: tuple[int, int, int], ry: int, rx: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Pixel rows and columns of region (ry, rx)."""
    ny, nx, side = grid
    if ny == 1 and nx == 1:
        return (0, frame_shape[0]), (0, frame_shape[1])
    return (ry * side, min(frame_shape[0], (ry + 1) * side)), (rx * side, min(frame_shape[1], (rx + 1) * side))


def downsample2(image: np.ndarray) -> np.ndarray:
    """Halve a 2-D image: mean of 2x2 blocks (the last row/column repeated for odd sizes)."""
    h, w = image.shape
    a = image
    if h % 2:
        a = np.concatenate([a, a[-1:]], 0)
    if w % 2:
        a = np.concatenate([a, a[:, -1:]], 1)
    return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean((1, 3), dtype=np.float64).astype(np.float32)


def samples_axis_position(source: InputSource) -> int:
    """Where the ``sample`` axis goes in the samples array: after ``t`` when the input starts with t, else first."""
    names = [dict(a).get("name") for a in source.axes]
    return 1 if names and names[0] == "t" else 0


# ---------------------------------------------------------------------- the results store


def _scale_transform(scale: list[float]) -> list[dict[str, Any]]:
    return [{"type": "scale", "scale": [float(s) for s in scale]}]


def _image_arrays(
    group: Any, name: str, shapes: list[tuple[int, ...]], chunks: list[tuple[int, ...]], scales: list[list[float]],
    axes: list[dict[str, str]], dtype: str,
) -> None:
    from ome_zarr.writer import write_multiscales_metadata

    datasets = []
    for level, (shape, chunk, scale) in enumerate(zip(shapes, chunks, scales)):
        group.create_array(
            str(level), shape=shape, chunks=chunk, dtype=dtype, fill_value=0,
            dimension_names=[a["name"] for a in axes],
        )
        datasets.append({"path": str(level), "coordinateTransformations": _scale_transform(scale)})
    write_multiscales_metadata(group, datasets=datasets, axes=axes, name=name)


def _permission_denied(path: Path) -> DivNoisingError:
    return DivNoisingError(
        f"Cannot write {path}: permission denied (read-only location?); choose another place for the results."
    )


def create_results(path: str | os.PathLike, source: InputSource, info: dict[str, Any]) -> None:
    """Create an empty results store for ``source`` (arrays, OME metadata, markers), then record ``info``.

    ``info`` must hold ``grid`` (rows, cols, side), ``levels``, ``keep_samples``, ``compute_map`` and
    ``out_dtype``; it is stored as the ``divnoising`` root attribute, written last.
    """
    zarr = _require_zarr()
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(p), mode="w-", zarr_format=3)
    except PermissionError:
        raise _permission_denied(p) from None
    except OSError as exc:
        raise DivNoisingError(f"Cannot create {p}: {exc.strerror or exc}") from None
    except Exception as exc:  # zarr: ContainsGroupError / ContainsArrayError
        raise DivNoisingError(f"Cannot create {p} ({type(exc).__name__}: {exc}).") from None
    axes = source.axis_dicts
    lead = source.lead_shape
    ny, nx, side = info["grid"]
    fh, fw = source.frame_shape
    dtype = info["out_dtype"]
    base_scale = list(source.scale)
    try:
        shapes, chunks, scales = [], [], []
        for level in range(info["levels"]):
            lh, lw = level_shape(source.frame_shape, level)
            ch, cw = (lh, lw) if ny == nx == 1 else (min(lh, side >> level), min(lw, side >> level))
            shapes.append((*lead, lh, lw))
            chunks.append((*(1,) * len(lead), ch, cw))
            scales.append(base_scale[:-2] + [base_scale[-2] * fh / lh, base_scale[-1] * fw / lw])
        _image_arrays(root, "mmse", shapes, chunks, scales, axes, dtype)
        single = {"shapes": shapes[:1], "chunks": chunks[:1], "scales": scales[:1], "axes": axes}
        _image_arrays(root.create_group("variance"), "variance", dtype="float32", **single)
        if info["compute_map"]:
            _image_arrays(root.create_group("map"), "map", dtype=dtype, **single)
        k = int(info["keep_samples"])
        if k:
            pos = samples_axis_position(source)
            s_axes = axes[:pos] + [{"name": "sample", "type": "sample"}] + axes[pos:]
            _image_arrays(
                root.create_group("samples"), "samples",
                shapes=[shapes[0][:pos] + (k,) + shapes[0][pos:]], chunks=[chunks[0][:pos] + (1,) + chunks[0][pos:]],
                scales=[scales[0][:pos] + [1.0] + scales[0][pos:]], axes=s_axes, dtype=dtype,
            )
        root.create_array(
            DONE_ARRAY, shape=(source.n_frames, ny, nx), chunks=(1, 1, 1), dtype="uint8", fill_value=0,
            compressors=None,
        )
        root.attrs["divnoising"] = {"version": STORE_VERSION, **info}
    except PermissionError:
        raise _permission_denied(p) from None
    except OSError as exc:
        raise DivNoisingError(f"Cannot write {p}: {exc.strerror or exc}") from None


def read_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``divnoising`` block of a results store, or None when ``path`` is not a finished-creation results store."""
    zarr = _require_zarr()
    try:
        root = zarr.open_group(str(path), mode="r")
        info = root.attrs.get("divnoising")
    except Exception:  # not a group, damaged metadata
        return None
    return dict(info) if isinstance(info, dict) else None


def remove_store(path: str | os.PathLike) -> None:
    """Delete a store (``--force``); refuses anything that is not a folder."""
    p = Path(path)
    if p.is_dir():
        try:
            shutil.rmtree(p)
        except OSError as exc:
            raise DivNoisingError(f"Cannot remove {p} to start over: {exc.strerror or exc}") from None
    elif p.exists():
        raise DivNoisingError(f"{p} is a file, not a Zarr store; remove it or choose another place for the results.")


def done_units(path: str | os.PathLike) -> np.ndarray:
    """Completion markers (frames, rows, cols) as booleans; an unreadable marker counts as not done."""
    zarr = _require_zarr()
    done = zarr.open_array(str(Path(path) / DONE_ARRAY), mode="r")
    try:
        return np.asarray(done[...]) == 1
    except Exception:  # a damaged marker chunk: read one by one
        out = np.zeros(done.shape, bool)
        for idx in np.ndindex(*done.shape):
            try:
                out[idx] = int(done[idx]) == 1
            except Exception:
                out[idx] = False
        return out


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Open a results store lazily: ``{"mmse": [level arrays], "variance", "map", "samples", "info", "axes", "scale"}``.

    Arrays are Zarr arrays (read on indexing); absent outputs are None. ``scale`` holds the per-axis
    pixel sizes of each MMSE level; ``complete`` is the fraction of units written.
    """
    zarr = _require_zarr()
    info = read_info(path)
    if info is None:
        raise DivNoisingError(f"{path} is not a DivNoising results store.")
    root = zarr.open_group(str(path), mode="r")
    ms = root.attrs["ome"]["multiscales"][0]
    levels = [root[d["path"]] for d in ms["datasets"]]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]

    def image(name: str) -> Any:
        return root[name]["0"] if name in root else None

    done = done_units(path)
    return {
        "mmse": levels,
        "variance": image("variance"),
        "map": image("map"),
        "samples": image("samples"),
        "info": info,
        "axes": [a["name"] for a in ms["axes"]],
        "scale": scales,
        "complete": float(done.mean()) if done.size else 1.0,
    }
