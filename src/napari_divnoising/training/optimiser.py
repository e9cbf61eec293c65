"""The optimiser of a training run: Adam, a plateau learning-rate schedule and an end-of-budget decay."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .config import TrainingConfig


class Optimiser:
    """Adam whose learning rate is the plateau schedule's rate times a decay over the end of the budget.

    The plateau schedule (``ReduceLROnPlateau``) lowers the rate when the validation loss stalls; the
    decay ramps it down linearly over the last ``lr_decay_fraction`` of the budget, so that a short run
    settles instead of ending mid-oscillation.

    Parameters
    ----------
    parameters
        The trainable parameters (network and, when co-learned, noise model).
    config
        Learning rate, plateau and decay settings.
    saved_state
        :meth:`state` of an earlier run to continue; ignored when it does not fit these parameters.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], config: TrainingConfig,
                 saved_state: dict[str, Any] | None = None):
        self.parameters = list(parameters)
        self.config = config
        self.restart()
        if saved_state:
            try:
                self.optimizer.load_state_dict(saved_state["optimizer"])
                if "scheduler" in saved_state:
                    self.scheduler.load_state_dict(saved_state["scheduler"])
                self.plateau_lr = float(saved_state.get("plateau_lr", config.learning_rate))
            except (KeyError, ValueError, RuntimeError):
                self.restart()  # incompatible (e.g. other trainable parameters): start a fresh optimizer

    def restart(self) -> None:
        """A fresh optimizer and plateau schedule at the configured learning rate."""
        config = self.config
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience,
            min_lr=config.min_learning_rate,
        )
        self.plateau_lr = config.learning_rate

    def budget_decay(self, progress: float) -> float:
        """Factor on the learning rate at ``progress`` (0 to 1) of the budget."""
        fraction, floor = self.config.lr_decay_fraction, self.config.lr_decay_floor
        if fraction <= 0 or progress <= 1 - fraction:
            return 1.0
        return floor + (1 - floor) * max(0.0, 1 - progress) / fraction

    def set_progress(self, progress: float) -> None:
        """Set the learning rate for a step at ``progress`` of the budget."""
        self._set_lr(self.plateau_lr * self.budget_decay(progress))

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self, loss: torch.Tensor, before_update: Callable[[], None] | None = None) -> None:
        """Back-propagate ``loss`` and update the weights; ``before_update()`` runs between the two."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if before_update is not None:
            before_update()
        self.optimizer.step()

    def after_validation(self, val_loss: float) -> None:
        """Let the plateau schedule see a validation loss (its rate is read without the decay)."""
        self._set_lr(self.plateau_lr)
        self.scheduler.step(val_loss)
        self.plateau_lr = self.lr

    def state(self) -> dict[str, Any]:
        """What a later run needs to continue: optimizer, schedule and plateau rate."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "plateau_lr": self.plateau_lr}

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
