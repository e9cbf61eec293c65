"""Training a DivNoising model: settings, the event-yielding loop and its parts.

- :mod:`.config`: :class:`TrainingConfig`, the one source of every default, range and help text;
- :mod:`.engine`: :func:`train_iter` (events) and :func:`train` (the model);
- :mod:`.events`: the events the loop yields;
- :mod:`.schedule`: budget clock, KL annealing, validation schedule, collapse monitor;
- :mod:`.loss`: the DivNoising loss; :mod:`.loss_log`: the per-step losses, read back in groups;
- :mod:`.optimiser`: Adam with the plateau schedule and the end-of-budget decay;
- :mod:`.feed`: training batches and the fixed validation set;
- :mod:`.checkpoints`: the best model in memory and the checkpoint files;
- :mod:`.noise_setup`: choosing and checking the noise model;
- :mod:`.sampling`: training patches cut on an accelerator.
"""

from .checkpoints import Checkpointer
from .config import TrainingConfig, device_defaults, field_default, field_metadata
from .engine import train, train_iter
from .events import (
    STOP_REASONS,
    CheckpointSaved,
    TrainingDone,
    TrainingEvent,
    TrainingStarted,
    TrainingWarning,
    TrainStep,
    Validation,
)
from .loss import kl_per_pixel, loss_terms
from .noise_setup import COLEARN, colearned_noise_model, is_colearn

__all__ = [
    "COLEARN",
    "STOP_REASONS",
    "CheckpointSaved",
    "Checkpointer",
    "TrainStep",
    "TrainingConfig",
    "TrainingDone",
    "TrainingEvent",
    "TrainingStarted",
    "TrainingWarning",
    "Validation",
    "colearned_noise_model",
    "device_defaults",
    "field_default",
    "field_metadata",
    "is_colearn",
    "kl_per_pixel",
    "loss_terms",
    "train",
    "train_iter",
]
