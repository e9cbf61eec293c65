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

from importlib import import_module
from typing import Any

from .config import TrainingConfig, device_defaults, field_default, field_metadata

#: Names imported from their module when first used, so that the settings load without torch.
_LAZY = {
    "Checkpointer": "checkpoints",
    "train": "engine", "train_iter": "engine",
    **dict.fromkeys(("STOP_REASONS", "CheckpointSaved", "TrainingDone", "TrainingEvent", "TrainingStarted",
                     "TrainingWarning", "TrainStep", "Validation"), "events"),
    "kl_per_pixel": "loss", "loss_terms": "loss",
    "COLEARN": "noise_setup", "colearned_noise_model": "noise_setup", "is_colearn": "noise_setup",
    "ESTIMATED": "noise_setup", "is_estimated": "noise_setup",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    else:
        try:  # a submodule (``training.engine``) not imported yet
            value = import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


__all__ = [
    "COLEARN",
    "ESTIMATED",
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
    "is_estimated",
    "kl_per_pixel",
    "loss_terms",
    "train",
    "train_iter",
]
