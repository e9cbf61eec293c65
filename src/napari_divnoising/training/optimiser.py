"""The optimiser of a training run: Adam, a plateau learning-rate schedule and an end-of-budget decay."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .config import TrainingConfig

#: Adam implementations: ``"fused"`` (one kernel for all parameters, where torch has one for their device,
#: else ``"foreach"``), ``"foreach"`` (a few batched kernels) or ``"single"`` (one set of kernels per
#: parameter). Chosen by ``benchmarks/bench_optimizer.py``.
ADAM_IMPLEMENTATION = "fused"


def make_adam(parameters: list[torch.nn.Parameter], lr: float | torch.Tensor, implementation: str | None = None,
              capturable: bool = False) -> torch.optim.Adam:
    """Adam over ``parameters`` with ``implementation`` (default :data:`ADAM_IMPLEMENTATION`); ``capturable``
    keeps its step count on the device, so that its update can be recorded in a CUDA graph."""
    implementation = implementation or ADAM_IMPLEMENTATION
    if implementation == "fused":
        try:  # torch refuses devices (and versions) without a fused kernel when the optimizer is made
            return torch.optim.Adam(parameters, lr=lr, fused=True, capturable=capturable)
        except (RuntimeError, ValueError, TypeError):
            implementation = "foreach"
    return torch.optim.Adam(parameters, lr=lr, foreach=implementation == "foreach", capturable=capturable)


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
                 saved_state: dict[str, Any] | None = None, capturable: bool = False):
        self.parameters = list(parameters)
        self.config = config
        #: whether the update can be recorded in a CUDA graph: then the learning rate is a device tensor
        #: changed in place, and its value is kept here too (reading the tensor would wait for the device)
        self.capturable = capturable
        self.restart()
        if saved_state:
            try:
                self.optimizer.load_state_dict(self._with_this_implementation(saved_state["optimizer"]))
                self._lr_value = float(self.optimizer.param_groups[0]["lr"])
                self._install_lr()
                if "scheduler" in saved_state:
                    self.scheduler.load_state_dict(saved_state["scheduler"])
                self.plateau_lr = float(saved_state.get("plateau_lr", config.learning_rate))
            except (KeyError, ValueError, RuntimeError):
                self.restart()  # incompatible (e.g. other trainable parameters): start a fresh optimizer

    def _with_this_implementation(self, saved: dict[str, Any]) -> dict[str, Any]:
        """``saved`` (an optimizer state, maybe from another device or implementation) with this optimizer's
        implementation settings, which torch reads when it loads the state (fused and capturable Adam
        keep their step counts on the parameters' device)."""
        mine = {k: self.optimizer.param_groups[0][k] for k in ("fused", "foreach", "capturable")}
        return {**saved, "param_groups": [{**group, **mine} for group in saved["param_groups"]]}

    def restart(self) -> None:
        """A fresh optimizer and plateau schedule at the configured learning rate."""
        config = self.config
        self._lr_value = float(config.learning_rate)
        lr: float | torch.Tensor = self._lr_value
        if self.capturable:
            device = self.parameters[0].device if self.parameters else None
            self._lr_tensor = torch.tensor(self._lr_value, dtype=torch.float32, device=device)
            lr = self._lr_tensor
        self.optimizer = make_adam(self.parameters, lr, capturable=self.capturable)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience,
            min_lr=config.min_learning_rate,
        )
        self.plateau_lr = config.learning_rate

    def roll_back(self, lr_factor: float) -> None:
        """After the weights went back to earlier ones: a fresh optimizer (the moments of the diverged steps are
        dropped) whose plateau rate is ``lr_factor`` times the current one."""
        plateau_lr = self.plateau_lr * lr_factor
        self.restart()
        self.plateau_lr = plateau_lr
        self._set_lr(plateau_lr)

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
        return self._lr_value

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
        # the schedule writes the group's rate (a float, or in place into the tensor): read it back once
        self._lr_value = float(self.optimizer.param_groups[0]["lr"])
        self._install_lr()
        self.plateau_lr = self._lr_value

    def state(self) -> dict[str, Any]:
        """What a later run needs to continue: optimizer, schedule and plateau rate (plain numbers, no device
        tensors, in the optimizer's settings)."""
        optimizer = self.optimizer.state_dict()
        optimizer["param_groups"] = [{**group, "lr": float(group["lr"])} for group in optimizer["param_groups"]]
        return {"optimizer": optimizer, "scheduler": self.scheduler.state_dict(), "plateau_lr": self.plateau_lr}

    def _install_lr(self) -> None:
        """Put :attr:`_lr_value` into the optimizer (into its learning-rate tensor when capturable)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr_tensor if self.capturable else self._lr_value
        if self.capturable:
            self._lr_tensor.fill_(self._lr_value)

    def _set_lr(self, lr: float) -> None:
        lr = float(lr)
        if lr == self._lr_value:  # every change to the groups' rate goes through _install_lr
            return
        self._lr_value = lr
        self._install_lr()
