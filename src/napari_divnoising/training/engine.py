"""The training loop: :func:`train_iter` yields small events (see :mod:`.events`) while it trains.

``train_iter(images, noise_model, config)`` yields, in order:

- :class:`TrainingStarted` first, carrying the live model (its weights are valid after
  every step, so a consumer that stops early keeps a usable model);
- :class:`TrainStep` after every optimisation step;
- :class:`Validation` at evenly spread fractions of the budget (the loss with the full
  ``beta`` on a fixed, seeded set of held-out patches and latent noise);
- :class:`CheckpointSaved` when ``checkpoint_path`` is given and a file was written;
- :class:`TrainingWarning` for what the user should know (posterior collapse, a noise
  model that does not cover the data, a checkpoint that could not be written, a diverged
  run that went back to its best weights);
- :class:`TrainingDone` last, with the model holding the best weights.

Training stops when the budget (``max_minutes`` and/or ``max_steps``) is used up, by
early stopping on the validation loss (never before ``min_fraction_before_stopping`` of
the budget), or on posterior collapse after all restarts. A run that diverges (a non-finite
loss, or a validation loss ``DIVERGENCE_MARGIN`` above its best; see ``_diverged``) goes back to its best
weights with a fresh optimizer at half the learning rate, up to ``divergence_rollbacks``
times. Closing the generator stops it
between two steps; the last checkpoint is then written if ``checkpoint_path`` was given.
The schedule follows the budget fraction (see :mod:`.schedule`), so a slow warm-up on a
GPU does not shorten the run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import TrainingData, load_frames, split_frames
from ..device import resolve_device
from ..events import run_to_end
from ..hierarchical_network import HierarchicalVAE
from ..model import DivNoisingModel
from ..network import DivNoisingVAE, build_network
from ..noise_model_fitting import ClippingLimits
from ..noise_models import GaussianNoiseModel
from ..validation import check_train_args
from .averaging import WeightAverage
from .checkpoints import BestModel, Checkpointer, load_state
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
from .feed import ValidationSet, batch_source
from .graphed import CudaGraphs, GraphedStep, uses_cuda_graphs
from .loss import loss_terms
from .loss_log import DivergedLossError, LossLog
from .noise_setup import (
    COLEARN,
    check_resume,
    colearned_clipping,
    gmm_range_warning,
    is_colearn,
    resolve_noise_model,
)
from .optimiser import Optimiser
from .schedule import KL_HOLD, Budget, CollapseMonitor, KLAnnealing, ValidationSchedule


def _new_network(config: TrainingConfig) -> DivNoisingVAE | HierarchicalVAE:
    return build_network(config.network, config.depth, config.start_filters, config.z_dim)


def _autocast_for(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager | None:
    # bf16 keeps fp32's exponent range, so no gradient scaling is needed; the noise-model
    # likelihood and KL are computed in fp32 outside the autocast regions (see loss_terms).
    # Without the cast cache, as a step recorded in a CUDA graph requires.
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return None


#: A validation loss this far (nats per pixel) above the best one is a diverged run, not noise: a model that much
#: worse assigns the validation pixels e (2.7) times less likelihood each.
DIVERGENCE_MARGIN = 1.0
#: Factor on the learning rate after a divergence rollback.
DIVERGENCE_LR_FACTOR = 0.5


def _diverged(val_loss: float, best_val_loss: float, annealed: bool, restarted: bool) -> bool:
    """Whether a validation loss says the run diverged: more than ``DIVERGENCE_MARGIN`` above the best once the
    KL weight is at its full value. During the KL ramp, whose validations may rise while the weight is held at
    0, only when it also more than doubles; never during the ramp after a collapse restart (new weights)."""
    if restarted and not annealed:
        return False
    margin = DIVERGENCE_MARGIN if annealed else max(DIVERGENCE_MARGIN, abs(best_val_loss))
    return not val_loss <= best_val_loss + margin


def _collapse_warning(step: int, window: int, config: TrainingConfig, restarts_done: int,
                      restart_left_out: bool) -> TrainingWarning:
    """The warning for a collapse that is not answered by a restart."""
    action = "Training stopped." if config.stop_on_collapse else "Training continues."
    return TrainingWarning(
        f"Posterior collapse at step {step}: the KL term stayed below {config.collapse_kl_threshold:g} "
        f"per pixel for {window} steps, so the decoder ignores the input and the model cannot denoise"
        + (f", also after {restarts_done} restart(s) from new weights" if restarts_done else "")
        + (" (too little of the budget is left to restart)" if restart_left_out else "")
        + ". Train a new model with longer KL annealing (kl_annealing_steps), a smaller "
        f"beta, or a different noise model. {action}",
        "collapse",
    )


def _prepare_model(images: Any, noise_model: Any, config: TrainingConfig, resume: DivNoisingModel | None,
                   device: torch.device, limits: ClippingLimits | None = None,
                   ) -> tuple[DivNoisingModel, TrainingData]:
    """The data split and the model to train: a copy of ``resume`` or a new network and noise model (a co-learned
    one keeps the clipping ``limits``)."""
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
        nm = resolve_noise_model(noise_model, data.mean, data.std, data.train_regions, config, limits)
        model = DivNoisingModel(network, nm, data.mean, data.std, name=config.name)
    model.config = {**model.config, **config.to_dict()}
    model.training_state = None
    for key in ("train_steps", "train_loss", "train_kl", "val_steps", "val_loss", "runs"):
        model.history.setdefault(key, [])
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    # channels_last runs the convolutions (mkldnn / cuDNN) faster than NCHW, on a CPU too
    model.network.to(memory_format=torch.channels_last)
    return model, data


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
        The settings; defaults to ``TrainingConfig()``. Patch size, batch size and filters left at
        ``None`` are chosen for the device (:func:`~napari_divnoising.training.config.device_defaults`).
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
    if resume is not None:  # a continued model keeps its network (settings asked for are checked against it)
        kept = resume.network.settings()
        config = dataclasses.replace(config, **{k: v for k, v in kept.items() if getattr(config, k) is None})
    device = resolve_device(config.device)
    limits = None
    if resume is None and is_colearn(noise_model):
        if isinstance(images, Iterator):  # looked at twice: for the clipping and for the training data
            images = list(images)
        limits = colearned_clipping(load_frames(images, 1), config)
        if config.network is None and not limits.clips:
            # Co-learning a plain Gaussian density, the hierarchical network's finest latents take up part of the
            # noise and the learned noise is too weak (benchmarks/results/ablation.md); the DivNoising network
            # learns it better. A noise model that knows the camera's clipping learns it with either network.
            config = dataclasses.replace(config, network="divnoising")
    config = config.resolved(device)
    config.validate()
    model, data = _prepare_model(images, noise_model, config, resume, device, limits)
    history = model.history
    start_step = int(history.get("steps", 0))
    on_cpu = device.type == "cpu"
    memory_format = torch.channels_last
    autocast = _autocast_for(device, config.mixed_precision)
    average = WeightAverage(model.network, config.ema_decay) if config.ema_decay > 0 else None

    def averaged() -> contextlib.AbstractContextManager:
        return average.applied() if average is not None else contextlib.nullcontext()

    trainable = [p for p in list(model.network.parameters()) + list(model.noise_model.parameters()) if p.requires_grad]
    graphs = uses_cuda_graphs(config.cuda_graphs, device)
    optimiser = Optimiser(trainable, config, resume.training_state if resume is not None else None, capturable=graphs)
    graphed = GraphedStep(lambda x: loss_terms(model, x, None, autocast, memory_format), optimiser,
                          CudaGraphs(device)) if graphs else None
    graph_failure_reported = False
    initial_noise_model_state = {k: v.clone() for k, v in model.noise_model.state_dict().items()}
    rng = np.random.default_rng([config.seed, start_step])
    next_batch = batch_source(data, config, device, rng, start_step)
    validation_set = ValidationSet(data, config, model.network.noise_channels, model.network.size_multiple, device)
    lat = config.patch_size // model.network.size_multiple
    latent_shape = (config.batch_size, model.network.noise_channels, lat, lat)
    max_seconds = config.max_minutes * 60.0 if config.max_minutes is not None else math.inf
    run_steps = config.max_steps
    target_step = start_step + run_steps if run_steps is not None else None

    yield TrainingStarted(
        model=model, device=str(device), n_parameters=sum(p.numel() for p in model.network.parameters()),
        start_step=start_step, max_steps=target_step, max_minutes=config.max_minutes,
        n_train_pixels=data.n_train_pixels, validation_split=data.split, config=config.to_dict(),
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
    best = BestModel(history, model, resume is not None, config.early_stopping_min_delta)
    colearned = isinstance(model.noise_model, GaussianNoiseModel) and model.noise_model.alpha.requires_grad
    losses = LossLog(history, int(config.log_interval or 1), start_step,
                     on_kl=lambda s, kl: collapse.update(s, kl) if annealing.done else None,
                     noise_model=model.noise_model if colearned else None)
    budget = Budget(max_seconds, run_steps, clock)
    restarts_done = 0
    rollbacks_done = 0
    reason = "stopped"
    step = start_step

    def may_roll_back() -> bool:
        return best.state is not None and rollbacks_done < config.divergence_rollbacks

    def roll_back(at_step: int, why: str) -> TrainingWarning:
        """Back to the best weights with a fresh optimizer at a lower learning rate."""
        nonlocal rollbacks_done
        rollbacks_done += 1
        load_state(model, best.state)
        if average is not None:
            average.reset()
        optimiser.roll_back(DIVERGENCE_LR_FACTOR)
        best.reset_count()
        history.setdefault("divergence_rollbacks", []).append(at_step)
        return TrainingWarning(
            f"Training diverged at step {at_step} ({why}). Going on from the best weights (step {best.step}) with "
            f"the learning rate lowered to {optimiser.lr:.3g} (rollback {rollbacks_done} of "
            f"{config.divergence_rollbacks}).", "divergence",
        )

    finished = False
    try:
        model.network.train()
        while True:
            try:
                elapsed = budget.elapsed()
                done_here = step - start_step
                exhausted = budget.exhausted(done_here, elapsed)
                if exhausted:
                    reason = exhausted
                    break
                progress = budget.progress(done_here, elapsed)
                kl_weight = annealing.weight(step, progress)
                optimiser.set_progress(progress)
                x = next_batch()
                attempted = step + 1
                eps = None
                if on_cpu:  # numpy's ziggurat sampler is several times faster than torch.randn on a CPU
                    eps = torch.from_numpy(rng.standard_normal(latent_shape, dtype=np.float32))
                if graphed is not None:
                    loss, recon, kl = graphed(x, kl_weight)
                    losses.add(step + 1, loss, recon, kl)
                    if losses.full:
                        losses.read_back()
                else:
                    recon, kl = loss_terms(model, x, eps, autocast, memory_format)
                    loss = recon + kl_weight * kl
                    losses.add(step + 1, loss, recon, kl)
                    # read back before the update, so a diverged step never reaches the weights on a CPU
                    optimiser.step(loss, before_update=losses.read_back if losses.full else None)
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
                if graphed is not None and graphed.failure and not graph_failure_reported:
                    graph_failure_reported = True
                    yield TrainingWarning(f"Training steps run without CUDA graphs (slower): a step could not be "
                                          f"recorded ({graphed.failure}).", "cuda_graphs")
                logged_step, loss_f, recon_f, kl_f = losses.last
                yield TrainStep(
                    step=step, max_steps=target_step, loss=loss_f, reconstruction=recon_f, kl=kl_f, kl_weight=kl_weight,
                    lr=optimiser.lr, elapsed_s=elapsed, eta_s=budget.eta(done_here, elapsed),
                    fraction=fraction, steps_per_s=budget.steps_per_second(), logged_step=logged_step,
                    noise_a=losses.noise_ab[0], noise_b=losses.noise_ab[1],
                )

                window = config.collapse_patience_steps or max(20, validations.steps_between(done_here, progress))
                if annealing.done and collapse.collapsed(step, window):
                    collapse.reset()
                    steps_left = target_step - step if target_step is not None else None
                    restart_fits = annealing.restart_fits(progress, steps_left)
                    may_restart = resume is None and restarts_done < config.collapse_restarts
                    if may_restart and restart_fits:
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
                        optimiser.restart()
                        history.setdefault("collapse_restarts", []).append(step)
                        history.pop("kl_annealing_done", None)
                        # The best model so far stays the best until the new start beats it on the same validation.
                        best.reset_count()
                        continue
                    yield _collapse_warning(step, window, config, restarts_done, may_restart and not restart_fits)
                    if config.stop_on_collapse:
                        reason = "collapse"
                        break

                if validations.due(done_here, progress):
                    losses.read_back()
                    with averaged():  # validated, kept and saved: the averaged weights, swapped in once
                        val_loss, val_recon, val_kl = validation_set.loss(model, autocast, memory_format)
                        history["val_steps"].append(step)
                        history["val_loss"].append(val_loss)
                        is_best = best.consider(model, val_loss, step)
                        history["steps"] = step
                        state = optimiser.state()
                        saved_events = [checkpoints.save(model, kind, state, step)
                                        for kind in (("best", "last") if is_best else ("last",))]
                    yield Validation(step, val_loss, best.val_loss, is_best, val_recon, val_kl)
                    for event in saved_events:
                        if event is not None:
                            yield event
                    if may_roll_back() and _diverged(val_loss, best.val_loss, annealing.done, restarts_done > 0):
                        yield roll_back(step, f"validation loss {val_loss:.4g} against the best {best.val_loss:.4g}")
                        continue
                    if annealing.done:
                        optimiser.after_validation(val_loss)
                        if (
                            best.count(is_best) >= config.early_stopping_patience
                            and min(fraction, progress) >= config.min_fraction_before_stopping
                        ):
                            reason = "early_stopping"
                            break
            except DivergedLossError as diverged:
                if not may_roll_back():
                    raise
                step = max(step, attempted)  # the step that read back the loss was run, and counts
                yield roll_back(diverged.step, "a non-finite loss")
        losses.read_back()
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
            if best.state is not None and not all(torch.isfinite(p).all() for p in model.network.parameters()):
                load_state(model, best.state)  # a diverged run keeps its best weights
            model.training_state = optimiser.state()
            if step > start_step:
                with contextlib.suppress(Exception):
                    checkpoints.save(model, "last", model.training_state, step)
                    if best.state is None:
                        checkpoints.save(model, "best", model.training_state, step)

    budget_used = budget.fraction(step - start_step, elapsed)
    history["runs"].append(
        {"start_step": start_step, "end_step": step, "reason": reason, "elapsed_s": elapsed,
         "budget_used": budget_used}
    )
    last_state = optimiser.state()
    event = checkpoints.save(model, "last", last_state, step)
    if event is not None:
        yield event
    if best.state is not None:
        load_state(model, best.state)
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
        model=model, reason=reason, steps=step, best_val_loss=best.val_loss if math.isfinite(best.val_loss) else None,
        best_step=best.step, history=history, best_model_state=best.state, budget_used=budget_used,
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
