"""The events :func:`~napari_divnoising.training.train_iter` yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..events import Done
from ..model import DivNoisingModel

#: Why a run ended, as :attr:`TrainingDone.reason`, with the words front ends show for it.
STOP_REASONS = {
    "max_steps": "step budget reached",
    "max_minutes": "time budget reached",
    "early_stopping": "validation loss stopped improving",
    "collapse": "posterior collapse",
    "stopped": "stopped",
}


@dataclass(frozen=True)
class TrainingStarted:
    """First event: the live model (valid after every step), where it runs and what data it sees.

    ``config`` holds the settings as used, with the device-dependent ones (patch and batch
    size) filled in.
    """

    model: DivNoisingModel
    device: str
    n_parameters: int
    start_step: int
    max_steps: int | None
    max_minutes: float | None
    n_train_pixels: int
    validation_split: str
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainStep:
    """One optimisation step done (``step`` counts all steps of the model, across resumed runs).

    The losses are those of step ``logged_step``: on a GPU they are read back every
    ``log_interval`` steps only. ``steps_per_s`` is the recent rate, warm-up excluded.
    """

    step: int
    max_steps: int | None
    loss: float
    reconstruction: float
    kl: float
    kl_weight: float
    lr: float
    elapsed_s: float
    eta_s: float
    fraction: float
    steps_per_s: float = 0.0
    logged_step: int = 0
    noise_a: float | None = None
    noise_b: float | None = None


@dataclass(frozen=True)
class Validation:
    """Validation loss (reconstruction + beta * KL, per pixel) on the fixed held-out patches."""

    step: int
    val_loss: float
    best_val_loss: float
    is_best: bool
    reconstruction: float
    kl: float


@dataclass(frozen=True)
class CheckpointSaved:
    """A model file was written: ``kind`` is ``"best"`` or ``"last"``."""

    path: Path
    kind: str


@dataclass(frozen=True)
class TrainingWarning:
    """Something the user should know; ``kind`` is one of ``"collapse"``, ``"noise_model_range"``,
    ``"validation"``, ``"checkpoint"`` (a file could not be written; training goes on), ``"cuda_graphs"`` (steps
    run without CUDA graphs), ``"divergence"`` (the run went back to its best weights with a lower learning
    rate) or ``"warning"``."""

    message: str
    kind: str = "warning"


@dataclass(frozen=True)
class TrainingDone(Done):
    """Last event: ``model`` holds the best weights (by validation loss) when a validation ran.

    ``reason`` is a key of :data:`STOP_REASONS`; ``budget_used`` the fraction of the budget
    (time or steps, whichever ran out first) this run used; ``elapsed_s`` its wall-clock time.
    ``unsaved`` is True when the model file could not be written at the end: the model is
    only in memory.
    """

    model: DivNoisingModel
    reason: str
    steps: int
    best_val_loss: float | None
    best_step: int | None
    history: dict
    best_model_state: dict | None = None
    budget_used: float = 0.0
    elapsed_s: float = 0.0
    unsaved: bool = False

    @property
    def result(self) -> DivNoisingModel:
        return self.model

    @property
    def reason_text(self) -> str:
        """Why the run ended, in words."""
        return STOP_REASONS.get(self.reason, self.reason)


TrainingEvent = TrainingStarted | TrainStep | Validation | CheckpointSaved | TrainingWarning | TrainingDone
