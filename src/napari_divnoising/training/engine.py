"""The training loop: :func:`train_iter` yields small events (see :mod:`.events`) while it trains.

``train_iter(images, noise_model, config)`` yields, in order:

- :class:`TrainingStarted` first, carrying the live model (its weights are valid after
  every step, so a consumer that stops early keeps a usable model);
- :class:`TrainStep` after every optimisation step;
- :class:`Validation` at evenly spread fractions of the budget (the loss with the full
  ``beta`` on a fixed, seeded set of held-out patches and latent noise);
- :class:`CheckpointSaved` when ``checkpoint_path`` is given and a file was written;
- :class:`TrainingWarning` for what the user should know (posterior collapse, a noise
  model that does not cover the data, a checkpoint that could not be written);
- :class:`TrainingDone` last, with the model holding the best weights.

Training stops when the budget (``max_minutes`` and/or ``max_steps``) is used up, by
early stopping on the validation loss (never before ``min_fraction_before_stopping`` of
the budget), or on posterior collapse after all restarts. Closing the generator stops it
between two steps; the last checkpoint is then written if ``checkpoint_path`` was given.
The schedule follows the budget fraction (see :mod:`.schedule`), so a slow warm-up on a
GPU does not shorten the run.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import PatchSampler, load_frames, split_frames, validation_patches
from ..device import resolve_device
from ..errors import DivNoisingError
from ..events import run_to_end
from ..model import DivNoisingModel
from ..network import DivNoisingVAE
from ..noise_models import GaussianNoiseModel
from ..validation import check_train_args
from .averaging import WeightAverage
from .config import TrainingConfig
from .events import (
    CheckpointSaved,
    TrainingDone,
    TrainingEvent,
    TrainingStarted,
    TrainingWarning,
    TrainStep,
    Validation,
)
from .loss import loss_terms
from .noise_setup import COLEARN, check_resume, gmm_range_warning, resolve_noise_model
from .sampling import DevicePatchSampler
from .schedule import KL_HOLD, Budget, CollapseMonitor, KLAnnealing, ValidationSchedule


def _new_network(config: TrainingConfig) -> DivNoisingVAE:
    return DivNoisingVAE(depth=config.depth, start_filters=config.start_filters, z_dim=config.z_dim)


def _state_copy(model: DivNoisingModel) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "network": {k: v.detach().to("cpu", copy=True) for k, v in model.network.state_dict().items()},
        "noise_model": {k: v.detach().to("cpu", copy=True) for k, v in model.noise_model.state_dict().items()},
    }


def _autocast_for(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager | None:
    # bf16 keeps fp32's exponent range, so no gradient scaling is needed; the noise-model
    # likelihood and KL are computed in fp32 outside the autocast regions (see loss_terms).
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return None


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


def train_iter(
    images: Iterable[np.ndarray] | np.ndarray,
    noise_model: Any = COLEARN,
    config: TrainingConfig | None = None,
    resume: DivNoisingModel | None = None,
    checkpoint_path: str | Path | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[TrainingEvent]:
    """Train (or continue training) a DivNoising model, yielding events (see the module docstring).

    Parameters
    ----------
    images
        One or more 2-D images or 3-D stacks (frames are separate images), any integer or float dtype.
    noise_model
        A GMM or Gaussian noise model, :data:`COLEARN` (or ``None``) to co-learn a Gaussian one, or a
        number: the sigma of a fixed Gaussian noise model. With ``resume``, ``None`` (or the model's own
        noise model) continues with the model's noise model; another one is refused.
    config
        The settings; defaults to ``TrainingConfig()``. Patch and batch size left at ``None`` are
        chosen for the device (:func:`~napari_divnoising.training.config.device_defaults`).
    resume
        A model to continue training: same network, normalisation and noise model; its optimizer
        state is restored when it was saved with one. It is copied, not modified.
    checkpoint_path
        Where to write the best model (and, next to it, the last one with ``.last`` before the suffix).
    clock
        Returns seconds (``time.monotonic``); tests inject a fake clock.

    Yields
    ------
    TrainingEvent
        See :mod:`napari_divnoising.training.events`; the last one is :class:`TrainingDone`.
    """
    check_train_args(**locals())  # types of every argument: one clear DivNoisingError line
    config = copy.deepcopy(config) if config is not None else TrainingConfig()
    config.validate()
    device = resolve_device(config.device)
    config = config.resolved(device)
    config.validate()
    if resume is not None:
        check_resume(resume, config, noise_model)
    frames = load_frames(images, config.patch_size)
    data = split_frames(frames, config.patch_size, config.val_fraction, seed=config.seed)

    if resume is not None:
        model = copy.deepcopy(resume)
        model.history = copy.deepcopy(resume.history)
    else:
        torch.manual_seed(config.seed)
        network = _new_network(config)
        nm = resolve_noise_model(noise_model, data.mean, data.std, data.train_regions, config)
        model = DivNoisingModel(network, nm, data.mean, data.std, name=config.name)
    model.config = {**model.config, **config.to_dict()}
    model.training_state = None
    history = model.history
    for key in ("train_steps", "train_loss", "train_kl", "val_steps", "val_loss", "runs"):
        history.setdefault(key, [])
    start_step = int(history.get("steps", 0))
    model.to(device)

    on_cpu = device.type == "cpu"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # channels_last runs the convolutions (mkldnn / cuDNN) faster than NCHW, on a CPU too
    memory_format = torch.channels_last
    model.network.to(memory_format=memory_format)
    autocast = _autocast_for(device, config.mixed_precision)
    average = WeightAverage(model.network, config.ema_decay) if config.ema_decay > 0 else None

    def averaged() -> contextlib.AbstractContextManager:
        return average.applied() if average is not None else contextlib.nullcontext()

    trainable = [p for p in list(model.network.parameters()) + list(model.noise_model.parameters()) if p.requires_grad]

    def new_optimizer() -> tuple[torch.optim.Optimizer, Any]:
        opt = torch.optim.Adam(trainable, lr=config.learning_rate)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_learning_rate
        )
        return opt, sched

    optimizer, scheduler = new_optimizer()
    initial_noise_model_state = {k: v.clone() for k, v in model.noise_model.state_dict().items()}
    saved_state = resume.training_state if resume is not None else None
    if saved_state:
        try:
            optimizer.load_state_dict(saved_state["optimizer"])
            if "scheduler" in saved_state:
                scheduler.load_state_dict(saved_state["scheduler"])
        except (KeyError, ValueError, RuntimeError):
            saved_state = None  # incompatible (e.g. other trainable parameters): start a fresh optimizer
    # The plateau scheduler's learning rate; the optimizer runs at this times the end-of-budget decay.
    plateau_lr = float(saved_state.get("plateau_lr", config.learning_rate)) if saved_state else config.learning_rate

    def training_state() -> dict:
        return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "plateau_lr": plateau_lr}

    def budget_decay(progress: float) -> float:
        # Linear decay over the last part of the budget: short runs settle instead of ending mid-oscillation.
        f = config.lr_decay_fraction
        if f <= 0 or progress <= 1 - f:
            return 1.0
        return config.lr_decay_floor + (1 - config.lr_decay_floor) * max(0.0, 1 - progress) / f

    rng = np.random.default_rng([config.seed, start_step])
    if not on_cpu and DevicePatchSampler.fits(data.train_regions, device):
        device_sampler = DevicePatchSampler(
            data.train_regions, config.patch_size, device, seed=config.seed + start_step
        )

        def next_batch() -> torch.Tensor:
            return device_sampler.sample(config.batch_size)
    else:
        host_sampler = PatchSampler(data.train_regions, config.patch_size, rng)
        batch_np = np.empty((config.batch_size, config.patch_size, config.patch_size), dtype=np.float32)
        if not on_cpu:
            batch_np = torch.empty(batch_np.shape, dtype=torch.float32).pin_memory().numpy()

        def next_batch() -> torch.Tensor:
            return torch.from_numpy(host_sampler.sample(config.batch_size, batch_np))[:, None].to(
                device, non_blocking=not on_cpu
            )

    val_np = validation_patches(data.val_regions, config.patch_size, config.n_validation_patches, seed=config.seed)
    val_x = torch.from_numpy(val_np)[:, None].to(device)
    lat = config.patch_size // model.network.size_multiple
    val_eps = torch.randn(
        (len(val_np), model.network.z_dim, lat, lat), generator=torch.Generator().manual_seed(config.seed + 17)
    ).to(device)
    latent_shape = (config.batch_size, model.network.z_dim, lat, lat)

    colearned = isinstance(model.noise_model, GaussianNoiseModel) and model.noise_model.alpha.requires_grad
    n_parameters = sum(p.numel() for p in model.network.parameters())
    max_seconds = config.max_minutes * 60.0 if config.max_minutes is not None else math.inf
    run_steps = config.max_steps
    target_step = start_step + run_steps if run_steps is not None else None
    log_interval = int(config.log_interval or 1)

    yield TrainingStarted(
        model=model, device=str(device), n_parameters=n_parameters, start_step=start_step,
        max_steps=target_step, max_minutes=config.max_minutes, n_train_pixels=data.n_train_pixels,
        validation_split=data.split, config=config.to_dict(),
    )
    for message in data.warnings:
        yield TrainingWarning(message, "validation")
    range_warning = gmm_range_warning(model.noise_model, data.train_regions)
    if range_warning:
        yield TrainingWarning(range_warning, "noise_model_range")

    annealing = KLAnnealing(
        config.beta, config.kl_annealing_fraction, config.kl_annealing_steps,
        done=resume is not None and bool(history.get("kl_annealing_done", start_step > 0)), hold=KL_HOLD,
    )
    validations = ValidationSchedule(config.validation_interval, config.validations_per_run)
    collapse = CollapseMonitor(config.collapse_kl_threshold)
    checkpoints = Checkpointer(checkpoint_path)

    best_val = float(history.get("best_val_loss", math.inf))
    best_step = history.get("best_step")
    best_state: dict | None = _state_copy(model) if resume is not None and math.isfinite(best_val) else None
    validations_without_improvement = 0
    restarts_done = 0
    reason = "stopped"
    step = start_step
    budget = Budget(max_seconds, run_steps, clock)
    # Loss terms of the steps not yet read back from the device (one host sync per log interval).
    pending: list[tuple[int, torch.Tensor]] = []
    last_logged = (start_step, math.nan, math.nan, math.nan)
    noise_ab: tuple[float | None, float | None] = (None, None)

    def read_back() -> None:
        """Copy the pending loss terms to the host, record them, and refuse a diverged run."""
        nonlocal last_logged, noise_ab
        if not pending:
            return
        values = torch.stack([t for _, t in pending]).tolist()
        steps = [s for s, _ in pending]
        pending.clear()
        for s, (loss_f, recon_f, kl_f) in zip(steps, values):
            if not math.isfinite(loss_f):
                raise DivNoisingError(
                    f"Training diverged at step {s} (loss {loss_f}); try a smaller learning rate or a "
                    "better-matched noise model. The best model so far is kept."
                )
            history["train_steps"].append(s)
            history["train_loss"].append(loss_f)
            history["train_kl"].append(kl_f)
            if annealing.done:
                collapse.update(s, kl_f)
            last_logged = (s, loss_f, recon_f, kl_f)
        if colearned:
            noise_ab = (model.noise_model.a, model.noise_model.b)

    def validate() -> tuple[float, float, float]:
        model.network.eval()
        recon_sum = kl_sum = 0.0
        n = 0
        with torch.no_grad(), averaged():
            for i in range(0, len(val_x), config.batch_size):
                xb, eb = val_x[i : i + config.batch_size], val_eps[i : i + config.batch_size]
                recon, kl = loss_terms(model, xb, eb, autocast, memory_format)
                recon_sum += float(recon) * len(xb)
                kl_sum += float(kl) * len(xb)
                n += len(xb)
        model.network.train()
        recon, kl = recon_sum / n, kl_sum / n
        return recon + config.beta * kl, recon, kl

    finished = False
    try:
        model.network.train()
        while True:
            elapsed = budget.elapsed()
            done_here = step - start_step
            exhausted = budget.exhausted(done_here, elapsed)
            if exhausted:
                reason = exhausted
                break
            progress = budget.progress(done_here, elapsed)
            kl_weight = annealing.weight(step, progress)
            for group in optimizer.param_groups:
                group["lr"] = plateau_lr * budget_decay(progress)
            x = next_batch()
            eps = None
            if on_cpu:  # numpy's ziggurat sampler is several times faster than torch.randn on a CPU
                eps = torch.from_numpy(rng.standard_normal(latent_shape, dtype=np.float32))
            recon, kl = loss_terms(model, x, eps, autocast, memory_format)
            loss = recon + kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            pending.append((step + 1, torch.stack([loss.detach(), recon.detach(), kl.detach()])))
            if len(pending) >= log_interval:
                read_back()  # before the update, so a diverged step never reaches the weights on a CPU
            optimizer.step()
            if average is not None:
                average.update()
            step += 1
            if annealing.done:
                history["kl_annealing_done"] = True

            elapsed = budget.elapsed()
            done_here = step - start_step
            budget.mark(done_here, elapsed)
            fraction = budget.fraction(done_here, elapsed)
            progress = budget.progress(done_here, elapsed)
            _, loss_f, recon_f, kl_f = last_logged
            yield TrainStep(
                step=step, max_steps=target_step, loss=loss_f, reconstruction=recon_f, kl=kl_f, kl_weight=kl_weight,
                lr=optimizer.param_groups[0]["lr"], elapsed_s=elapsed, eta_s=budget.eta(done_here, elapsed),
                fraction=fraction, steps_per_s=budget.steps_per_second(), logged_step=last_logged[0],
                noise_a=noise_ab[0], noise_b=noise_ab[1],
            )

            window = config.collapse_patience_steps or max(20, validations.steps_between(done_here, progress))
            if annealing.done and collapse.collapsed(step, window):
                collapse.reset()
                steps_left = target_step - step if target_step is not None else None
                restart_fits = annealing.restart_fits(progress, steps_left)
                if resume is None and restarts_done < config.collapse_restarts and restart_fits:
                    # The reference restarts on collapse; a new start with slower annealing usually escapes.
                    restarts_done += 1
                    annealing.restart(step, progress)
                    yield TrainingWarning(
                        f"Posterior collapse at step {step}: the KL term stayed below "
                        f"{config.collapse_kl_threshold:g} per pixel for {window} steps, so the decoder ignored "
                        f"the input. Restarting from new random weights with KL annealing over "
                        f"{annealing.describe()} (restart {restarts_done} of {config.collapse_restarts}).",
                        "collapse",
                    )
                    torch.manual_seed(config.seed + 1000 * restarts_done)
                    model.network.load_state_dict(_new_network(config).state_dict())
                    model.noise_model.load_state_dict(initial_noise_model_state)
                    if average is not None:
                        average.reset()
                    optimizer, scheduler = new_optimizer()
                    plateau_lr = config.learning_rate
                    history.setdefault("collapse_restarts", []).append(step)
                    history.pop("kl_annealing_done", None)
                    # The best model so far stays the best until the new start beats it on the same validation.
                    validations_without_improvement = 0
                    continue
                action = "Training stopped." if config.stop_on_collapse else "Training continues."
                yield TrainingWarning(
                    f"Posterior collapse at step {step}: the KL term stayed below {config.collapse_kl_threshold:g} "
                    f"per pixel for {window} steps, so the decoder ignores the input and the model cannot denoise"
                    + (f", also after {restarts_done} restart(s) from new weights" if restarts_done else "")
                    + (" (too little of the budget is left to restart)"
                       if resume is None and restarts_done < config.collapse_restarts and not restart_fits else "")
                    + ". Train a new model with longer KL annealing (kl_annealing_steps), a smaller "
                    f"beta, or a different noise model. {action}",
                    "collapse",
                )
                if config.stop_on_collapse:
                    reason = "collapse"
                    break

            if validations.due(done_here, progress):
                read_back()
                val_loss, val_recon, val_kl = validate()
                history["val_steps"].append(step)
                history["val_loss"].append(val_loss)
                is_best = val_loss < best_val - config.early_stopping_min_delta
                saved_events = []
                with averaged():
                    if is_best:
                        best_val, best_step = val_loss, step
                        history["best_val_loss"], history["best_step"] = best_val, best_step
                        best_state = _state_copy(model)
                    history["steps"] = step
                    for kind in ("best", "last") if is_best else ("last",):
                        saved_events.append(checkpoints.save(model, kind, training_state(), step))
                yield Validation(step, val_loss, best_val, is_best, val_recon, val_kl)
                for event in saved_events:
                    if event is not None:
                        yield event
                if annealing.done:
                    for group in optimizer.param_groups:
                        group["lr"] = plateau_lr
                    scheduler.step(val_loss)
                    plateau_lr = optimizer.param_groups[0]["lr"]
                    validations_without_improvement = 0 if is_best else validations_without_improvement + 1
                    if (
                        validations_without_improvement >= config.early_stopping_patience
                        and min(fraction, progress) >= config.min_fraction_before_stopping
                    ):
                        reason = "early_stopping"
                        break
        read_back()
        finished = True
    finally:
        elapsed = budget.elapsed()
        history["steps"] = step
        history["elapsed_s"] = float(history.get("elapsed_s", 0.0)) + elapsed
        if average is not None:
            average.copy_to_network()  # the averaged weights are the model from here on
        if not finished:
            # Closed (Stop / Ctrl-C) or failed between steps: keep what we have on disk.
            history["runs"].append(
                {"start_step": start_step, "end_step": step, "reason": "stopped", "elapsed_s": elapsed}
            )
            if best_state is not None and not all(torch.isfinite(p).all() for p in model.network.parameters()):
                model.network.load_state_dict(best_state["network"])  # a diverged run keeps its best weights
                model.noise_model.load_state_dict(best_state["noise_model"])
            model.training_state = training_state()
            if step > start_step:
                with contextlib.suppress(Exception):
                    checkpoints.save(model, "last", model.training_state, step)
                    if best_state is None:
                        checkpoints.save(model, "best", model.training_state, step)

    budget_used = budget.fraction(step - start_step, elapsed)
    history["runs"].append(
        {"start_step": start_step, "end_step": step, "reason": reason, "elapsed_s": elapsed,
         "budget_used": budget_used}
    )
    last_state = training_state()
    event = checkpoints.save(model, "last", last_state, step)
    if event is not None:
        yield event
    if best_state is not None:
        model.network.load_state_dict(best_state["network"])
        model.noise_model.load_state_dict(best_state["noise_model"])
    model.training_state = last_state
    unsaved = False
    if checkpoint_path is not None:
        # rewritten so that the best file also carries the whole history (step count, losses)
        checkpoints.failing = False  # say it again at the end: this is the file the user keeps
        event = checkpoints.save(model, "best", last_state, step)
        unsaved = not isinstance(event, CheckpointSaved)
        if event is not None:
            yield event
    model.network.to(memory_format=torch.contiguous_format)
    yield TrainingDone(
        model=model, reason=reason, steps=step, best_val_loss=best_val if math.isfinite(best_val) else None,
        best_step=best_step, history=history, best_model_state=best_state, budget_used=budget_used,
        elapsed_s=elapsed, unsaved=unsaved,
    )


def train(
    images: Iterable[np.ndarray] | np.ndarray,
    noise_model: Any = COLEARN,
    config: TrainingConfig | None = None,
    resume: DivNoisingModel | None = None,
    checkpoint_path: str | Path | None = None,
) -> DivNoisingModel:
    """Run :func:`train_iter` to the end and return the trained model.

    Parameters are those of :func:`train_iter`.
    """
    return run_to_end(train_iter(images, noise_model, config, resume=resume, checkpoint_path=checkpoint_path))
