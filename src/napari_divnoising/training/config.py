"""Training settings: one dataclass that carries every default, range and help text.

The Train panel, the ``divnoising train`` options and the user guide's table
are derived from (or checked against) the field metadata here, so a default
or a range is written once. Each field's ``metadata`` holds:

- ``help``: one sentence for tooltips and ``--help``;
- ``label``: a short name for the panel;
- ``min`` / ``max``: the allowed range (inclusive) for numbers;
- ``advanced``: True for settings that are rarely changed (shown under
  "Advanced" in the panel);
- ``choices``: allowed values for strings.

``patch_size``, ``batch_size`` and ``start_filters`` left at ``None`` are chosen
for the device by :func:`device_defaults` when training starts.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..device import DEVICE_CHOICES
from ..errors import DivNoisingError, SettingError

if TYPE_CHECKING:
    import torch

#: Patch size, batch size, first-level filters and network type per device type. On a CPU, which is
#: compute-bound, more and cheaper steps learn more in a time budget, and the hierarchical network learns
#: more than the DivNoising network in the same time (benchmarks/results/ablation.md; co-learning a noise
#: model without clipping keeps the DivNoising network, see ``train_iter``); a GPU is not
#: compute-bound at these sizes (on an H200, batch 32 x 128^2 costs about what 8 x 64^2 does), and on an H100
#: the hierarchical network learned more in the same time there too (benchmarks/results/gpu_networks.md).
#: Small GPUs, not measured, keep the DivNoising network.
CPU_DEFAULTS = {"patch_size": 64, "batch_size": 8, "start_filters": 16, "network": "hierarchical"}
GPU_DEFAULTS = {"patch_size": 128, "batch_size": 32, "start_filters": 32, "network": "hierarchical"}
SMALL_GPU_DEFAULTS = {"patch_size": 128, "batch_size": 16, "start_filters": 32, "network": "divnoising"}
#: The settings whose empty value means "chosen for the device".
DEVICE_CHOSEN = tuple(CPU_DEFAULTS)
#: Network types (``network.build_network``): one latent grid as in the DivNoising paper, or latents at
#: several scales (``hierarchical_network``).
NETWORK_TYPES = ("divnoising", "hierarchical")
#: Depth and latent channels per network type (``depth`` and ``z_dim`` left empty): for the hierarchical
#: network, 3 latent levels of 16 channels each (benchmarks/results/ablation.md).
NETWORK_DEFAULTS = {"divnoising": {"depth": 2, "z_dim": 64}, "hierarchical": {"depth": 3, "z_dim": 16}}
#: GPUs with less memory than this get :data:`SMALL_GPU_DEFAULTS`.
SMALL_GPU_BYTES = 6 * 1024**3


def _meta(help: str, label: str = "", minimum: float | None = None, maximum: float | None = None,
          advanced: bool = False, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"help": help, "label": label, "advanced": advanced}
    if minimum is not None:
        meta["min"] = minimum
    if maximum is not None:
        meta["max"] = maximum
    if choices is not None:
        meta["choices"] = choices
    return meta


def _field(default: Any, **meta: Any) -> Any:
    return field(default=default, metadata=_meta(**meta))


@dataclass
class TrainingConfig:
    """All training settings (JSON-serialisable via :meth:`to_dict`).

    Every field documents itself in ``dataclasses.fields(TrainingConfig)[i].metadata``
    (see the module docstring). Step-based settings left at ``None`` follow the budget.
    """

    patch_size: int | None = _field(
        None, help="Side of the square training patches in pixels (a multiple of 2**depth); empty: chosen for the "
        "device (64 on a CPU, 128 on a GPU).", label="Patch size", minimum=8, maximum=1024)
    batch_size: int | None = _field(
        None, help="Patches per optimisation step; empty: chosen for the device (8 on a CPU, 32 on a GPU).",
        label="Batch size", minimum=1, maximum=1024)
    network: str | None = _field(
        None, help="Network type: divnoising (one latent grid, as in the DivNoising paper) or hierarchical (latents "
        "at several scales); empty: hierarchical, except divnoising when co-learning a noise model without "
        "clipping (images the camera did not clip, or noise-model clipping off), on Apple GPUs and on CUDA GPUs "
        "with less than 6 GiB.",
        label="Network", choices=NETWORK_TYPES, advanced=True)
    depth: int | None = _field(
        None, help="Down-sampling levels of the network (for a hierarchical network: its latent levels); empty: "
        "chosen for the network (2 for divnoising, 3 for hierarchical).", label="Depth", minimum=1, maximum=6)
    start_filters: int | None = _field(
        None, help="Convolution filters at the first level (doubling per level); empty: chosen for the device "
        "(16 on a CPU, 32 on a GPU).", label="Filters", minimum=4, maximum=256, advanced=True)
    z_dim: int | None = _field(
        None, help="Latent channels (of each level, for a hierarchical network); empty: chosen for the network (64 for "
        "divnoising, 16 for hierarchical).", label="Latent channels", minimum=1, maximum=512, advanced=True)
    beta: float = _field(1.0, help="Weight of the KL term: larger gives smoother, more diverse samples.",
                         label="KL weight (beta)", minimum=0.0, maximum=1e6, advanced=True)
    learning_rate: float = _field(1e-3, help="Adam learning rate.", label="Learning rate", minimum=1e-12,
                                  maximum=1e-1, advanced=True)
    max_minutes: float | None = _field(10.0, help="Time budget in minutes (training stops when it is used up).",
                                       label="Minutes", minimum=0.01, maximum=10080.0)
    max_steps: int | None = _field(None, help="Budget in optimisation steps (whichever budget runs out first).",
                                   label="Steps", minimum=1, maximum=10_000_000)
    kl_annealing_steps: int | None = _field(
        None, help="Steps over which the KL weight ramps up from 0; empty: kl_annealing_fraction of the budget.",
        label="KL annealing steps", minimum=1, maximum=10_000_000, advanced=True)
    kl_annealing_fraction: float = _field(0.1, help="Fraction of the budget over which the KL weight ramps up.",
                                          label="KL annealing fraction", minimum=0.0, maximum=1.0, advanced=True)
    validation_interval: int | None = _field(
        None, help="Steps between validations; empty: validations_per_run validations spread over the budget.",
        label="Validation interval", minimum=1, maximum=10_000_000, advanced=True)
    validations_per_run: int = _field(35, help="Validations spread evenly over the budget.",
                                      label="Validations per run", minimum=1, maximum=10_000, advanced=True)
    n_validation_patches: int = _field(64, help="Fixed held-out patches the validation loss is computed on.",
                                       label="Validation patches", minimum=1, maximum=100_000, advanced=True)
    val_fraction: float = _field(0.15, help="Fraction of the frames (or of each frame) held out for validation.",
                                 label="Validation fraction", minimum=0.01, maximum=0.9, advanced=True)
    ema_decay: float = _field(0.0, help="Weight averaging: validation, checkpoints and the trained model use an "
                              "exponential moving average of the weights with this decay (0: off).",
                              label="Weight averaging", minimum=0.0, maximum=0.99999, advanced=True)
    lr_factor: float = _field(0.5, help="Factor the learning rate is multiplied by when validation stalls.",
                              label="LR factor", minimum=0.01, maximum=0.99, advanced=True)
    lr_decay_fraction: float = _field(0.5, help="Fraction at the end of the budget over which the learning rate "
                                      "decays linearly (0: off).", label="LR decay fraction", minimum=0.0,
                                      maximum=1.0, advanced=True)
    lr_decay_floor: float = _field(0.05, help="Learning-rate factor reached at the end of the decay.",
                                   label="LR decay floor", minimum=1e-4, maximum=1.0, advanced=True)
    lr_patience: int = _field(4, help="Validations without improvement before the learning rate is reduced.",
                              label="LR patience", minimum=0, maximum=10_000, advanced=True)
    min_learning_rate: float = _field(1e-5, help="Least learning rate of the plateau schedule.",
                                      label="Least learning rate", minimum=0.0, maximum=1.0, advanced=True)
    early_stopping_patience: int = _field(
        10, help="Validations without improvement before training stops (never in the first half of the budget).",
        label="Early-stopping patience", minimum=1, maximum=10_000, advanced=True)
    early_stopping_min_delta: float = _field(1e-6, help="Least decrease of the validation loss that counts.",
                                             label="Early-stopping delta", minimum=0.0, maximum=1e30, advanced=True)
    min_fraction_before_stopping: float = _field(
        0.5, help="Early stopping never ends a run before this fraction of its budget is used.",
        label="Least budget used", minimum=0.0, maximum=1.0, advanced=True)
    collapse_kl_threshold: float = _field(1e-4, help="KL per pixel under which the posterior counts as collapsed.",
                                          label="Collapse KL", minimum=0.0, maximum=1.0, advanced=True)
    collapse_patience_steps: int | None = _field(
        None, help="Steps the KL must stay collapsed before acting; empty: the steps of one validation interval.",
        label="Collapse patience", minimum=1, maximum=10_000_000, advanced=True)
    stop_on_collapse: bool = _field(True, help="Stop when the posterior collapses after all restarts.",
                                    label="Stop on collapse", advanced=True)
    collapse_restarts: int = _field(2, help="Restarts from new weights (with longer KL annealing) after a collapse.",
                                    label="Collapse restarts", minimum=0, maximum=10, advanced=True)
    divergence_rollbacks: int = _field(
        3, help="Times a run that diverges (a non-finite loss, or a validation loss far above its best) goes back to "
        "its best weights and goes on with half the learning rate; 0: a non-finite loss ends the run.",
        label="Divergence rollbacks", minimum=0, maximum=10, advanced=True)
    sigma_min: float | None = _field(None, help="Co-learned noise model: least noise standard deviation; empty: 1% "
                                     "of the data's standard deviation.", label="Least noise sigma", minimum=0.0,
                                     maximum=1e30, advanced=True)
    noise_warm_start: bool = _field(True, help="Co-learned noise model: start from the noise variance-vs-signal line "
                                    "estimated from the images (off: from a flat variance).",
                                    label="Noise-model warm start", advanced=True)
    noise_clipping: bool = _field(
        True, help="Co-learned noise model: where the images pile up at a limit (a dark offset the camera clips at, "
        "saturation), a pixel at the limit stands for every value beyond it, and the denoised image is the mean the "
        "camera records (off: a plain Gaussian density).", label="Noise-model clipping", advanced=True)
    device: str = _field("auto", help="Where to train: auto (a GPU when there is one), cpu, cuda, cuda:N or mps.",
                         label="Device", choices=DEVICE_CHOICES)
    mixed_precision: bool = _field(True, help="bfloat16 autocast for the network on CUDA GPUs that support it.",
                                   label="Mixed precision", advanced=True)
    cuda_graphs: bool = _field(True, help="On a CUDA GPU, record the training step once as a CUDA graph and replay it "
                               "(far less work for the host per step); off by itself, with a warning, where a step "
                               "cannot be recorded.", label="CUDA graphs", advanced=True)
    log_interval: int | None = _field(
        None, help="Steps between reading the loss back from the device; empty: every step on a CPU, every 25 on a "
        "GPU (reading it back forces the GPU to wait).", label="Log interval", minimum=1, maximum=100_000,
        advanced=True)
    seed: int = _field(0, help="Random seed (weights, patches, latent noise).", label="Seed", minimum=0,
                       maximum=2**31 - 1, advanced=True)
    name: str = _field("divnoising", help="Model name stored in the file and in exported descriptions.",
                       label="Name", advanced=True)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dictionary."""
        return dataclasses.asdict(self)

    def network_settings(self, network: str | None = None) -> dict[str, Any]:
        """Network type, depth and latent channels, those left empty chosen for the network (``network`` where
        the type is left empty; None: the type the config names, which must not be empty)."""
        kind = (self.network or network or "").strip().lower()
        if kind not in NETWORK_DEFAULTS:
            asked = self.network or network
            raise SettingError("network", f"must be one of {', '.join(NETWORK_TYPES)} (got {asked!r}).")
        defaults = NETWORK_DEFAULTS[kind]
        return {"network": kind, "depth": self.depth if self.depth is not None else defaults["depth"],
                "z_dim": self.z_dim if self.z_dim is not None else defaults["z_dim"]}

    def possible_network_settings(self) -> list[dict[str, Any]]:
        """:meth:`network_settings` for each network type this config may train (one when the type is set; with
        the type left to the device, those that can be built with the depth asked for)."""
        if self.network:
            return [self.network_settings()]
        every = [self.network_settings(kind) for kind in NETWORK_TYPES]
        return [s for s in every if not (s["network"] == "hierarchical" and s["depth"] < 2)]

    def resolved(self, device: torch.device) -> TrainingConfig:
        """A copy with the device's and the network's settings (network type, patch and batch size, filters,
        depth, latent channels, log interval) filled in."""
        defaults = device_defaults(device)
        changes: dict[str, Any] = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        changes.update(self.network_settings(changes.get("network")))
        if self.log_interval is None:
            changes["log_interval"] = 1 if device.type == "cpu" else 25
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise :class:`DivNoisingError` with one clear line for the first setting out of range."""
        check_ranges(self)
        if self.network == "hierarchical" and self.depth is not None and self.depth < 2:
            raise SettingError("depth", "must be 2 or more for a hierarchical network (its latent levels; the "
                               "default network with a noise model): choose 3, or the divnoising network for depth 1.")
        if self.patch_size is not None:
            multiple = max(2 ** network["depth"] for network in self.possible_network_settings())
            if self.patch_size < 2 * multiple or self.patch_size % multiple:
                raise SettingError(
                    "patch_size", f"must be a multiple of {multiple} (2**depth) and at least {2 * multiple} "
                    f"(got {self.patch_size}); 64 or 128 are good choices."
                )
        if self.max_minutes is None and self.max_steps is None:
            raise DivNoisingError("Give a training budget: a number of minutes, of steps, or both.")


def field_metadata(name: str) -> dict[str, Any]:
    """The metadata (help, label, range, advanced) of the :class:`TrainingConfig` field ``name``."""
    for f in dataclasses.fields(TrainingConfig):
        if f.name == name:
            return dict(f.metadata)
    raise KeyError(name)


def field_default(name: str) -> Any:
    """The default value of the :class:`TrainingConfig` field ``name``."""
    for f in dataclasses.fields(TrainingConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)


def check_ranges(config: Any) -> None:
    """Raise :class:`DivNoisingError` for the first field of a config dataclass outside its declared range."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        meta = f.metadata
        if value is None:
            continue
        if "choices" in meta and isinstance(value, str):
            if value.split(":")[0].lower() not in meta["choices"]:
                raise SettingError(f.name, f"must be one of {', '.join(meta['choices'])} (got {value!r}).")
            continue
        if "min" not in meta and "max" not in meta:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise SettingError(f.name, f"must be a number (got {value!r}).")
        whole = isinstance(meta.get("min"), int) and isinstance(meta.get("max"), int)
        if whole and not isinstance(value, numbers.Integral):
            raise SettingError(f.name, f"must be a whole number (got {value!r}).")
        if not math.isfinite(value) or value < meta.get("min", -math.inf) or value > meta.get("max", math.inf):
            raise SettingError(
                f.name, f"must be between {meta.get('min', '-inf'):g} and {meta.get('max', 'inf'):g} (got {value!r})."
            )


def device_defaults(device: torch.device | str) -> dict[str, int]:
    """Patch size, batch size, filters and network type for ``device``: the measured CPU defaults, or a wider
    network and larger batches that fill a GPU."""
    import torch  # here, so that the settings (and ``divnoising --help``) load without torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            total = torch.cuda.get_device_properties(device).total_memory
        except (RuntimeError, AssertionError):
            total = 0
        return dict(GPU_DEFAULTS if total >= SMALL_GPU_BYTES else SMALL_GPU_DEFAULTS)
    if device.type == "mps":
        return dict(SMALL_GPU_DEFAULTS)
    return dict(CPU_DEFAULTS)
