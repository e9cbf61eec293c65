"""The `Train` dock widget: train a DivNoising model on image layers with a time or step budget."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QWidget,
)
from superqt import QCollapsible

from ..errors import DivNoisingError
from ..events import Progress
from ..training import (
    ESTIMATED,
    CheckpointSaved,
    TrainingConfig,
    TrainingDone,
    TrainingStarted,
    TrainingWarning,
    TrainStep,
    Validation,
    field_default,
    field_metadata,
)
from ..workflows import BootstrapPhase
from . import _guidance
from ._core import TrainSteps
from ._layers import LayerChecklist, layer_data_copy, warn_if_unusable
from ._layout import fit_to_width, scrollable_layout
from ._notify import report_exception, show_info, show_warning
from ._plots import LossPlot
from ._session import (
    NOISE_BOOTSTRAP,
    NOISE_CHOICE_LABELS,
    NOISE_COLEARN,
    NOISE_ESTIMATED,
    NOISE_FITTED,
    bind,
    get_session,
)
from ._settings import ConfigForm
from ._worker import ActivityProgress, StopWhenRemoved, WorkerRunner

BUDGET_MINUTES = "minutes"
BUDGET_STEPS = "steps"
#: The step budget offered when the unit is switched to steps (the config has no step budget by default).
STEP_BUDGET = 1000
#: Settings shown in the panel's main form; the budget row edits max_minutes / max_steps; every other
#: TrainingConfig field is generated under "Advanced settings" (fields marked advanced) or here.
BUDGET_FIELDS = ("max_minutes", "max_steps")


def _format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


class TrainWidget(QWidget):
    """Train (or continue training) a DivNoising model; save and load models."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.runner = WorkerRunner("Training")
        self.activity = ActivityProgress(self)
        self.model: Any = None  # the live model of the current/last run (kept if stopped or crashed)
        self._last_step = 0
        self._phase = ""
        self._run_info: dict[str, Any] = {}
        self._done_event: TrainingDone | None = None

        layout = scrollable_layout(self)
        layout.addWidget(QLabel("Training images (2-D images or stacks; tick one or more):"))
        self.images = LayerChecklist(napari_viewer)
        self.images.checked_changed.connect(lambda: self.session.set_training_layers(self.images.checked_names()))
        layout.addWidget(self.images)

        form = QFormLayout()
        noise_row = QHBoxLayout()
        self.noise_choice = QComboBox()
        for key, label in NOISE_CHOICE_LABELS.items():
            self.noise_choice.addItem(label, key)
        self.noise_choice.setCurrentIndex(list(NOISE_CHOICE_LABELS).index(self.session.noise_choice))
        self.noise_choice.currentIndexChanged.connect(
            lambda _: self.session.set_noise_choice(self.noise_choice.currentData())
        )
        self.noise_load = QPushButton("File...")
        self.noise_load.setToolTip("Load a GMM noise model (.npz) from disk.")
        self.noise_load.clicked.connect(self._load_noise_clicked)
        noise_row.addWidget(self.noise_choice, 1)
        noise_row.addWidget(self.noise_load)
        form.addRow("Noise model", noise_row)
        self.noise_label = QLabel()
        self.noise_label.setWordWrap(True)
        form.addRow("", self.noise_label)

        budget_row = QHBoxLayout()
        self.budget_value = QDoubleSpinBox()
        self.budget_unit = QComboBox()
        self.budget_unit.addItems([BUDGET_MINUTES, BUDGET_STEPS])
        self.budget_unit.currentTextChanged.connect(self._budget_unit_changed)
        self._budget_unit_changed(BUDGET_MINUTES)
        budget_row.addWidget(self.budget_value, 1)
        budget_row.addWidget(self.budget_unit)
        form.addRow("Budget", budget_row)
        self.estimate_label = QLabel()
        self.estimate_label.setWordWrap(True)
        form.addRow("", self.estimate_label)
        layout.addLayout(form)

        # Every other TrainingConfig field, generated from its metadata (range, default, help).
        fields = [f.name for f in dataclasses.fields(TrainingConfig) if f.name not in BUDGET_FIELDS]
        self.main_settings = ConfigForm(TrainingConfig, [n for n in fields if not field_metadata(n)["advanced"]])
        layout.addWidget(self.main_settings.widget)
        self.advanced_settings = ConfigForm(TrainingConfig, [n for n in fields if field_metadata(n)["advanced"]])
        self.advanced = QCollapsible("Advanced settings")
        self.advanced.addWidget(self.advanced_settings.widget)
        layout.addWidget(self.advanced)
        for form_ in (self.main_settings, self.advanced_settings):
            for name, editor in form_.editors.items():
                setattr(self, name, editor.widget)  # e.g. self.patch_size, self.learning_rate

        buttons = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(lambda: self.start_training(resume=False))
        self.continue_button = QPushButton("Continue training")
        self.continue_button.setEnabled(False)
        self.continue_button.clicked.connect(lambda: self.start_training(resume=True))
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.runner.stop)
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.continue_button)
        buttons.addWidget(self.stop_button)
        layout.addLayout(buttons)

        self.device_label = QLabel("Device: -")
        layout.addWidget(self.device_label)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("idle")
        layout.addWidget(self.progress)
        self.status = QLabel("Tick the training images, choose a noise model and press Train.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.advice = QLabel()
        self.advice.setWordWrap(True)
        self.advice.setStyleSheet("color: orange;")
        self.advice.setVisible(False)
        layout.addWidget(self.advice)
        self.loss_plot = LossPlot(190)
        layout.addWidget(self.loss_plot)

        io_row = QHBoxLayout()
        self.save_button = QPushButton("Save model...")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._save_clicked)
        self.load_button = QPushButton("Load model...")
        self.load_button.clicked.connect(self._load_clicked)
        io_row.addWidget(self.save_button)
        io_row.addWidget(self.load_button)
        layout.addLayout(io_row)
        layout.addStretch(1)

        bind(self, self.session.noise_choice_changed, self._on_noise_choice)
        bind(self, self.session.noise_model_changed, lambda *_: self._update_noise_label())
        bind(self, self.session.trained_model_changed, self._on_session_model)
        bind(self, napari_viewer.layers.events.inserted,
            lambda e: warn_if_unusable(e.value, self.session.warned_rgb_layers)
        )
        fit_to_width(self)
        self._stop_when_removed = StopWhenRemoved(self, self.runner)
        self.destroyed.connect(lambda *_: self.runner.stop_and_wait())
        self._update_noise_label()
        for signal in (self.budget_value.valueChanged, self.budget_unit.currentTextChanged,
                       self.images.checked_changed, self.batch_size.valueChanged, self.patch_size.valueChanged,
                       self.device.currentTextChanged):
            signal.connect(lambda *_: self.update_estimate())
        self.update_estimate()

    # ------------------------------------------------------------------ settings

    def _device_type(self) -> str:
        from ..device import resolve_device

        try:
            return resolve_device(self.device.currentText()).type
        except Exception:  # an unknown or unavailable device: said when training starts
            return self.device.currentText().strip() or "auto"

    def _min_steps(self, n_pixels: int, batch: int | None, patch: int | None, device: str) -> int:
        from ..training.config import device_defaults

        try:
            defaults = device_defaults(device)
        except (RuntimeError, ValueError):
            defaults = device_defaults("cpu")
        return _guidance.suggested_min_steps(n_pixels, batch or defaults["batch_size"],
                                             patch or defaults["patch_size"])

    def update_estimate(self) -> None:
        """Say what the budget buys at the step rate measured in this session (before training)."""
        device = self._device_type()
        n_pixels = sum(int(layer.data.size) for layer in self.images.checked_layers())
        min_steps = self._min_steps(n_pixels, self.batch_size.value() or None, self.patch_size.value() or None,
                                    device)
        minutes = self.budget_value.value() if self.budget_unit.currentText() == BUDGET_MINUTES else None
        steps = int(self.budget_value.value()) if minutes is None else None
        self.estimate_label.setText(_guidance.budget_estimate(
            minutes, steps, self.session.last_steps_per_s.get(device), device, min_steps))

    def _show_advice(self, history: dict, steps: int) -> None:
        """After a run: say plainly when the model looks undertrained, and what to do."""
        info = self._run_info
        min_steps = self._min_steps(info.get("n_pixels", 0), info.get("batch"), info.get("patch"),
                                    info.get("device", "cpu"))
        reasons = _guidance.undertrained_reasons(history.get("val_loss", []), steps, min_steps)
        text = ""
        if reasons:
            text = ("The model is probably undertrained: " + "; ".join(reasons)
                    + ". Press Continue training before relying on its results.")
        self.advice.setText(text)
        self.advice.setVisible(bool(text))

    def _budget_unit_changed(self, unit: str) -> None:
        name = "max_minutes" if unit == BUDGET_MINUTES else "max_steps"
        meta = field_metadata(name)
        self.budget_value.setDecimals(2 if unit == BUDGET_MINUTES else 0)
        self.budget_value.setRange(meta["min"], meta["max"])
        self.budget_value.setValue(field_default(name) if unit == BUDGET_MINUTES else STEP_BUDGET)
        self.budget_value.setToolTip(meta["help"])

    def _on_noise_choice(self, choice: str) -> None:
        index = list(NOISE_CHOICE_LABELS).index(choice)
        if self.noise_choice.currentIndex() != index:
            self.noise_choice.setCurrentIndex(index)
        self._update_noise_label()

    def _update_noise_label(self) -> None:
        choice = self.session.noise_choice
        if choice == NOISE_FITTED:
            if self.session.noise_model is None:
                text = "No noise model yet: fit or load one in the Noise model widget (or File...)."
            else:
                text = self.session.noise_model_description or "noise model from the Noise model widget"
        elif choice == NOISE_ESTIMATED:
            text = ("A GMM noise model is estimated from the training images alone before training (their noise "
                    "read as Poisson-Gaussian): no calibration data needed.")
        elif choice == NOISE_COLEARN:
            text = "A Gaussian noise model (variance = a * signal + b) is learned together with the network."
        else:
            text = "Co-learn for half the budget, fit a GMM to that model's denoising, then train with it."
        self.noise_label.setText(text)

    def _load_noise_clicked(self) -> None:
        from ..noise_model_io import load_gmm_npz

        path, _ = QFileDialog.getOpenFileName(self, "Load noise model", "", "Noise model (*.npz)")
        if not path:
            return
        try:
            model = load_gmm_npz(path)
        except (DivNoisingError, OSError) as exc:
            report_exception(exc, "Loading the noise model")
            return
        self.session.set_noise_model(model, f"GMM loaded from {Path(path).name}")
        self.session.set_noise_choice(NOISE_FITTED)
        self._update_noise_label()

    def training_config(self) -> TrainingConfig:
        """The core's TrainingConfig from the panel's settings (every field passed on by name)."""
        from ._core import make_training_config

        unit = self.budget_unit.currentText()
        return make_training_config(
            **self.main_settings.values(),
            **self.advanced_settings.values(),
            max_minutes=self.budget_value.value() if unit == BUDGET_MINUTES else None,
            max_steps=int(self.budget_value.value()) if unit == BUDGET_STEPS else None,
        )

    # ------------------------------------------------------------------ training

    def _training_images(self) -> list[Any]:
        layers = self.images.checked_layers()
        if not layers:
            raise DivNoisingError("Tick at least one training image layer in the list.")
        return [layer_data_copy(layer) for layer in layers]

    def start_training(self, resume: bool = False) -> None:
        """Start (or continue) training in a thread worker."""
        from . import _core

        if self.runner.running:
            return
        try:
            images = self._training_images()
            choice = self.session.noise_choice
            noise_model = copy.deepcopy(self.session.noise_model) if choice == NOISE_FITTED else None
            if choice == NOISE_ESTIMATED and not resume:
                noise_model = ESTIMATED
            if choice == NOISE_FITTED and noise_model is None and not resume:
                raise DivNoisingError(
                    "No noise model yet: fit or load one in the Noise model widget, or let Train estimate one from "
                    "the training images (Train uses: Estimate from the training images)."
                )
            resume_model = self.model if resume else None
            if resume and resume_model is None:
                raise DivNoisingError("There is no model to continue; train or load one first.")
            config = self.training_config()
        except DivNoisingError as exc:
            report_exception(exc, "Training")
            return
        if not resume:
            self.loss_plot.reset()
            self._last_step = 0
        self._phase = ""
        self._done_event: TrainingDone | None = None
        self.advice.setVisible(False)
        self._set_running(True)
        self.progress.setValue(0)
        self.progress.setFormat("starting...")
        self.status.setText("Preparing the training data...")
        self.activity.start("DivNoising training", 1000)
        bootstrap = choice == NOISE_BOOTSTRAP and not resume
        self.runner.start(
            lambda: _core.training_source(images, noise_model, config, resume=resume_model, bootstrap=bootstrap),
            self._on_event,
            self._on_done,
            wrap=functools.partial(_core.group_steps, flush=self.runner.stop_requested),
        )

    def _on_event(self, event: Any) -> None:
        if isinstance(event, BootstrapPhase):
            self._phase = event.message
            self.status.setText(event.message)
            if event.noise_model is not None:
                self.session.set_noise_model(event.noise_model, event.message)
        elif isinstance(event, TrainingStarted):
            self.model = event.model
            self._run_info = {"n_pixels": event.n_train_pixels, "batch": event.config.get("batch_size"),
                              "patch": event.config.get("patch_size"), "device": event.device.split(":")[0]}
            self.device_label.setText(f"Device: {event.device}")
            self.save_button.setEnabled(True)
        elif isinstance(event, TrainSteps):
            for step in event.steps:
                self.loss_plot.add_train(step.step, step.loss)
            for validation in event.validations:
                self.loss_plot.add_validation(validation.step, validation.val_loss)
            if event.steps:
                self._on_step(event.steps[-1])
        elif isinstance(event, TrainStep):
            self.loss_plot.add_train(event.step, event.loss)
            self._on_step(event)
        elif isinstance(event, Validation):
            self.loss_plot.add_validation(event.step, event.val_loss)
        elif isinstance(event, TrainingWarning):
            show_warning(event.message)
        elif isinstance(event, Progress):
            self.status.setText(f"{self._phase}: {event.message} ({event.done} of {event.total})")
        elif isinstance(event, TrainingDone):
            self.model = event.model
            self._done_event = event
        elif isinstance(event, CheckpointSaved):
            pass

    def _on_step(self, event: TrainStep) -> None:
        self._last_step = event.step  # counts all steps of the model, across continued runs
        if event.steps_per_s > 0 and self._run_info.get("device"):
            self.session.last_steps_per_s[self._run_info["device"]] = event.steps_per_s
        self._update_progress(event)

    def _update_progress(self, event: TrainStep) -> None:
        fraction = min(max(event.fraction, 0.0), 1.0)
        self.progress.setValue(int(1000 * fraction))
        self.activity.set(int(1000 * fraction))
        text = f"{100 * fraction:.0f}%"
        if math.isfinite(event.eta_s):
            text += f" - {_format_seconds(event.eta_s)} left"
        self.progress.setFormat(text)
        prefix = f"{self._phase}: " if self._phase else ""
        text = f"{prefix}step {event.step}, loss {event.loss:.4f}"
        if event.steps_per_s > 0:
            text += f", {event.steps_per_s:.1f} steps/s"
        if event.noise_a is not None and event.noise_b is not None:
            sign = "-" if event.noise_b < 0 else "+"
            text += f"; co-learned noise variance = {event.noise_a:.3g} x signal {sign} {abs(event.noise_b):.3g}"
        self.status.setText(text)

    def _on_done(self, stopped: bool) -> None:
        self.activity.close()
        try:
            self._set_running(False)
            if self.model is not None:
                self.session.set_trained_model(self.model, "trained in this session")
            done = self._done_event
            if done is not None and not self.runner.failed:
                self._show_advice(done.history or {}, done.steps)
            elif stopped and self.model is not None and not self.runner.failed:
                self._show_advice(self.model.history or {}, self._last_step)
            self.update_estimate()
            if self.runner.failed:
                kept = " The last good model is kept (Save model...)." if self.model is not None else ""
                self.status.setText("Training failed; see the notification." + kept)
                self.progress.setFormat("failed")
            elif stopped:
                self.status.setText(
                    f"Stopped at step {self._last_step}; the model so far is kept. Continue training or save it."
                )
                self.progress.setFormat("stopped")
            else:
                self.progress.setValue(1000)
                self.progress.setFormat("done")
                reason = f", {done.reason_text}" if done is not None else ""
                self.status.setText(
                    f"Training done ({self._last_step} steps{reason}). Save the model or go to Predict."
                )
        except RuntimeError:  # widget already deleted
            pass

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.continue_button.setEnabled(not running and self.model is not None)
        self.stop_button.setEnabled(running)
        self.load_button.setEnabled(not running)
        self.save_button.setEnabled(self.model is not None)
        self.advanced.setEnabled(not running)
        self.main_settings.widget.setEnabled(not running)

    def _on_session_model(self, model: Any) -> None:
        if model is not None and model is not self.model and not self.runner.running:
            self.model = model
            self.continue_button.setEnabled(True)
            self.save_button.setEnabled(True)

    # ------------------------------------------------------------------ files

    def _save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save model", "divnoising_model.pt", "DivNoising model (*.pt)")
        if path:
            self.save_model(path)

    def _load_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "", "DivNoising model (*.pt);;All files (*)")
        if path:
            self.load_model(path)

    def save_model(self, path: str | Path) -> Path | None:
        """Save the current (possibly partly trained) model; the file dialog has asked before overwriting.

        The place is checked first (a file where a folder should be, read-only, too little free space);
        any failure is one notification and the model stays in memory, to be saved elsewhere.
        """
        from ..atomic import check_output_file
        from ..model_io import estimate_file_bytes, save_model

        if self.model is None:
            report_exception(DivNoisingError("There is no model to save yet; train or load one."), "Saving")
            return None
        try:
            need = estimate_file_bytes(**self.model.network.settings(),
                                       with_training_state=self.model.training_state is not None)
            check_output_file(path, force=True, planned_bytes=need, what="model")
            written = save_model(self.model, path)
        except (DivNoisingError, OSError) as exc:
            report_exception(exc, "Saving the model")
            return None
        written = Path(written) if written is not None else Path(path)
        show_info(f"Model saved to {written}")
        return written

    def load_model(self, path: str | Path) -> bool:
        """Load a saved model; it becomes the session's model (for Predict and Continue training)."""
        from ..model_io import load_model

        try:
            model = load_model(path)
        except (DivNoisingError, OSError) as exc:
            report_exception(exc, "Loading the model")
            return False
        self.model = model
        self.session.set_trained_model(model, f"loaded from {Path(path).name}")
        self.loss_plot.set_history(model.history or {})
        self._set_running(False)
        self.status.setText(f"Model loaded from {Path(path).name}.")
        return True

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.runner.stop_and_wait()
        super().closeEvent(event)
