"""Reading images and checking that they are usable single-channel 2-D data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DivNoisingError

#: Largest absolute pixel value accepted: noise models hold variances (squared units) in float32,
#: which overflow near 3.4e38, so values (and their spread) must stay well below 1e19.
MAX_ABS_VALUE = 1e15

#: Smallest spread of values accepted: float32 variances of smaller spreads underflow.
MIN_SPAN = 1e-15

#: Least spread relative to the magnitude: float32 keeps about 7 significant digits.
MIN_RELATIVE_SPAN = 1e-6


def _channel_error(path: Path, axes: str, shape: tuple[int, ...]) -> DivNoisingError | None:
    """A message for files whose metadata (OME-TIFF, ImageJ hyperstack) say they hold several channels.

    RGB samples ('S') are left to :func:`as_image_stack`'s shape check: tifffile tags a plain (3, Y, X)
    stack as planar RGB when it writes one, and such files have always been read as three frames.
    """
    if "C" in axes and shape[axes.index("C")] > 1:
        n = shape[axes.index("C")]
        return DivNoisingError(
            f"{path} has {n} channels (axes {axes}, shape {tuple(shape)}); DivNoising works on one channel at a "
            "time. Split the channels (Fiji: Image > Color > Split Channels) and train one model per channel."
        )
    return None


def tiff_channel_error(path: str | Path, shape: tuple[int, ...] | None = None) -> DivNoisingError | None:
    """The channel message for a TIFF file whose metadata say it holds several channels, else None.

    Only the metadata are read. Given ``shape`` (e.g. of an array another reader made from the file),
    the file's axes only count when its first series has that shape, singleton axes left out on both
    sides; a file that cannot be read, or is not a TIFF, gives None.

    Parameters
    ----------
    path
        The TIFF file.
    shape
        The shape of the data taken from the file, when known.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return None
    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.series:
                return None
            series = tf.series[0]
            axes, file_shape = str(series.axes).upper(), tuple(series.shape)
    except Exception:  # an unreadable file says nothing about the data already read from it
        return None
    if shape is not None:
        squeezed = tuple(int(s) for s in shape if int(s) != 1)
        if squeezed != tuple(s for s in file_shape if s != 1):
            return None
    return _channel_error(path, axes, file_shape)


def read_tiff(path: str | Path) -> np.ndarray:
    """Read a TIFF file into a numpy array, with a clear error if that fails.

    Axes come from the file's metadata (OME-TIFF, ImageJ hyperstack, RGB): a file with more than one
    channel is refused with the channel count, never read as a stack of frames.
    """
    import tifffile

    from .atomic import as_path

    path = as_path(path, "image file")
    if not path.exists():
        raise DivNoisingError(f"File not found: {path}")
    if path.is_dir():
        raise DivNoisingError(f"Expected a TIFF file but got a folder: {path}")
    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.series:
                raise DivNoisingError(f"{path} holds no image data.")
            series = tf.series[0]
            problem = _channel_error(path, str(series.axes).upper(), tuple(series.shape))
            if problem is not None:
                raise problem
            return tf.asarray()
    except DivNoisingError:
        raise
    except MemoryError:
        raise DivNoisingError(f"{path} does not fit in memory; crop it or split it into smaller files.") from None
    except Exception as exc:  # tifffile raises many types for bad files
        raise DivNoisingError(f"Could not read {path} as a TIFF image ({type(exc).__name__}: {exc})") from None


def check_value_range(arr: np.ndarray, name: str = "image") -> None:
    """Refuse NaN/inf values, and values too large, too small or too close together for float32 arithmetic.

    Raises :class:`DivNoisingError` with the offending numbers and what to do (rescale, subtract an offset).
    """
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            raise DivNoisingError(f"{name} contains {bad} NaN or infinite value(s); clean or crop the data first.")
    low, high = float(np.min(arr)), float(np.max(arr))  # exact for integers; no integer overflow
    peak = max(abs(low), abs(high))
    if peak > MAX_ABS_VALUE:
        raise DivNoisingError(
            f"{name} has values up to {peak:.3g} (range {low:.6g} to {high:.6g}); DivNoising computes in float32 "
            f"and accepts values up to {MAX_ABS_VALUE:.0e}. Rescale the data "
            f"(e.g. divide by {10 ** _exponent(peak / 1e4):.0e})."
        )
    span = high - low
    if span == 0:
        raise DivNoisingError(f"{name} is constant (every pixel is {low:g}); there is nothing to denoise.")
    if span < MIN_SPAN:
        raise DivNoisingError(
            f"{name} has values spread over only {span:.3g}; too small for float32 noise variances. "
            f"Rescale the data (e.g. multiply by {10 ** _exponent(1.0 / span):.0e})."
        )
    if span < MIN_RELATIVE_SPAN * peak:
        raise DivNoisingError(
            f"{name} varies by only {span:.3g} around {peak:.6g}, below float32 precision (about 7 digits); "
            f"subtract the offset first (e.g. the minimum, {low:.9g})."
        )


def _exponent(x: float) -> int:
    return int(np.floor(np.log10(max(x, 1.0))))


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
    frames smaller than ``min_size`` pixels on a side, and values float32 cannot
    handle (see :func:`check_value_range`). Torch tensors are accepted.

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
    if hasattr(data, "detach") and hasattr(data, "cpu"):  # a torch tensor (possibly on a GPU, with grad)
        data = data.detach().cpu().numpy()
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise DivNoisingError(f"{name} is not an array of pixel values ({exc}).") from None
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
    check_value_range(stack, name)
    return stack.astype(np.float32, copy=True)
