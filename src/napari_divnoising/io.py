"""Reading images and checking that they are usable single-channel 2-D data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DivNoisingError


def read_tiff(path: str | Path) -> np.ndarray:
    """Read a TIFF file into a numpy array, with a clear error if that fails."""
    import tifffile

    path = Path(path)
    if not path.exists():
        raise DivNoisingError(f"File not found: {path}")
    if path.is_dir():
        raise DivNoisingError(f"Expected a TIFF file but got a folder: {path}")
    try:
        return tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for bad files
        raise DivNoisingError(f"Could not read {path} as a TIFF image ({type(exc).__name__}: {exc})") from None


def _looks_rgb(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4 and shape[1] > 4


def as_image_stack(
    data: np.ndarray,
    *,
    name: str = "image",
    min_frames: int = 1,
    min_size: int | None = None,
    rgb: bool | None = None,
) -> np.ndarray:
    """Check an image or stack and return it as float32 of shape (frames, Y, X).

    A 2-D array is one frame; a 3-D array is a stack of frames (T, Z or S).
    Leading singleton axes are dropped. Raises :class:`DivNoisingError` with a
    message for the user for RGB or multichannel data, more than three
    dimensions, empty data, NaN/inf values, constant data, too few frames, or
    frames smaller than ``min_size`` pixels on a side.

    Parameters
    ----------
    data
        The array.
    name
        How to call the data in messages (a file or layer name).
    min_frames
        Least number of frames required (2 for a calibration stack).
    min_size
        Least height and width in pixels (e.g. the patch size).
    rgb
        Whether the source says the data is RGB (napari's ``layer.rgb``);
        ``None`` guesses from the shape.
    """
    arr = np.asarray(data)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DivNoisingError(f"{name}: unsupported data type {arr.dtype}; expected integer or float pixels.")
    if arr.size == 0:
        raise DivNoisingError(f"{name} is empty (shape {arr.shape}).")
    # Drop leading singleton axes first so that a (1, Y, X, 3) RGB array is still recognised.
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if rgb or (rgb is None and _looks_rgb(arr.shape)):
        raise DivNoisingError(
            f"{name} looks like an RGB/multichannel image (shape {arr.shape}); DivNoising needs "
            "single-channel data. Split the channels and use one."
        )
    if arr.ndim < 2:
        raise DivNoisingError(f"{name} has {arr.ndim} dimension(s); expected a 2-D image or a 3-D stack.")
    if arr.ndim > 3:
        raise DivNoisingError(
            f"{name} has {arr.ndim} dimensions (shape {arr.shape}); expected a 2-D image or a 3-D "
            "stack (frames, Y, X). Multichannel or 4-D data: pick one channel or reshape to frames."
        )
    stack = arr[None] if arr.ndim == 2 else arr
    if stack.shape[0] < min_frames:
        raise DivNoisingError(f"{name} has {stack.shape[0]} frame(s); at least {min_frames} are needed.")
    if min_size is not None and min(stack.shape[1:]) < min_size:
        raise DivNoisingError(
            f"{name} frames are {stack.shape[1]}x{stack.shape[2]} pixels, smaller than {min_size}x{min_size}; "
            "use a smaller patch size or a larger image."
        )
    stack = stack.astype(np.float32, copy=True)
    finite = np.isfinite(stack)
    if not finite.all():
        bad = int(stack.size - np.count_nonzero(finite))
        raise DivNoisingError(f"{name} contains {bad} NaN or infinite value(s); clean or crop the data first.")
    if float(stack.max()) == float(stack.min()):
        raise DivNoisingError(f"{name} is constant (every pixel is {stack.flat[0]:g}); there is nothing to denoise.")
    return stack
