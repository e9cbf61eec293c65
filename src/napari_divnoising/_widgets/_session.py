"""Per-viewer state shared by the three widgets (psygnal-evented).

The Noise model widget puts its fitted/loaded noise model and the user's
noise-model choice here; the Train widget reads them and puts its trained
model here; the Predict widget reads that. One session per napari viewer.
"""

from __future__ import annotations

import weakref
from typing import Any

from psygnal import Signal

NOISE_FITTED = "fitted"
NOISE_ESTIMATED = "estimated"
NOISE_COLEARN = "co-learn"
NOISE_BOOTSTRAP = "bootstrap"
NOISE_CHOICE_LABELS = {
    NOISE_FITTED: "Use the fitted / loaded noise model",
    NOISE_ESTIMATED: "Estimate from the training images",
    NOISE_COLEARN: "Co-learn a Gaussian noise model during training",
    NOISE_BOOTSTRAP: "Bootstrap: co-learn first, then fit a GMM to its denoising",
}


class Session:
    """Models shared between the widgets of one viewer.

    Attributes
    ----------
    noise_model
        The current GMM/Gaussian noise model (``None`` until fitted or loaded).
    noise_model_description
        Where it came from (shown in the Train widget).
    noise_choice
        One of ``NOISE_FITTED``, ``NOISE_ESTIMATED``, ``NOISE_COLEARN``, ``NOISE_BOOTSTRAP``.
    trained_model
        The latest trained or loaded :class:`~napari_divnoising.model.DivNoisingModel`.
    training_layer_names
        Names of the layers ticked in the Train widget.
    last_steps_per_s
        The last measured training rate (steps/s) per device, for the budget estimate.
    """

    noise_model_changed = Signal(object)
    noise_choice_changed = Signal(str)
    trained_model_changed = Signal(object)
    training_layers_changed = Signal(object)

    def __init__(self) -> None:
        self.noise_model: Any = None
        self.noise_model_description = ""
        # Until a noise model is fitted or loaded (which chooses it), Train estimates one from its images.
        self.noise_choice = NOISE_ESTIMATED
        self.trained_model: Any = None
        self.trained_model_description = ""
        self.warned_rgb_layers: set[int] = set()
        self.training_layer_names: frozenset[str] = frozenset()
        self.last_steps_per_s: dict[str, float] = {}

    def set_noise_model(self, model: Any, description: str = "") -> None:
        self.noise_model = model
        self.noise_model_description = description
        self.noise_model_changed.emit(model)

    def set_noise_choice(self, choice: str) -> None:
        if choice not in NOISE_CHOICE_LABELS:
            raise ValueError(f"unknown noise-model choice {choice!r}")
        if choice != self.noise_choice:
            self.noise_choice = choice
            self.noise_choice_changed.emit(choice)

    def set_training_layers(self, names: Any) -> None:
        """The layers ticked for training (the calibration picker avoids them)."""
        names = frozenset(names)
        if names != self.training_layer_names:
            self.training_layer_names = names
            self.training_layers_changed.emit(names)

    def set_trained_model(self, model: Any, description: str = "") -> None:
        self.trained_model = model
        self.trained_model_description = description
        self.trained_model_changed.emit(model)


_SESSIONS: dict[int, Session] = {}


def bind(widget: Any, emitter: Any, slot: Any) -> None:
    """Connect ``slot`` to ``emitter`` (psygnal or napari event) until the Qt ``widget`` is destroyed.

    A closed dock widget must not receive session or viewer events any more
    (its Qt objects are gone; calling them would raise from another widget's action).
    """
    emitter.connect(slot)

    def drop(*_: Any) -> None:
        try:
            emitter.disconnect(slot)
        except Exception:  # already disconnected or emitter gone
            pass

    widget.destroyed.connect(drop)


def get_session(viewer: Any) -> Session:
    """The session of ``viewer`` (created on first use, dropped when the viewer is garbage collected).

    napari hands each plugin widget its own ``PublicOnlyProxy`` of the viewer,
    so the session is keyed by the wrapped viewer itself.
    """
    while hasattr(type(viewer), "__wrapped__") or type(viewer).__name__.endswith("Proxy"):
        inner = getattr(viewer, "__wrapped__", None)
        if inner is None or inner is viewer:
            break
        viewer = inner
    key = id(viewer)
    session = _SESSIONS.get(key)
    if session is None:
        session = Session()
        _SESSIONS[key] = session
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return session
