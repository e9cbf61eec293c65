"""Exponential moving average (EMA) of the network weights.

Small batches make the last weights of a short run noisy; their running average is a
better denoiser than any single iterate (Polyak averaging). Validation, the best-model
copy, checkpoints and the returned model all use the averaged weights; the optimizer keeps
updating the live ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class WeightAverage:
    """An exponential moving average of the floating-point parameters of ``network``.

    Parameters
    ----------
    network
        The network whose parameters are averaged (in place of it during :meth:`applied`).
    decay
        Weight of the old average at each update; the effective decay is
        ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average does not
        remember the random initial weights for long in short runs.
    """

    def __init__(self, network: nn.Module, decay: float):
        self.network = network
        self.decay = float(decay)
        self.updates = 0
        self._live = [p for p in network.parameters() if p.dtype.is_floating_point]
        self._average = [p.detach().clone() for p in self._live]

    def update(self) -> None:
        """Move the average towards the current weights (call after each optimizer step)."""
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self._average, [p.detach() for p in self._live], 1.0 - decay)

    def reset(self) -> None:
        """Restart the average from the current weights (e.g. after new random weights)."""
        self.updates = 0
        with torch.no_grad():
            for average, live in zip(self._average, self._live):
                average.copy_(live)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the network holds the averaged weights; the live ones come back after it."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self._live]
            for live, average in zip(self._live, self._average):
                live.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for live, kept in zip(self._live, saved):
                    live.copy_(kept)

    def copy_to_network(self) -> None:
        """Replace the live weights by the average (at the end of training)."""
        with torch.no_grad():
            for live, average in zip(self._live, self._average):
                live.copy_(average)
