"""Events and results of posterior sampling and prior generation.

Arrays that live on an accelerator are handed to the consumer lazily:
:class:`SampleBatch` keeps the device tensors of a batch and copies one to the
host (as a NumPy array) only when the consumer reads it, so a consumer that
only counts samples (a progress bar) causes no host round trip at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..events import Done


def to_host(array: Any) -> np.ndarray:
    """A NumPy view or copy of a tensor (on any device) or array; NumPy arrays are returned as they are."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def copy_to_host(destination: np.ndarray, source: torch.Tensor) -> None:
    """Copy a tensor (any device) into a NumPy array of the same shape, in one transfer when the array is
    contiguous (no intermediate host copy)."""
    if destination.flags.c_contiguous and destination.flags.writeable:
        torch.from_numpy(destination).copy_(source)
    else:
        destination[...] = to_host(source)


class SampleBatch:
    """A new batch of posterior samples of one frame and the running estimates after it.

    Attributes
    ----------
    frame, n_frames
        Index of the frame these samples belong to, and how many frames there are (1 for a 2-D image).
    samples
        The new samples, raw units, shape (b, Y, X).
    done, total
        Samples drawn so far for this frame, and how many are asked for per frame.
    mean, variance
        Running MMSE and per-pixel variance (population variance, ``ddof=0``) of this frame's samples so far.

    ``samples``, ``mean`` and ``variance`` may be given as tensors on any device; each is copied to a
    NumPy array the first time it is read (and only then), and stays valid after later batches.
    """

    __slots__ = ("frame", "n_frames", "done", "total", "_arrays")

    def __init__(self, frame: int, n_frames: int, samples: Any, done: int, total: int, mean: Any, variance: Any):
        self.frame = frame
        self.n_frames = n_frames
        self.done = done
        self.total = total
        self._arrays: dict[str, Any] = {"samples": samples, "mean": mean, "variance": variance}

    def _host(self, key: str) -> np.ndarray:
        value = self._arrays[key]
        if not isinstance(value, np.ndarray):
            value = self._arrays[key] = to_host(value)
        return value

    @property
    def samples(self) -> np.ndarray:
        return self._host("samples")

    @property
    def mean(self) -> np.ndarray:
        return self._host("mean")

    @property
    def variance(self) -> np.ndarray:
        return self._host("variance")

    @property
    def fraction(self) -> float:
        """Fraction of the whole job (all frames) finished."""
        return (self.frame * self.total + self.done) / max(1, self.n_frames * self.total)

    def __repr__(self) -> str:
        return (f"SampleBatch(frame={self.frame}, n_frames={self.n_frames}, done={self.done}, "
                f"total={self.total})")


@dataclass(frozen=True)
class PredictionResult:
    """Final results of a prediction, raw units, with the input's shape.

    Attributes
    ----------
    mmse, variance
        The MMSE estimate (mean of the samples) and the per-pixel variance of the samples.
    map
        The MAP estimate when asked for, else None.
    samples
        The first ``keep_samples`` samples, shape (K, *input shape), or None when none were kept.
    n_samples
        Samples drawn per frame (0 when not known).
    seed
        Seed of the latent noise (None when not known).
    orientations
        Orientations of each frame the samples were spread over (1: the frame as it is).
    offsets
        Latent-grid offsets the samples were spread over (1: the grid as it falls on the frame).
    """

    mmse: np.ndarray
    variance: np.ndarray
    map: np.ndarray | None = None
    samples: np.ndarray | None = None
    n_samples: int = 0
    seed: int | None = None
    orientations: int = 1
    offsets: int = 1


class PredictionDone(Done):
    """Last event of :func:`~napari_divnoising.prediction.predict_iter`; :attr:`result`: a :class:`PredictionResult`."""

    __slots__ = ("_result",)

    def __init__(self, result: PredictionResult):
        self._result = result

    @property
    def result(self) -> PredictionResult:
        return self._result

    def __repr__(self) -> str:
        return f"PredictionDone(n_samples={self._result.n_samples}, seed={self._result.seed})"


@dataclass(frozen=True)
class PriorBatch:
    """A batch of prior samples (raw units, shape (b, h, w)); ``done`` of ``total`` generated."""

    images: np.ndarray
    done: int
    total: int


class PriorDone(Done):
    """Last event of :func:`~napari_divnoising.prediction.generate_prior_iter`: all images, shape (count, h, w)."""

    __slots__ = ("images",)

    def __init__(self, images: np.ndarray):
        self.images = images

    @property
    def result(self) -> np.ndarray:
        return self.images

    def __repr__(self) -> str:
        return f"PriorDone(images of shape {self.images.shape})"
