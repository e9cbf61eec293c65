"""Training a DivNoising model (METHOD.md sections 3 and 5) as a generator of small events.

``train_iter(images, noise_model, config)`` yields, in order:

- :class:`TrainingStarted` first, carrying the live :class:`DivNoisingModel` (its
  weights are valid after every step, so a consumer that stops early keeps a
  usable model);
- :class:`TrainStep` after every optimisation step;
- :class:`Validation` every ``validation_interval`` steps (loss with the full
  ``beta`` on a fixed, seeded set of held-out patches and latent noise);
- :class:`CheckpointSaved` when ``checkpoint_path`` is given: the best model is
  written to ``checkpoint_path`` and the most recent one (with optimizer state,
  for "continue training") to ``model_io.last_checkpoint_path(checkpoint_path)``;
- :class:`TrainingWarning` for things the user should know (posterior collapse,
  a GMM noise model that does not cover the data, no held-out validation data);
- :class:`TrainingDone` last, with the model holding the best weights.

The noise model is a :class:`GMMNoiseModel` (kept fixed), a
:class:`GaussianNoiseModel` (trained with the network if its parameters are
trainable), :data:`COLEARN` / ``None`` for a co-learned Gaussian initialised
from the data, or a number: a fixed Gaussian of that sigma.

Training stops at ``max_steps`` or ``max_minutes`` (whichever comes first),
by early stopping on the validation loss, or on posterior collapse (if
``stop_on_collapse``). Closing the generator stops it between two steps; the
last checkpoint is then written if ``checkpoint_path`` was given.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .data import PatchSampler, load_frames, split_frames, validation_patches
from .device import resolve_device
from .errors import DivNoisingError
from .model import DivNoisingModel
from .network import DivNoisingVAE
from .noise_models import GaussianNoiseModel, GMMNoiseModel

#: Noise-model argument meaning "co-learn a Gaussian noise model (variance = a * signal + b)".
COLEARN = "gaussian"

STOP_REASONS = ("max_steps", "max_minutes", "early_stopping", "collapse", "stopped")


@dataclass
class TrainingConfig:
    """All training settings, with CPU-friendly defaults (JSON-serialisable via ``dataclasses.asdict``).

    Step-based settings left at ``None`` are chosen from the budget: the run is
    planned as ``max_steps`` steps, or as many as fit in ``max_minutes`` (measured
    over the first steps). Patience values count validations.
    """

    patch_size: int = 64
    batch_size: int = 8
    depth: int = 2
    start_filters: int = 32
    z_dim: int = 64
    beta: float = 1.0
    learning_rate: float = 1e-3
    max_minutes: float | None = 10.0
    max_steps: int | None = None
    kl_annealing_steps: int | None = None
    kl_annealing_fraction: float = 0.1
    validation_interval: int | None = None
    validations_per_run: int = 25
    n_validation_patches: int = 64
    val_fraction: float = 0.15
    lr_factor: float = 0.5
    lr_decay_fraction: float = 0.0
    lr_decay_floor: float = 0.05
    lr_patience: int = 4
    min_learning_rate: float = 1e-5
    early_stopping_patience: int = 10
    early_stopping_min_delta: float = 1e-6
    collapse_kl_threshold: float = 1e-4
    collapse_patience_steps: int | None = None
    stop_on_collapse: bool = True
    collapse_restarts: int = 2
    sigma_min: float | None = None
    device: str = "auto"
    mixed_precision: bool = True
    seed: int = 0
    name: str = "divnoising"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- events


@dataclass(frozen=True)
class TrainingStarted:
    """First event: the live model (valid after every step), where it runs and what data it sees."""

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
    """One optimisation step done (``step`` counts all steps of the model, across resumed runs)."""

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
    noise_a: float | None = None
    noise_b: float | None = None

    @property
    def elapsed(self) -> float:
        return self.elapsed_s


@dataclass(frozen=True)
class Validation:
    """Validation loss (reconstruction + beta * KL, per pixel) on the fixed held-out patches."""

    step: int
    val_loss: float
    best_val_loss: float
    is_best: bool
    reconstruction: float
    kl: float

    @property
    def loss(self) -> float:
        return self.val_loss


@dataclass(frozen=True)
class CheckpointSaved:
    path: Path
    kind: str  # "best" or "last"


@dataclass(frozen=True)
class TrainingWarning:
    message: str
    kind: str = "warning"  # "collapse", "noise_model_range", "validation", "warning"


@dataclass(frozen=True)
class TrainingDone:
    """Last event: ``model`` holds the best weights (by validation loss) when a validation ran."""

    model: DivNoisingModel
    reason: str
    steps: int
    best_val_loss: float | None
    best_step: int | None
    history: dict
    best_model_state: dict | None = None


TrainingEvent = TrainingStarted | TrainStep | Validation | CheckpointSaved | TrainingWarning | TrainingDone


# ---------------------------------------------------------------------- loss


def kl_per_pixel(mu: torch.Tensor, logvar: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over all latents, divided by the number of input pixels (B*H*W)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n_pixels


def loss_terms(
    model: DivNoisingModel,
    x_raw: torch.Tensor,
    eps: torch.Tensor | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
    memory_format: torch.memory_format | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (reconstruction, kl), both per pixel, for raw-unit patches ``x_raw`` of shape (B, 1, H, W).

    The network runs in normalised units (optionally under ``autocast``); its
    output is de-normalised and the noise-model likelihood and KL are
    evaluated in float32.
    """
    net = model.network
    x_norm = (x_raw - model.data_mean) / model.data_std
    if memory_format is not None:
        x_norm = x_norm.contiguous(memory_format=memory_format)
    with autocast or contextlib.nullcontext():
        mu, logvar = net.encode(x_norm)
    mu, logvar = mu.float(), logvar.float()
    if eps is None:
        eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    with autocast or contextlib.nullcontext():
        signal_norm = net.decode(z)
    signal = signal_norm.float() * model.data_std + model.data_mean
    reconstruction = -model.noise_model.log_likelihood(x_raw, signal).mean()
    kl = kl_per_pixel(mu, logvar, x_raw.shape[0] * x_raw.shape[-2] * x_raw.shape[-1])
    return reconstruction, kl


# ---------------------------------------------------------------------- helpers


def _check_config(config: TrainingConfig) -> None:
    multiple = 2**config.depth
    if config.depth < 1 or config.depth > 6:
        raise DivNoisingError(f"depth must be between 1 and 6 (got {config.depth}); 2 is the default, 3 for large structures.")
    if config.patch_size < 2 * multiple or config.patch_size % multiple:
        raise DivNoisingError(
            f"patch size {config.patch_size} must be a multiple of {multiple} (2**depth) and at least {2 * multiple}; "
            "64 or 128 are good choices."
        )
    if config.batch_size < 1:
        raise DivNoisingError(f"batch size must be at least 1 (got {config.batch_size}).")
    if not config.beta >= 0 or not math.isfinite(config.beta):
        raise DivNoisingError(f"beta must be a non-negative number (got {config.beta}); 1 is the default.")
    if not config.learning_rate > 0:
        raise DivNoisingError(f"learning rate must be positive (got {config.learning_rate}).")
    if config.max_minutes is None and config.max_steps is None:
        raise DivNoisingError("Give a training budget: a number of minutes, of steps, or both.")
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise DivNoisingError(f"max minutes must be positive (got {config.max_minutes}).")
    if config.max_steps is not None and config.max_steps < 1:
        raise DivNoisingError(f"max steps must be at least 1 (got {config.max_steps}).")
    if config.sigma_min is not None and not config.sigma_min > 0:
        raise DivNoisingError(f"sigma_min must be positive (got {config.sigma_min}).")
    if not 0 <= config.lr_decay_fraction <= 1 or not 0 < config.lr_decay_floor <= 1:
        raise DivNoisingError("lr_decay_fraction must be in [0, 1] and lr_decay_floor in (0, 1].")
    if not 0 < config.val_fraction < 1:
        raise DivNoisingError(f"validation fraction must be between 0 and 1 (got {config.val_fraction}).")


def _neighbour_noise_variance(regions: list[np.ndarray]) -> float:
    """Rough upper estimate of the noise variance: half the variance of horizontal neighbour differences."""
    diffs = [np.diff(r[:, : min(r.shape[1], 4096)], axis=1).ravel() for r in regions]
    return float(np.var(np.concatenate(diffs).astype(np.float64)) / 2.0)


def colearned_noise_model(mean: float, std: float, noise_variance: float, sigma_min: float | None) -> GaussianNoiseModel:
    """A trainable Gaussian noise model started from a flat variance near the data's noise level."""
    b = float(np.clip(0.5 * noise_variance, 1e-4 * std**2, 0.5 * std**2))
    floor = sigma_min if sigma_min is not None else 0.01 * std
    return GaussianNoiseModel(a=0.0, b=b, sigma_min=floor, offset=mean, scale=std, trainable=True)


def _resolve_noise_model(spec: Any, data_mean: float, data_std: float, regions: list[np.ndarray], config: TrainingConfig) -> nn.Module:
    if spec is None or (isinstance(spec, str) and spec.lower() in (COLEARN, "colearn", "co-learn", "co-learned")):
        return colearned_noise_model(data_mean, data_std, _neighbour_noise_variance(regions), config.sigma_min)
    if isinstance(spec, GMMNoiseModel):
        model = copy.deepcopy(spec)
        model.requires_grad_(False)
        return model
    if isinstance(spec, GaussianNoiseModel):
        return copy.deepcopy(spec)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not spec > 0:
            raise DivNoisingError(f"The Gaussian noise sigma must be positive (got {spec}).")
        return GaussianNoiseModel(a=0.0, b=float(spec) ** 2, sigma_min=1e-6 * data_std, trainable=False)
    raise DivNoisingError(
        f"Unknown noise model {spec!r}: give a GMM noise model, a Gaussian noise model, "
        f"{COLEARN!r} to co-learn one, or a noise sigma."
    )


def _gmm_range_warning(noise_model: nn.Module, regions: list[np.ndarray]) -> str | None:
    if not isinstance(noise_model, GMMNoiseModel):
        return None
    sample = np.concatenate([r.ravel()[:: max(1, r.size // 200_000)] for r in regions])
    low, high = np.percentile(sample, [1, 99])
    lo, hi = float(noise_model.min_signal), float(noise_model.max_signal)
    margin = 0.1 * (hi - lo)
    if low < lo - margin or high > hi + margin:
        return (
            f"The GMM noise model covers signals {lo:g} to {hi:g}, but the training data range from about "
            f"{low:g} to {high:g} (1-99th percentile). It extrapolates outside its range, which can hurt "
            "denoising: fit the noise model on calibration data with the same intensity range as these images."
        )
    return None


def _check_resume(resume: DivNoisingModel, config: TrainingConfig, spec: Any) -> None:
    net = resume.network
    for name, have, want in (
        ("depth", net.depth, config.depth),
        ("start_filters", net.start_filters, config.start_filters),
        ("z_dim", net.z_dim, config.z_dim),
    ):
        if have != want:
            raise DivNoisingError(
                f"The model to continue has {name} {have}, but {name} {want} was asked for; a model cannot change "
                f"its network. Use {name} {have} (or leave it unset) to continue, or train a new model."
            )
    kind = getattr(resume.noise_model, "kind", None)
    if isinstance(spec, nn.Module) and getattr(spec, "kind", None) != kind:
        raise DivNoisingError(
            f"The model to continue was trained with a {kind} noise model; it cannot continue with a "
            f"{getattr(spec, 'kind', type(spec).__name__)} noise model. Train a new model instead."
        )
    if isinstance(spec, (int, float)) and not isinstance(spec, bool) and kind != "gaussian":
        raise DivNoisingError(
            f"The model to continue was trained with a {kind} noise model; it cannot continue with a fixed "
            "Gaussian noise model. Train a new model instead."
        )


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


# ---------------------------------------------------------------------- the loop


def train_iter(
    images: Iterable[np.ndarray] | np.ndarray,
    noise_model: Any = COLEARN,
    config: TrainingConfig | None = None,
    resume: DivNoisingModel | None = None,
    checkpoint_path: str | Path | None = None,
) -> Iterator[TrainingEvent]:
    """Train (or continue training) a DivNoising model, yielding events (see the module docstring).

    Parameters
    ----------
    images
        One or more 2-D images or 3-D stacks (frames are separate images), any integer or float dtype.
    noise_model
        A GMM or Gaussian noise model, :data:`COLEARN` (or ``None``) to co-learn a Gaussian one, or a
        number: the sigma of a fixed Gaussian noise model.
    config
        The settings; defaults to ``TrainingConfig()``.
    resume
        A model to continue training: same network, normalisation and noise model; its optimizer
        state is restored when it was saved with one. It is copied, not modified.
    checkpoint_path
        Where to write the best model (and, next to it, the last one with ``.last`` before the suffix).
    """
    from .model_io import last_checkpoint_path, save_model

    config = copy.deepcopy(config) if config is not None else TrainingConfig()
    _check_config(config)
    if resume is not None:
        _check_resume(resume, config, noise_model)
    device = resolve_device(config.device)
    frames = load_frames(images, config.patch_size)
    data = split_frames(frames, config.patch_size, config.val_fraction, seed=config.seed)

    if resume is not None:
        model = copy.deepcopy(resume)
        model.history = copy.deepcopy(resume.history)
    else:
        torch.manual_seed(config.seed)
        network = _new_network(config)
        nm = _resolve_noise_model(noise_model, data.mean, data.std, data.train_regions, config)
        model = DivNoisingModel(network, nm, data.mean, data.std, name=config.name)
    model.config = {**model.config, **config.to_dict()}
    model.training_state = None
    history = model.history
    for key in ("train_steps", "train_loss", "train_kl", "val_steps", "val_loss", "runs"):
        history.setdefault(key, [])
    start_step = int(history.get("steps", 0))
    model.to(device)

    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    # channels_last runs the convolutions (mkldnn / cuDNN) about 20% faster than NCHW on CPU too
    memory_format = torch.channels_last
    if memory_format is not None:
        model.network.to(memory_format=memory_format)
    autocast = _autocast_for(device, config.mixed_precision)

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

    def budget_progress(elapsed: float, done_here: int) -> float:
        # Fraction of the budget used: time or steps, whichever runs out first.
        fraction = elapsed / max_seconds if math.isfinite(max_seconds) else 0.0
        if run_steps is not None:
            fraction = max(fraction, done_here / run_steps)
        return min(1.0, fraction)

    def budget_decay(progress: float) -> float:
        # Linear decay over the last part of the budget: short runs settle instead of ending mid-oscillation.
        f = config.lr_decay_fraction
        if f <= 0 or progress <= 1 - f:
            return 1.0
        return config.lr_decay_floor + (1 - config.lr_decay_floor) * max(0.0, 1 - progress) / f

    rng = np.random.default_rng([config.seed, start_step])
    sampler = PatchSampler(data.train_regions, config.patch_size, rng)
    val_np = validation_patches(data.val_regions, config.patch_size, config.n_validation_patches, seed=config.seed)
    val_x = torch.from_numpy(val_np)[:, None].to(device)
    lat = config.patch_size // model.network.size_multiple
    val_eps = torch.randn(
        (len(val_np), model.network.z_dim, lat, lat), generator=torch.Generator().manual_seed(config.seed + 17)
    ).to(device)
    latent_shape = (config.batch_size, model.network.z_dim, lat, lat)
    batch_np = np.empty((config.batch_size, config.patch_size, config.patch_size), dtype=np.float32)

    colearned = isinstance(model.noise_model, GaussianNoiseModel) and model.noise_model.alpha.requires_grad
    n_parameters = sum(p.numel() for p in model.network.parameters())
    max_seconds = config.max_minutes * 60.0 if config.max_minutes is not None else math.inf
    run_steps = config.max_steps if config.max_steps is not None else None
    target_step = start_step + run_steps if run_steps is not None else None

    yield TrainingStarted(
        model=model, device=str(device), n_parameters=n_parameters, start_step=start_step,
        max_steps=target_step, max_minutes=config.max_minutes, n_train_pixels=data.n_train_pixels,
        validation_split=data.split, config=config.to_dict(),
    )
    for message in data.warnings:
        yield TrainingWarning(message, "validation")
    range_warning = _gmm_range_warning(model.noise_model, data.train_regions)
    if range_warning:
        yield TrainingWarning(range_warning, "noise_model_range")

    # Schedule: fixed now when the budget is in steps, else planned from the measured step time.
    anneal_steps = config.kl_annealing_steps if config.kl_annealing_steps is not None else history.get("kl_annealing_steps")
    val_interval = config.validation_interval
    collapse_window = config.collapse_patience_steps
    calibration_steps = 5

    def plan(planned_steps: int) -> None:
        nonlocal anneal_steps, val_interval, collapse_window
        planned_steps = max(1, planned_steps)
        if anneal_steps is None:
            anneal_steps = max(1, int(config.kl_annealing_fraction * planned_steps))
            history["kl_annealing_steps"] = anneal_steps
        if val_interval is None:
            val_interval = int(min(500, max(10, planned_steps // max(1, config.validations_per_run))))
        if collapse_window is None:
            collapse_window = max(20, val_interval)

    planned = False
    if run_steps is not None and not math.isfinite(max_seconds):
        plan(run_steps)
        planned = True

    best_val = float(history.get("best_val_loss", math.inf))
    best_step = history.get("best_step")
    best_state: dict | None = _state_copy(model) if resume is not None and math.isfinite(best_val) else None
    validations_without_improvement = 0
    recent_kl: deque[float] = deque()
    collapse_warned = False
    restarts_done = 0
    anneal_origin = 0  # KL annealing ramps from this step (moved by a restart after posterior collapse)
    reason = "stopped"
    step = start_step
    start_time = time.monotonic()
    last_saved_step = -1

    def save_last() -> Path | None:
        nonlocal last_saved_step
        if checkpoint_path is None or last_saved_step == step:
            return None
        history["steps"] = step
        path = save_model(model, last_checkpoint_path(checkpoint_path), training_state=training_state())
        last_saved_step = step
        return path

    def validate() -> tuple[float, float, float]:
        model.network.eval()
        recon_sum = kl_sum = 0.0
        n = 0
        with torch.no_grad():
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
            elapsed = time.monotonic() - start_time
            if target_step is not None and step >= target_step:
                reason = "max_steps"
                break
            if elapsed >= max_seconds:
                reason = "max_minutes"
                break
            done_here = step - start_step
            if not planned and done_here >= calibration_steps:
                per_step = elapsed / max(1, done_here)
                by_time = int(max_seconds / per_step) if math.isfinite(max_seconds) else None
                plan(min(x for x in (by_time, run_steps) if x is not None))
                planned = True

            kl_weight = config.beta * (min(1.0, (step - anneal_origin) / anneal_steps) if anneal_steps else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = plateau_lr * budget_decay(budget_progress(elapsed, done_here))
            x = torch.from_numpy(sampler.sample(config.batch_size, batch_np))[:, None].to(device, non_blocking=True)
            eps = None
            if not cuda:  # numpy's ziggurat sampler is several times faster than torch.randn on CPU
                eps = torch.from_numpy(rng.standard_normal(latent_shape, dtype=np.float32)).to(device)
            recon, kl = loss_terms(model, x, eps, autocast, memory_format)
            loss = recon + kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_f, recon_f, kl_f = loss.item(), recon.item(), kl.item()
            if not math.isfinite(loss_f):
                raise DivNoisingError(
                    f"Training diverged at step {step + 1} (loss {loss_f}); try a smaller learning rate or a "
                    "better-matched noise model. The model before this step is kept."
                )
            optimizer.step()
            step += 1

            history["train_steps"].append(step)
            history["train_loss"].append(loss_f)
            history["train_kl"].append(kl_f)
            elapsed = time.monotonic() - start_time
            done_here = step - start_step
            fraction = budget_progress(elapsed, done_here)
            eta = elapsed * (1 - fraction) / fraction if fraction > 0 else math.inf
            yield TrainStep(
                step=step, max_steps=target_step, loss=loss_f, reconstruction=recon_f, kl=kl_f, kl_weight=kl_weight,
                lr=optimizer.param_groups[0]["lr"], elapsed_s=elapsed, eta_s=eta, fraction=fraction,
                noise_a=model.noise_model.a if colearned else None, noise_b=model.noise_model.b if colearned else None,
            )

            annealed = anneal_steps is not None and step >= anneal_origin + anneal_steps
            if annealed and collapse_window:
                recent_kl.append(kl_f)
                while len(recent_kl) > collapse_window:
                    recent_kl.popleft()
                if (
                    not collapse_warned
                    and len(recent_kl) == collapse_window
                    and max(recent_kl) < config.collapse_kl_threshold
                ):
                    collapse_warned = True
                    if resume is None and restarts_done < config.collapse_restarts:
                        # The reference restarts on collapse; a new start with slower annealing usually escapes.
                        restarts_done += 1
                        anneal_steps = 2 * anneal_steps
                        anneal_origin = step
                        yield TrainingWarning(
                            f"Posterior collapse at step {step}: the KL term stayed below "
                            f"{config.collapse_kl_threshold:g} per pixel for {collapse_window} steps, so the decoder "
                            "ignored the input. Restarting from new random weights with KL annealing over "
                            f"{anneal_steps} steps (restart {restarts_done} of {config.collapse_restarts}).",
                            "collapse",
                        )
                        torch.manual_seed(config.seed + 1000 * restarts_done)
                        model.network.load_state_dict(_new_network(config).state_dict())
                        model.noise_model.load_state_dict(initial_noise_model_state)
                        optimizer, scheduler = new_optimizer()
                        plateau_lr = config.learning_rate
                        history.setdefault("collapse_restarts", []).append(step)
                        best_val, best_step, best_state = math.inf, None, None
                        history.pop("best_val_loss", None)
                        history.pop("best_step", None)
                        validations_without_improvement = 0
                        recent_kl.clear()
                        collapse_warned = False
                        continue
                    action = "Training stopped." if config.stop_on_collapse else "Training continues."
                    yield TrainingWarning(
                        f"Posterior collapse at step {step}: the KL term stayed below {config.collapse_kl_threshold:g} "
                        f"per pixel for {collapse_window} steps, so the decoder ignores the input and the model "
                        "cannot denoise"
                        + (f", also after {restarts_done} restart(s) from new weights" if restarts_done else "")
                        + ". Train a new model with longer KL annealing (kl_annealing_steps), a smaller "
                        f"beta, or a different noise model. {action}",
                        "collapse",
                    )
                    if config.stop_on_collapse:
                        reason = "collapse"
                        break

            if val_interval and done_here % val_interval == 0:
                val_loss, val_recon, val_kl = validate()
                history["val_steps"].append(step)
                history["val_loss"].append(val_loss)
                is_best = val_loss < best_val - config.early_stopping_min_delta
                if is_best:
                    best_val, best_step = val_loss, step
                    history["best_val_loss"], history["best_step"] = best_val, best_step
                    best_state = _state_copy(model)
                yield Validation(step, val_loss, best_val, is_best, val_recon, val_kl)
                history["steps"] = step
                if checkpoint_path is not None:
                    if is_best:
                        path = save_model(model, checkpoint_path, training_state=training_state())
                        yield CheckpointSaved(Path(path), "best")
                    path = save_last()
                    if path is not None:
                        yield CheckpointSaved(Path(path), "last")
                if annealed:
                    for group in optimizer.param_groups:
                        group["lr"] = plateau_lr
                    scheduler.step(val_loss)
                    plateau_lr = optimizer.param_groups[0]["lr"]
                    validations_without_improvement = 0 if is_best else validations_without_improvement + 1
                    if validations_without_improvement >= config.early_stopping_patience:
                        reason = "early_stopping"
                        break
        finished = True
    finally:
        history["steps"] = step
        history["elapsed_s"] = float(history.get("elapsed_s", 0.0)) + (time.monotonic() - start_time)
        if not finished:
            # Closed (Stop / Ctrl-C) or failed between steps: keep what we have on disk.
            history["runs"].append({"start_step": start_step, "end_step": step, "reason": "stopped"})
            model.training_state = training_state()
            if checkpoint_path is not None and step > start_step:
                with contextlib.suppress(Exception):
                    save_last()
                    if best_state is None:
                        save_model(model, checkpoint_path, training_state=model.training_state)

    history["runs"].append({"start_step": start_step, "end_step": step, "reason": reason})
    last_state = training_state()
    if checkpoint_path is not None:
        path = save_last()
        if path is not None:
            yield CheckpointSaved(Path(path), "last")
    if best_state is not None:
        model.network.load_state_dict(best_state["network"])
        model.noise_model.load_state_dict(best_state["noise_model"])
    model.training_state = last_state
    if checkpoint_path is not None:
        # rewritten so that the best file also carries the whole history (step count, losses)
        path = save_model(model, checkpoint_path, training_state=last_state)
        yield CheckpointSaved(Path(path), "best")
    if memory_format is not None:
        model.network.to(memory_format=torch.contiguous_format)
    yield TrainingDone(
        model=model, reason=reason, steps=step, best_val_loss=best_val if math.isfinite(best_val) else None,
        best_step=best_step, history=history, best_model_state=best_state,
    )


def train(
    images: Iterable[np.ndarray] | np.ndarray,
    noise_model: Any = COLEARN,
    config: TrainingConfig | None = None,
    resume: DivNoisingModel | None = None,
    checkpoint_path: str | Path | None = None,
) -> DivNoisingModel:
    """Run :func:`train_iter` to the end and return the trained model."""
    done = None
    for event in train_iter(images, noise_model, config, resume=resume, checkpoint_path=checkpoint_path):
        if isinstance(event, TrainingDone):
            done = event
    assert done is not None
    return done.model
