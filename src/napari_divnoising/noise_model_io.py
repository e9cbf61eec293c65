"""GMM noise models as ``.npz`` files, in the layout of the reference code.

The reference DivNoising / PPN2V code and CAREamics'
``GaussianMixtureNoiseModel`` read four arrays: ``trained_weight``
(3K, n_coeff) float32, ``min_signal`` (1,) float32, ``max_signal`` (1,)
float32 and ``min_sigma`` (a 0-d array; the reference writes the Python
number it was given, CAREamics calls ``.item()`` on it). We write exactly
those plus ``description`` (a 0-d unicode array saying how the model was
fitted), which other readers ignore.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch

from .atomic import as_path, atomic_write_bytes, ensure_folder
from .errors import DivNoisingError
from .noise_models import GMMNoiseModel

REFERENCE_KEYS = ("trained_weight", "min_signal", "max_signal", "min_sigma")


def save_gmm_npz(model: GMMNoiseModel, path: str | Path, description: str = "") -> Path:
    """Write ``model`` to ``path`` (``.npz``) with the reference keys; returns the path written.

    The file is written to a temporary name, flushed to disk and moved into
    place (:func:`~napari_divnoising.atomic.atomic_write_bytes`), so an
    interrupted or failed save never leaves a truncated file or a temporary
    file behind and keeps any previous file byte for byte; OS errors raise
    :class:`~napari_divnoising.atomic.WriteError` with one clear line.
    """
    if not isinstance(model, GMMNoiseModel):
        raise DivNoisingError(f"Only GMM noise models can be saved as .npz; got {type(model).__name__}.")
    path = as_path(path, "noise model path")
    if path.suffix.lower() != ".npz":
        raise DivNoisingError(f"Noise model files end in .npz; got {path.name}.")
    arrays = {
        "trained_weight": model.weight.detach().cpu().numpy().astype(np.float32),
        "min_signal": np.array([float(model.min_signal)], dtype=np.float32),
        "max_signal": np.array([float(model.max_signal)], dtype=np.float32),
        "min_sigma": np.array(float(model.min_variance), dtype=np.float64),  # the reference key name
        "description": np.array(str(description)),
    }
    if path.is_dir():
        raise DivNoisingError(f"{path} is a folder; give a file name for the noise model.")
    ensure_folder(path.parent)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getbuffer())


#: First bytes of a zip archive (an .npz file; the second form is an empty archive) and of a .npy file.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise DivNoisingError(f"Noise model file not found: {path}")
    if path.is_dir():
        raise DivNoisingError(f"Expected a noise model .npz file but got a folder: {path}")
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
    except OSError as exc:
        raise DivNoisingError(f"Could not read {path}: {exc.strerror or exc}.") from None
    if not head:
        raise DivNoisingError(f"{path} is empty; it is not a noise model .npz file.")
    if not head.startswith(_ZIP_MAGIC) and not head.startswith(_NPY_MAGIC):
        raise DivNoisingError(
            f"Could not read {path} as a noise model .npz file: it is not a zip archive (corrupt, truncated or "
            "another format); fit one with `divnoising fit-noise-model`."
        )
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # a plain .npy file gives an array
            raise DivNoisingError(f"{path} is a single .npy array, not a noise model .npz file.")
        with data:
            return {key: data[key] for key in data.files}
    except DivNoisingError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DivNoisingError(
            f"Could not read {path} as a noise model .npz file ({type(exc).__name__}: {exc})."
        ) from None


def read_description(path: str | Path) -> str:
    """The ``description`` stored with a noise model file ('' for files from other tools)."""
    arrays = _read_arrays(as_path(path, "noise model file"))
    value = arrays.get("description")
    return str(value) if value is not None and value.dtype.kind == "U" else ""


def load_gmm_npz(path: str | Path) -> GMMNoiseModel:
    """Read a GMM noise model written by us, the reference DivNoising / PPN2V code or CAREamics."""
    path = as_path(path, "noise model file")
    arrays = _read_arrays(path)
    missing = [key for key in REFERENCE_KEYS if key not in arrays]
    if missing:
        raise DivNoisingError(
            f"{path} is not a GMM noise model file: missing {', '.join(missing)} "
            f"(expected keys {', '.join(REFERENCE_KEYS)})."
        )
    weight = arrays["trained_weight"]
    if weight.dtype.kind not in "fiu" or weight.ndim != 2 or weight.shape[0] % 3 != 0 or weight.size == 0:
        raise DivNoisingError(
            f"{path}: trained_weight must be a numeric (3K, n_coeff) array; got {weight.dtype} {weight.shape}."
        )
    values = {}
    for key in ("min_signal", "max_signal", "min_sigma"):
        arr = arrays[key]
        if arr.dtype.kind not in "fiu" or arr.size != 1:
            raise DivNoisingError(f"{path}: {key} must be a single number; got {arr.dtype} of shape {arr.shape}.")
        values[key] = float(arr.reshape(-1)[0])
    if not np.isfinite(weight).all() or not all(np.isfinite(v) for v in values.values()):
        raise DivNoisingError(f"{path} contains NaN or infinite values; it is not a usable noise model.")
    if not values["max_signal"] > values["min_signal"]:
        raise DivNoisingError(
            f"{path}: max_signal ({values['max_signal']:g}) must exceed min_signal ({values['min_signal']:g})."
        )
    if not values["min_sigma"] > 0:
        raise DivNoisingError(f"{path}: min_sigma (the variance floor) must be positive; got {values['min_sigma']:g}.")
    return GMMNoiseModel(
        torch.as_tensor(weight.astype(np.float32)), values["min_signal"], values["max_signal"], values["min_sigma"]
    )
