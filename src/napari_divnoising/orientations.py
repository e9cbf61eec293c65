"""Views of an image: the four rotations by 90 degrees, their mirror images, and grid offsets.

Fluorescence images have no preferred orientation, and the noise is independent per pixel, so a
posterior sample of a rotated or mirrored image, turned back, is as good a sample of the image
itself. The network's errors, however, depend on the orientation; spreading the samples of a
frame over several orientations averages those errors out of the MMSE (docs/method.md, 6).

The same holds for where the network's latent grid falls on the image: the encoder pools
``size_multiple`` x ``size_multiple`` pixel blocks into one latent cell, so a frame shifted by half
a cell (padded at the top and left, the padding cut off the samples) is seen through another grid.
A *view* is one orientation at one grid offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where views are made, so that the command line starts fast
    import torch

#: The numbers of orientations :func:`~napari_divnoising.prediction.predict_iter` accepts: the first
#: 1, 2, 4 or 8 of (identity, 90, 180, 270 degrees, then each of them mirrored left-right).
ORIENTATION_CHOICES = (1, 2, 4, 8)
DEFAULT_ORIENTATIONS = 8

#: The numbers of latent-grid offsets :func:`~napari_divnoising.prediction.predict_iter` accepts: 1 (the grid
#: as it falls) or 2 (also shifted by half a latent cell down and right).
OFFSET_CHOICES = (1, 2)
DEFAULT_OFFSETS = 2


@dataclass(frozen=True)
class View:
    """One way of presenting a frame to the network: an orientation (0-7, see :func:`orient`) and a shift
    ``offset`` (pixels of padding added at the top and the left of the oriented frame)."""

    orientation: int
    offset: int

    def apply(self, frame: torch.Tensor) -> torch.Tensor:
        """``frame`` (..., Y, X) turned and shifted into this view, on the frame's device (a new contiguous
        tensor; the frame itself for the first view)."""
        return shift(orient(frame, self.orientation), self.offset)

    def shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The (Y, X) shape of a ``shape`` frame in this view."""
        h, w = oriented_shape(shape, self.orientation)
        return h + self.offset, w + self.offset


def plan_views(n_samples: int, orientations: int, offsets: int, size_multiple: int) -> list[tuple[View, int]]:
    """The views of a frame and how many of ``n_samples`` samples each gets (:func:`split_samples` over
    ``orientations * offsets`` views; every orientation at the first offset comes first).

    The second offset is half a latent cell, ``size_multiple // 2`` pixels (at least 1).
    """
    counts = split_samples(n_samples, int(orientations) * int(offsets))
    half_cell = max(1, int(size_multiple) // 2)
    return [(View(i % orientations, (i // orientations) * half_cell), count) for i, count in enumerate(counts)]


def views_used(n_samples: int, orientations: int, offsets: int) -> tuple[int, int]:
    """How many orientations and grid offsets :func:`plan_views` uses for ``n_samples`` samples (fewer samples
    than views: the first views only)."""
    n_views = len(split_samples(n_samples, int(orientations) * int(offsets)))
    return min(int(orientations), n_views), -(-n_views // int(orientations))


def shift(frame: torch.Tensor, offset: int) -> torch.Tensor:
    """``frame`` (..., Y, X) padded with ``offset`` mirrored rows at the top and columns at the left (repeated
    edge pixels where the frame is too small to mirror)."""
    if offset == 0:
        return frame
    from torch.nn import functional

    mode = "reflect" if min(frame.shape[-2:]) > offset else "replicate"
    padded = functional.pad(frame.reshape(1, -1, *frame.shape[-2:]), (offset, 0, offset, 0), mode=mode)
    return padded.reshape(*frame.shape[:-2], *padded.shape[-2:])


def orient(frame: torch.Tensor, index: int) -> torch.Tensor:
    """``frame`` (..., Y, X) in orientation ``index`` (0-7), as a new contiguous tensor (the frame itself for 0)."""
    import torch

    if index == 0:
        return frame
    turned = torch.rot90(frame, index % 4, dims=(-2, -1))
    if index >= 4:
        turned = torch.flip(turned, dims=(-1,))
    return turned.contiguous()


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
