"""The best model of a run (in memory) and the checkpoint files written while training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..errors import DivNoisingError
from ..model import DivNoisingModel
from .events import CheckpointSaved, TrainingEvent, TrainingWarning


def state_copy(model: DivNoisingModel) -> dict[str, dict[str, torch.Tensor]]:
    """A host copy of the network's and the noise model's weights."""
    from ..model_io import cpu_state_copy

    return {"network": cpu_state_copy(model.network.state_dict()),
            "noise_model": cpu_state_copy(model.noise_model.state_dict())}


def load_state(model: DivNoisingModel, state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Put the weights of :func:`state_copy` back into ``model``."""
    model.network.load_state_dict(state["network"])
    model.noise_model.load_state_dict(state["noise_model"])


class BestModel:
    """The weights with the lowest validation loss so far, and how many validations brought no gain.

    Parameters
    ----------
    history
        The model's history: a continued run starts from its ``best_val_loss`` and ``best_step``,
        which this updates.
    model
        The model being trained; when continuing, its current weights are the best so far.
    resumed
        Whether the run continues an earlier one.
    min_delta
        Least decrease of the validation loss that counts as better.
    """

    def __init__(self, history: dict[str, Any], model: DivNoisingModel, resumed: bool, min_delta: float):
        self.history = history
        self.min_delta = min_delta
        self.val_loss = float(history.get("best_val_loss", math.inf))
        self.step = history.get("best_step")
        self.state = state_copy(model) if resumed and math.isfinite(self.val_loss) else None
        self.validations_without_improvement = 0

    def consider(self, model: DivNoisingModel, val_loss: float, step: int) -> bool:
        """Keep ``model``'s weights when ``val_loss`` is the best so far; return whether it is."""
        if not val_loss < self.val_loss - self.min_delta:
            return False
        self.val_loss, self.step = val_loss, step
        self.history["best_val_loss"], self.history["best_step"] = val_loss, step
        self.state = state_copy(model)
        return True

    def count(self, improved: bool) -> int:
        """Count a validation for early stopping; return the validations in a row without improvement."""
        self.validations_without_improvement = 0 if improved else self.validations_without_improvement + 1
        return self.validations_without_improvement

    def reset_count(self) -> None:
        """Start counting validations without improvement afresh (a new start from new weights)."""
        self.validations_without_improvement = 0


class Checkpointer:
    """Writes the best and the last model during training; a failed write warns and training goes on.

    The model stays in memory whatever happens on disk; the next checkpoint tries again.
    """

    def __init__(self, path: str | Path | None):
        from ..model_io import last_checkpoint_path

        self.path = Path(path) if path is not None else None
        self.last_path = last_checkpoint_path(path) if path is not None else None
        self.failing = False
        self.last_saved_step = -1

    def save(self, model: DivNoisingModel, kind: str, training_state: dict, step: int) -> TrainingEvent | None:
        """Write the ``"best"`` or ``"last"`` file; return the event to yield (``None``: nothing to say)."""
        from ..model_io import save_model

        if self.path is None or (kind == "last" and self.last_saved_step == step):
            return None
        target = self.path if kind == "best" else self.last_path
        try:
            written = save_model(model, target, training_state=training_state)
        except (OSError, DivNoisingError) as exc:
            was_failing, self.failing = self.failing, True
            if was_failing:
                return None
            if isinstance(exc, OSError):
                said = f"Could not write the model to {target}: {exc.strerror or exc}."
            else:  # the writers' errors already name the file
                said = str(exc).rstrip(".") + "."
            return TrainingWarning(
                f"{said} Training goes on with the model in memory and "
                "tries again at the next validation; free some space or choose another place to save it.",
                "checkpoint",
            )
        self.failing = False
        if kind == "last":
            self.last_saved_step = step
        return CheckpointSaved(Path(written), kind)
