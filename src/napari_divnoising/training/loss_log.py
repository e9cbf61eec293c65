"""The loss of every step, read back from the device in groups (one host sync per group)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import DivNoisingError


class DivergedLossError(DivNoisingError):
    """A step's loss was not finite (``step``: that step)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class LossLog:
    """Collects each step's loss terms on the device and records them in the history in groups.

    On a GPU, reading a loss back to the host waits for the device; doing it once per ``interval``
    steps keeps the device busy. A diverged (non-finite) loss raises :class:`DivergedLossError` when it is
    read back; the steps before it are recorded.

    Parameters
    ----------
    history
        The model's history; ``train_steps``, ``train_loss`` and ``train_kl`` are appended to.
    interval
        Steps per read-back.
    start_step
        Step count before this run.
    on_kl
        Called with (step, KL per pixel) for every step read back (the collapse monitor).
    noise_model
        A co-learned noise model whose ``a`` and ``b`` are read at each read-back, or None.
    """

    def __init__(self, history: dict[str, Any], interval: int, start_step: int,
                 on_kl: Callable[[int, float], None], noise_model: Any = None):
        self.history = history
        self.interval = max(1, int(interval))
        self.on_kl = on_kl
        self.noise_model = noise_model
        self.pending: list[tuple[int, torch.Tensor]] = []
        #: (step, loss, reconstruction, KL) of the latest step read back
        self.last: tuple[int, float, float, float] = (start_step, math.nan, math.nan, math.nan)
        #: the co-learned noise model's (a, b) at the latest read-back
        self.noise_ab: tuple[float | None, float | None] = (None, None)

    def add(self, step: int, loss: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor) -> None:
        """Keep a step's loss terms (on their device)."""
        self.pending.append((step, torch.stack([loss.detach(), recon.detach(), kl.detach()])))

    @property
    def full(self) -> bool:
        """Whether a read-back is due."""
        return len(self.pending) >= self.interval

    def read_back(self) -> None:
        """Copy the pending loss terms to the host, record them, and refuse a diverged run."""
        if not self.pending:
            return
        values = torch.stack([t for _, t in self.pending]).tolist()
        steps = [s for s, _ in self.pending]
        self.pending.clear()
        history = self.history
        for s, (loss_f, recon_f, kl_f) in zip(steps, values, strict=True):
            if not math.isfinite(loss_f):
                raise DivergedLossError(
                    f"Training diverged at step {s} (loss {loss_f}); try a smaller learning rate or a "
                    "better-matched noise model. The best model so far is kept.", s
                )
            history["train_steps"].append(s)
            history["train_loss"].append(loss_f)
            history["train_kl"].append(kl_f)
            self.on_kl(s, kl_f)
            self.last = (s, loss_f, recon_f, kl_f)
        if self.noise_model is not None:
            self.noise_ab = (self.noise_model.a, self.noise_model.b)
