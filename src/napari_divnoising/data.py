"""Training data: checking images, the train/validation split, normalisation and on-the-fly patches.

Patches are cut from the (float32) frames when a batch is needed, so memory
does not grow with the number of patches drawn. Each patch gets one of the
8 symmetries of the square (4 rotations x mirror).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DivNoisingError
from .io import as_image_stack

#: Least number of frames for a split by frames; fewer frames get a held-out band in each frame.
MIN_FRAMES_FOR_FRAME_SPLIT = 5


@dataclass
class TrainingData:
    """Training and validation regions (2-D float32 views), plus the normalisation of the training data.

    Attributes
    ----------
    train_regions, val_regions
        2-D arrays patches are drawn from; validation regions never overlap training regions
        unless ``val_is_held_out`` is False (data too small to hold anything out).
    mean, std
        Mean and standard deviation of all training pixels (raw units).
    split
        ``"frames"``, ``"band"`` or ``"none"``: how validation data was held out.
    """

    train_regions: list[np.ndarray]
    val_regions: list[np.ndarray]
    mean: float
    std: float
    split: str
    warnings: list[str] = field(default_factory=list)

    @property
    def val_is_held_out(self) -> bool:
        return self.split != "none"

    @property
    def n_train_pixels(self) -> int:
        return int(sum(r.size for r in self.train_regions))


def _ndim(item: Any) -> int:
    try:
        return int(np.ndim(item))
    except (ValueError, TypeError):  # ragged nested lists
        return 2


def _image_list(images: Any) -> list[Any]:
    """The images of a training set: one array (ndarray, tensor, 2-D list) is one image or stack."""
    if isinstance(images, (str, bytes, Path)):
        raise DivNoisingError(
            f"Training images must be arrays, not a file name ({images!r}); read the file first "
            "(e.g. napari_divnoising.io.read_tiff)."
        )
    if images is None:
        raise DivNoisingError("No training images were given (got None).")
    if hasattr(images, "__array__") and not isinstance(images, (list, tuple)):
        return [images]  # numpy array, torch tensor, dask/xarray array, napari layer data
    if isinstance(images, (list, tuple)):
        if images and all(_ndim(item) <= 1 for item in images):
            return [images]  # rows of numbers: one 2-D image given as nested lists (or a 1-D list: refused later)
        return list(images)
    try:
        return list(images)
    except TypeError:
        raise DivNoisingError(
            f"Training images must be an array or a list of arrays; got {type(images).__name__}."
        ) from None


def load_frames(images: Iterable[np.ndarray] | np.ndarray, patch_size: int) -> list[np.ndarray]:
    """Check each image or stack (any integer/float dtype) and return its frames as float32 2-D arrays.

    ``images`` is one array (numpy, torch tensor, nested lists: one image or stack) or a list of them.
    """
    frames: list[np.ndarray] = []
    for index, image in enumerate(_image_list(images)):
        name = getattr(image, "name", None) or f"training image {index + 1}"
        stack = as_image_stack(image, name=name, min_size=patch_size)
        frames.extend(stack[i] for i in range(stack.shape[0]))
    if not frames:
        raise DivNoisingError("No training images were given.")
    return frames


def _band_split(frame: np.ndarray, patch_size: int, fraction: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Hold out a band at the end of the longer axis: (train, val) views, or None if the frame is too small."""
    axis = 0 if frame.shape[0] >= frame.shape[1] else 1
    length = frame.shape[axis]
    band = max(patch_size, int(math.ceil(fraction * length)))
    if length - band < patch_size:
        return None
    if axis == 0:
        return frame[: length - band], frame[length - band :]
    return frame[:, : length - band], frame[:, length - band :]


def split_frames(
    frames: Sequence[np.ndarray], patch_size: int, val_fraction: float = 0.15, seed: int = 0
) -> TrainingData:
    """Split frames into training and validation regions and compute the normalisation.

    With at least :data:`MIN_FRAMES_FOR_FRAME_SPLIT` frames, a seeded random
    ``val_fraction`` of whole frames is held out; otherwise a band of rows (or
    columns) at the end of each frame, at least one patch wide. Frames too
    small for either are used for both (with a warning).
    """
    warnings: list[str] = []
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    if len(frames) >= MIN_FRAMES_FOR_FRAME_SPLIT:
        n_val = max(1, int(round(val_fraction * len(frames))))
        order = np.random.default_rng(seed).permutation(len(frames))
        val_ids = set(order[:n_val].tolist())
        train = [f for i, f in enumerate(frames) if i not in val_ids]
        val = [f for i, f in enumerate(frames) if i in val_ids]
        split = "frames"
    else:
        split = "band"
        for frame in frames:
            parts = _band_split(frame, patch_size, val_fraction)
            if parts is None:
                train.append(frame)
                val.append(frame)
                split = "none"
            else:
                train.append(parts[0])
                val.append(parts[1])
        if split == "none":
            warnings.append(
                f"The training images are too small to hold out validation data (need at least "
                f"{2 * patch_size} pixels along one side for patch size {patch_size}); validation uses the "
                "training data, so early stopping is less reliable. Use more or larger images, or a smaller patch size."
            )
    total = sum(r.size for r in train)
    mean = sum(float(r.sum(dtype=np.float64)) for r in train) / total
    var = sum(float(((r.astype(np.float64) - mean) ** 2).sum()) for r in train) / total
    std = math.sqrt(var)
    if not std > 0:
        raise DivNoisingError("The training data are constant; there is nothing to denoise.")
    return TrainingData(train, val, mean, std, split, warnings)


def augment(patch: np.ndarray, symmetry: int) -> np.ndarray:
    """Apply one of the 8 symmetries of the square: ``symmetry % 4`` quarter turns, mirrored if ``>= 4``."""
    out = np.rot90(patch, symmetry % 4)
    return out[:, ::-1] if symmetry >= 4 else out


class PatchSampler:
    """Draw random, randomly augmented square patches from 2-D regions, on the fly.

    A region is chosen with probability proportional to its number of patch
    positions, so every position of every region is equally likely.
    """

    def __init__(self, regions: Sequence[np.ndarray], patch_size: int, rng: np.random.Generator, augment: bool = True):
        self.regions = list(regions)
        self.patch_size = int(patch_size)
        self.rng = rng
        self.augment = augment
        counts = np.array(
            [max(0, (r.shape[0] - patch_size + 1) * (r.shape[1] - patch_size + 1)) for r in self.regions], dtype=float
        )
        if counts.sum() <= 0:
            raise DivNoisingError(f"No region of the training data fits a {patch_size}x{patch_size} patch.")
        self._probabilities = counts / counts.sum()

    def sample(self, batch_size: int, out: np.ndarray | None = None) -> np.ndarray:
        """Return a float32 array (batch_size, patch_size, patch_size) of raw-unit patches."""
        p = self.patch_size
        if out is None:
            out = np.empty((batch_size, p, p), dtype=np.float32)
        which = self.rng.choice(len(self.regions), size=batch_size, p=self._probabilities)
        symmetries = self.rng.integers(0, 8, size=batch_size) if self.augment else np.zeros(batch_size, int)
        for i, (r, sym) in enumerate(zip(which, symmetries)):
            region = self.regions[r]
            y = int(self.rng.integers(0, region.shape[0] - p + 1))
            x = int(self.rng.integers(0, region.shape[1] - p + 1))
            out[i] = augment(region[y : y + p, x : x + p], int(sym))
        return out


def validation_patches(regions: Sequence[np.ndarray], patch_size: int, count: int, seed: int = 0) -> np.ndarray:
    """A fixed set of ``count`` validation patches (no augmentation), drawn once with a seeded generator."""
    sampler = PatchSampler(regions, patch_size, np.random.default_rng(seed + 1_000_003), augment=False)
    return sampler.sample(count)
