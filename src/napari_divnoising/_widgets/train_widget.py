"""The `Train` dock widget: train a DivNoising model on image layers with a time or step budget."""

from __future__ import annotations

import copy
import time
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
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..errors import DivNoisingError
from ._layers import LayerChecklist, layer_data_copy, warn_if_unusable
from ._notify import report_exception, show_info, show_warning
from ._plots import LossPlot
from ._session import bind, NOISE_BOOTSTRAP, NOISE_CHOICE_LABELS, NOISE_COLEARN, NOISE_FITTED, get_session
from ._worker import WorkerRunner

BUDGET_MINUTES = "minutes"
BUDGET_STEPS = "steps"


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
        self.model: Any = None  # the live model of the current/last run (kept if stopped or crashed)
        self._start_time = 0.0
        self._budget: tuple[str, float] = (BUDGET_MINUTES, 0.0)
        self._last_step = 0
        self._phase = ""

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(QLabel("Training images (2-D images or stacks; tick one or more):"))
        self.images = LayerChecklist(napari_viewer)
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
        self.budget_value.setRange(0.1, 100000)
        self.budget_value.setDecimals(1)
        self.budget_value.setValue(5.0)
        self.budget_unit = QComboBox()
        self.budget_unit.addItems([BUDGET_MINUTES, BUDGET_STEPS])
        self.budget_unit.currentTextChanged.connect(self._budget_unit_changed)
        budget_row.addWidget(self.budget_value, 1)
        budget_row.addWidget(self.budget_unit)
        form.addRow("Budget", budget_row)
        layout.addLayout(form)

        self.advanced = QCollapsible("Advanced settings")
        adv = QWidget()
        f = QFormLayout(adv)
        f.setContentsMargins(0, 0, 0, 0)
        self.patch_size = QSpinBox()
        self.patch_size.setRange(16, 1024)
        self.patch_size.setSingleStep(16)
        self.patch_size.setValue(64)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 512)
        self.batch_size.setValue(8)
        self.depth = QSpinBox()
        self.depth.setRange(1, 5)
        self.depth.setValue(2)
        self.depth.setToolTip("Encoder/decoder levels: 2 for small structures, 3 for larger ones.")
        self.beta = QDoubleSpinBox()
        self.beta.setRange(0.01, 100.0)
        self.beta.setValue(1.0)
        self.beta.setToolTip("KL weight: 1 gives the best MMSE; >1 smoother and more diverse samples.")
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1.0)
        self.learning_rate.setSingleStep(1e-4)
        self.learning_rate.setValue(1e-3)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        f.addRow("Patch size", self.patch_size)
        f.addRow("Batch size", self.batch_size)
        f.addRow("Depth", self.depth)
        f.addRow("Beta (KL weight)", self.beta)
        f.addRow("Learning rate", self.learning_rate)
        f.addRow("Device", self.device)
        self.advanced.addWidget(adv)
        layout.addWidget(self.advanced)
        self._apply_config_defaults()

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
        self.destroyed.connect(lambda *_: self.runner.stop_and_wait())
        self._update_noise_label()

    # ------------------------------------------------------------------ settings

    def _apply_config_defaults(self) -> None:
        """Take the advanced-setting defaults from the core's TrainingConfig, if it provides them."""
        try:
            from ..training import TrainingConfig

            defaults = TrainingConfig()
        except Exception:  # core not available or needs arguments: keep the widget's defaults
            return
        for attr, box in (
            ("patch_size", self.patch_size), ("batch_size", self.batch_size), ("depth", self.depth),
            ("beta", self.beta), ("learning_rate", self.learning_rate),
        ):
            value = getattr(defaults, attr, None)
            if isinstance(value, (int, float)):
                box.setValue(value)

    def _budget_unit_changed(self, unit: str) -> None:
        if unit == BUDGET_STEPS:
            self.budget_value.setDecimals(0)
            self.budget_value.setValue(500)
        else:
            self.budget_value.setDecimals(1)
            self.budget_value.setValue(5.0)

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

    def training_config(self) -> Any:
        """The core's TrainingConfig from the widget's settings."""
        from ._core import make_training_config

        unit = self.budget_unit.currentText()
        return make_training_config(
            patch_size=self.patch_size.value(),
            batch_size=self.batch_size.value(),
            depth=self.depth.value(),
            beta=self.beta.value(),
            learning_rate=self.learning_rate.value(),
            device=self.device.currentText(),
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
        from ._core import training_events

        if self.runner.running:
            return
        try:
            images = self._training_images()
            choice = self.session.noise_choice
            noise_model = copy.deepcopy(self.session.noise_model) if choice == NOISE_FITTED else None
            if choice == NOISE_FITTED and noise_model is None and not resume:
                raise DivNoisingError(
                    "No noise model yet: fit or load one in the Noise model widget, or choose co-learning."
                )
            resume_model = self.model if resume else None
            if resume and resume_model is None:
                raise DivNoisingError("There is no model to continue; train or load one first.")
            config = self.training_config()
        except DivNoisingError as exc:
            report_exception(exc, "Training")
            return
        self._budget = (self.budget_unit.currentText(), float(self.budget_value.value()))
        self._start_time = time.monotonic()
        if not resume:
            self.loss_plot.reset()
            self._last_step = 0
        self._phase = ""
        self._set_running(True)
        self.progress.setValue(0)
        self.progress.setFormat("starting...")
        self.status.setText("Preparing the training data...")
        bootstrap = choice == NOISE_BOOTSTRAP and not resume
        self.runner.start(
            lambda: training_events(images, noise_model, config, resume=resume_model, bootstrap=bootstrap),
            self._on_event,
            self._on_done,
        )

    def _on_event(self, event: Any) -> None:
        from ._core import TrainingPhase

        name = type(event).__name__
        if isinstance(event, TrainingPhase):
            self._phase = event.message
            self.status.setText(event.message)
            if event.noise_model is not None:
                self.session.set_noise_model(event.noise_model, event.message)
            return
        if name == "TrainingStarted":
            self.model = event.model
            device = getattr(event, "device", None) or getattr(self.model, "device", "?")
            self.device_label.setText(f"Device: {device}")
            self.save_button.setEnabled(True)
        elif name == "TrainStep":
            step = int(event.step)  # counts all steps of the model, across continued runs
            self._last_step = step
            self.loss_plot.add_train(step, float(event.loss))
            self._update_progress(event)
        elif name == "Validation":
            self.loss_plot.add_validation(int(event.step), float(event.loss))
        elif name == "TrainingWarning":
            show_warning(str(getattr(event, "message", event)))
        elif name == "CheckpointSaved":
            pass
        elif name == "TrainingDone":
            model = getattr(event, "model", None)
            if model is not None:
                self.model = model

    def _update_progress(self, event: Any) -> None:
        fraction = getattr(event, "fraction", None)
        elapsed = float(getattr(event, "elapsed_s", time.monotonic() - self._start_time))
        unit, value = self._budget
        if fraction is None:
            if unit == BUDGET_MINUTES:
                fraction = elapsed / (value * 60.0)
            else:
                total = getattr(event, "total", None) or value
                fraction = (int(event.step)) / max(float(total), 1.0)
        fraction = min(max(float(fraction), 0.0), 1.0)
        left = getattr(event, "eta_s", None)
        if left is None:
            left = elapsed * (1 - fraction) / fraction if fraction > 0 else float("nan")
        left = float(left) if left != float("inf") else float("nan")
        self.progress.setValue(int(1000 * fraction))
        text = f"{100 * fraction:.0f}%"
        if left == left:
            text += f" - {_format_seconds(left)} left"
        self.progress.setFormat(text)
        prefix = f"{self._phase}: " if self._phase else ""
        text = f"{prefix}step {self._last_step}, loss {float(event.loss):.4f}"
        noise_a, noise_b = getattr(event, "noise_a", None), getattr(event, "noise_b", None)
        if noise_a is not None and noise_b is not None:
            text += f"; co-learned noise variance = {noise_a:.3g} x signal + {noise_b:.3g}"
        self.status.setText(text)

    def _on_done(self, stopped: bool) -> None:
        try:
            self._set_running(False)
            if self.model is not None:
                self.session.set_trained_model(self.model, "trained in this session")
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
                self.status.setText(f"Training done ({self._last_step} steps). Save the model or go to Predict.")
        except RuntimeError:  # widget already deleted
            pass

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.continue_button.setEnabled(not running and self.model is not None)
        self.stop_button.setEnabled(running)
        self.load_button.setEnabled(not running)
        self.save_button.setEnabled(self.model is not None)
        self.advanced.setEnabled(not running)

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
        """Save the current (possibly partly trained) model."""
        from ..model_io import save_model

        if self.model is None:
            report_exception(DivNoisingError("There is no model to save yet; train or load one."), "Saving")
            return None
        try:
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
        self._set_running(False)
        self.status.setText(f"Model loaded from {Path(path).name}.")
        return True

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self.runner.stop_and_wait()
        super().closeEvent(event)
