"""Checks at the door of the public API: argument types and values, data ranges, finite results.

Every check raises :class:`~napari_divnoising.errors.DivNoisingError` (a
``ValueError``) with one line saying what is wrong and what to do, so that a
wrong argument never surfaces as an ``AttributeError`` or ``TypeError`` from
deep inside, and a wrong number is never silently rounded (``n_samples=2.5``).
The ``*_warning`` functions return a message (or None) for data that can be
used but probably should not be: the caller shows it (CLI ``warning:`` line,
viewer notification).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any

import numpy as np

from .errors import DivNoisingError
from .orientations import OFFSET_CHOICES, ORIENTATION_CHOICES

PRECISIONS = ("auto", "float32", "bfloat16", "float16")

#: Aliases of "co-learn a Gaussian noise model" accepted by ``train``.
COLEARN_NAMES = ("gaussian", "colearn", "co-learn", "co-learned")
#: The noise-model argument that asks for a GMM estimated from the training images alone.
ESTIMATED_NAME = "estimated"


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _cap(text: str) -> str:
    """Capitalise a description at the start of a sentence ("the seed" -> "The seed"), not an identifier."""
    return "T" + text[1:] if text.startswith("the ") else text


def check_int(value: Any, name: str, minimum: int | None = None, allow_none: bool = False) -> None:
    """Refuse anything but a whole number (Python or numpy int; not bool, not float) of at least ``minimum``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        extra = " or None" if allow_none else ""
        raise DivNoisingError(f"{_cap(name)} must be a whole number{extra}; got {_describe(value)}.")
    if minimum is not None and value < minimum:
        raise DivNoisingError(f"{_cap(name)} must be at least {minimum}; got {value}.")


def check_number(value: Any, name: str, positive: bool = False, allow_none: bool = False) -> None:
    """Refuse anything but a finite real number (not bool), positive when asked."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        extra = " or None" if allow_none else ""
        raise DivNoisingError(f"{_cap(name)} must be a finite number{extra}; got {_describe(value)}.")
    if positive and not value > 0:
        raise DivNoisingError(f"{_cap(name)} must be positive; got {value}.")


def check_bool(value: Any, name: str) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise DivNoisingError(f"{name} must be True or False; got {_describe(value)}.")


def check_model(model: Any, what: str = "model") -> None:
    """Refuse anything but a :class:`~napari_divnoising.model.DivNoisingModel`; a path gets a load_model hint."""
    from .model import DivNoisingModel

    if isinstance(model, DivNoisingModel):
        return
    if isinstance(model, (str, os.PathLike)):
        raise DivNoisingError(
            f"{what} must be a loaded DivNoisingModel, not a file name; load it first: "
            f"load_model({os.fspath(model)!r})."
        )
    raise DivNoisingError(
        f"{what} must be a DivNoisingModel (from train() or load_model()); got {_describe(model)}."
    )


def check_image(image: Any, what: str = "image") -> None:
    """Refuse None and file names where pixel data are expected (the shape and values are checked later)."""
    if image is None:
        raise DivNoisingError(f"{what} is None; give a 2-D image or a 3-D stack (a numpy array).")
    if isinstance(image, (str, bytes, os.PathLike)):
        raise DivNoisingError(
            f"{what} must be pixel data, not a file name ({image!r}); read the file first "
            "(napari_divnoising.io.read_tiff)."
        )
    if isinstance(image, (dict, set)) or np.isscalar(image):
        raise DivNoisingError(f"{what} must be a 2-D image or a 3-D stack (a numpy array); got {_describe(image)}.")


def check_path(path: Any, name: str, allow_none: bool = False) -> None:
    if path is None and allow_none:
        return
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes) or not os.fspath(path).strip():
        raise DivNoisingError(f"{name} must be a file path (str or pathlib.Path); got {_describe(path)}.")


def check_device(device: Any, allow_none: bool = True) -> None:
    if device is None and allow_none:
        return
    import torch

    if not isinstance(device, (str, torch.device)):
        raise DivNoisingError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {_describe(device)}.")


def check_predict_args(
    model: Any,
    image: Any,
    n_samples: Any = 100,
    *,
    batch_size: Any = None,
    tile_size: Any = None,
    tiles_per_call: Any = None,
    device: Any = None,
    seed: Any = None,
    keep_samples: Any = 10,
    compute_map: Any = False,
    precision: Any = "auto",
    orientations: Any = 8,
    offsets: Any = 2,
    name: Any = "image",
    **_others: Any,
) -> None:
    """Check the arguments of :func:`~napari_divnoising.prediction.predict_iter`.

    Called first thing in ``predict_iter`` as ``check_predict_args(**locals())``.
    """
    check_model(model)
    check_image(image)
    check_int(n_samples, "the number of samples (n_samples)", 1)
    check_int(batch_size, "the batch size (batch_size)", 1, allow_none=True)
    check_int(tile_size, "the tile size (tile_size)", 1, allow_none=True)
    check_int(tiles_per_call, "the number of tiles per call (tiles_per_call)", 1, allow_none=True)
    check_device(device)
    check_int(seed, "the seed", 0, allow_none=True)
    check_int(keep_samples, "the number of kept samples (keep_samples)", 0)
    check_bool(compute_map, "compute_map")
    if precision not in PRECISIONS:
        raise DivNoisingError(f"precision must be one of {', '.join(PRECISIONS)}; got {_describe(precision)}.")
    if isinstance(orientations, bool) or orientations not in ORIENTATION_CHOICES:
        raise DivNoisingError(f"the number of orientations must be 1, 2, 4 or 8; got {_describe(orientations)}.")
    if isinstance(offsets, bool) or offsets not in OFFSET_CHOICES:
        raise DivNoisingError(f"the number of grid offsets must be 1 or 2; got {_describe(offsets)}.")
    if not isinstance(name, str):
        raise DivNoisingError(f"name must be a string; got {_describe(name)}.")


def check_generate_args(
    model: Any,
    count: Any,
    size: Any,
    *,
    batch_size: Any = None,
    tile_size: Any = None,
    device: Any = None,
    seed: Any = None,
    precision: Any = "auto",
    **_others: Any,
) -> None:
    """Check the arguments of :func:`~napari_divnoising.prediction.generate_prior_iter` (``**locals()``)."""
    check_model(model)
    check_int(count, "the number of images (count)", 1)
    sizes = [size] if np.ndim(size) == 0 else list(size) if np.ndim(size) == 1 else None
    if sizes is None or len(sizes) not in (1, 2):
        raise DivNoisingError(f"size must be a whole number or (height, width); got {_describe(size)}.")
    for value in sizes:
        check_int(value, "the image size (size)", 1)
    check_int(batch_size, "the batch size (batch_size)", 1, allow_none=True)
    check_int(tile_size, "the tile size (tile_size)", 1, allow_none=True)
    check_device(device)
    check_int(seed, "the seed", 0, allow_none=True)
    if precision not in PRECISIONS:
        raise DivNoisingError(f"precision must be one of {', '.join(PRECISIONS)}; got {_describe(precision)}.")


def check_noise_model_arg(noise_model: Any) -> None:
    """A GMM or Gaussian noise model, None or 'gaussian' (co-learn), 'estimated' (a GMM estimated from the
    images), or a positive sigma."""
    from .noise_models import GaussianNoiseModel, GMMNoiseModel

    if noise_model is None or isinstance(noise_model, (GMMNoiseModel, GaussianNoiseModel)):
        return
    if isinstance(noise_model, str):
        if noise_model.lower() in (*COLEARN_NAMES, ESTIMATED_NAME):
            return
        if noise_model.lower().endswith(".npz"):
            raise DivNoisingError(
                f"noise_model must be a noise model, not a file name; load it first: load_gmm_npz({noise_model!r})."
            )
    elif isinstance(noise_model, numbers.Real) and not isinstance(noise_model, bool):
        check_number(noise_model, "noise_model (a Gaussian noise sigma)", positive=True)
        return
    raise DivNoisingError(
        "noise_model must be a GMMNoiseModel or GaussianNoiseModel, 'gaussian' (or None) to co-learn one, "
        f"'estimated' to estimate a GMM from the images, or a positive noise sigma; got {_describe(noise_model)}."
    )


def check_training_config(config: Any) -> None:
    """None or a TrainingConfig whose fields have their documented types (whole numbers stay whole)."""
    from .training import TrainingConfig

    if config is None:
        return
    if not isinstance(config, TrainingConfig):
        hint = ""
        if isinstance(config, dict):
            items = ", ".join(f"{k}={v!r}" for k, v in list(config.items())[:3])
            hint = f"; use TrainingConfig({items})"
        raise DivNoisingError(f"config must be a TrainingConfig or None; got {_describe(config)}{hint}.")
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind = str(f.type).replace(" ", "")
        optional = kind.endswith("|None")
        base = kind.removesuffix("|None")
        if base == "int":
            check_int(value, f"config.{f.name}", allow_none=optional)
        elif base == "float":
            check_number(value, f"config.{f.name}", allow_none=optional)
        elif base == "bool":
            check_bool(value, f"config.{f.name}")
        elif base == "str" and not (isinstance(value, str) or (optional and value is None)):
            raise DivNoisingError(f"config.{f.name} must be a string; got {_describe(value)}.")


def check_train_args(
    images: Any, noise_model: Any = "gaussian", config: Any = None, resume: Any = None, checkpoint_path: Any = None,
    **_others: Any,
) -> None:
    """Check the arguments of :func:`~napari_divnoising.training.train_iter`.

    Meant to be called first thing in ``train_iter`` as ``check_train_args(**locals())``.
    """
    check_image(images, "images")
    check_noise_model_arg(noise_model)
    check_training_config(config)
    if resume is not None:
        check_model(resume, "resume")
    check_path(checkpoint_path, "checkpoint_path", allow_none=True)


# ---------------------------------------------------------------------- ranges


def _percentiles(values: np.ndarray, q: tuple[float, ...] = (1, 50, 99)) -> np.ndarray:
    flat = np.asarray(values).ravel()
    step = max(1, flat.size // 200_000)
    return np.percentile(flat[::step].astype(np.float64), q)


def noise_model_range_warning(noise_model: Any, values: np.ndarray, what: str = "the data") -> str | None:
    """A warning when the data's range (1st-99th percentile) lies outside a GMM noise model's signal range.

    Both ways: data reaching beyond the range, and data in a different range altogether (a 16-bit
    noise model on 8-bit data). The margin is 10% of the smaller of the two ranges.
    """
    from .noise_models import GMMNoiseModel

    if not isinstance(noise_model, GMMNoiseModel):
        return None
    low, _mid, high = (float(v) for v in _percentiles(values))
    lo, hi = float(noise_model.min_signal), float(noise_model.max_signal)
    margin = 0.1 * max(min(hi - lo, high - low), 0.0)
    below, above = lo - margin - low, high - (hi + margin)
    if below <= 0 and above <= 0:
        return None
    inside = max(0.0, min(high, hi) - max(low, lo)) / max(high - low, 1e-30)
    how = (
        f"{inside:.0%} of the data's range is covered" if inside > 0 else "the ranges do not overlap at all"
    )
    return (
        f"The GMM noise model covers signals {lo:g} to {hi:g}, but {what} range from about {low:g} to {high:g} "
        f"(1st-99th percentile): {how}. The noise model extrapolates outside its range, which can ruin "
        "denoising: fit the noise model on calibration data recorded like these images (same camera, gain and "
        "bit depth)."
    )


def prediction_range_warning(model: Any, image: np.ndarray, name: str = "the input") -> str | None:
    """A warning when ``image`` is far from the data the model was trained on (its mean and std).

    Far means: the input's median more than 4 training standard deviations from the training mean,
    or its spread (1st-99th percentile) more than 10 times larger or smaller than 4 training std.
    """
    if getattr(model, "data_mean", None) is None or getattr(model, "data_std", None) is None:
        return None  # no training statistics to compare with
    mean, std = float(model.data_mean), float(model.data_std)
    if not std > 0:
        return None
    low, mid, high = (float(v) for v in _percentiles(image))
    if not all(np.isfinite((low, mid, high))):
        return None  # NaN / inf input is refused by the input checks, with its own message
    shift = (mid - mean) / std
    ratio = (high - low) / (4 * std)
    if abs(shift) <= 4 and 0.1 <= ratio <= 10:
        return None
    parts = []
    if abs(shift) > 4:
        parts.append(f"its median is {abs(shift):.0f} training standard deviations {'above' if shift > 0 else 'below'}")
    if not 0.1 <= ratio <= 10:
        parts.append(f"its spread is {ratio:.2g} times the training data's")
    scale = (4 * std) / (high - low) if high > low else 1.0
    return (
        f"{name} (values {low:g} to {high:g}, 1st-99th percentile) is far from the data the model was trained on "
        f"(mean {mean:g}, std {std:g}): {' and '.join(parts)}. The results will be unreliable: predict images "
        f"recorded like the training data, rescale this one (about x{scale:.3g}), or train a model on it."
    )


def check_finite_result(arrays: dict[str, Any], name: str = "the input", hint: str | None = None) -> None:
    """Refuse results holding NaN or infinite values (never write them): name the outputs and what to do."""
    bad = [kind for kind, arr in arrays.items() if arr is not None and not np.isfinite(np.asarray(arr)).all()]
    if bad:
        hint = hint or (
            "The input is probably far outside the range of the training data: rescale it like the training "
            "data or train a model on data like it."
        )
        raise DivNoisingError(
            f"The {', '.join(bad)} result(s) for {name} contain NaN or infinite values (a numerical overflow), "
            f"so nothing was written. {hint}"
        )
