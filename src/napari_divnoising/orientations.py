"""Orientations of an image: the four rotations by 90 degrees and their mirror images.

Fluorescence images have no preferred orientation, and the noise is independent per pixel, so a
posterior sample of a rotated or mirrored image, turned back, is as good a sample of the image
itself. The network's errors, however, depend on the orientation; spreading the samples of a
frame over several orientations averages those errors out of the MMSE (docs/method.md, 6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where samples are turned back, so that the command line starts fast
    import torch

#: The numbers of orientations :func:`~napari_divnoising.prediction.predict_iter` accepts: the first
#: 1, 2, 4 or 8 of (identity, 90, 180, 270 degrees, then each of them mirrored left-right).
ORIENTATION_CHOICES = (1, 2, 4, 8)
DEFAULT_ORIENTATIONS = 8


def orient(frame: np.ndarray, index: int) -> np.ndarray:
    """``frame`` (..., Y, X) in orientation ``index`` (0-7), as a new contiguous array."""
    turned = np.rot90(frame, index % 4, axes=(-2, -1))
    if index >= 4:
        turned = np.flip(turned, -1)
    return np.ascontiguousarray(turned)


def restore(samples: torch.Tensor, index: int) -> torch.Tensor:
    """Turn ``samples`` (..., Y', X') of a frame in orientation ``index`` back to the frame's own orientation."""
    import torch

    if index >= 4:
        samples = torch.flip(samples, dims=(-1,))
    return torch.rot90(samples, -(index % 4), dims=(-2, -1))


def oriented_shape(shape: tuple[int, int], index: int) -> tuple[int, int]:
    """The (Y, X) shape of a ``shape`` frame in orientation ``index``."""
    return (shape[1], shape[0]) if index % 2 else (shape[0], shape[1])


def split_samples(n_samples: int, orientations: int) -> list[int]:
    """How many of ``n_samples`` samples each orientation gets (as even as possible; never 0)."""
    k = max(1, min(int(orientations), int(n_samples)))
    return [n_samples // k + (1 if i < n_samples % k else 0) for i in range(k)]
