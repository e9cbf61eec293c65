"""Saving and loading DivNoising models as one file, without executing code on load.

The file is a ``torch.save`` of a plain dict::

    {"format": "napari-divnoising-model", "format_version": 1,
     "meta": "<JSON: name, data_mean, data_std, network and noise-model config, config, history>",
     "network": {name: tensor}, "noise_model": {name: tensor},
     "training_state": {"optimizer": ..., "scheduler": ...}   # optional}

and is read back with ``torch.load(weights_only=True)``, which only rebuilds
tensors and plain Python types (a pickle carrying code is refused). Files are
written atomically (:func:`~napari_divnoising.atomic.atomic_write_bytes`): the
bytes are built in memory, written to a temporary file in the same folder,
flushed to disk and moved into place; an OS error (disk full, read-only, ...)
raises :class:`~napari_divnoising.atomic.WriteError` and leaves any previous
file byte for byte.

During training the best model is written to ``OUT`` and the most recent one to
:func:`last_checkpoint_path` (``model.pt`` -> ``model.last.pt``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from .atomic import as_path, atomic_write_bytes
from .errors import DivNoisingError
from .model import DivNoisingModel
from .network import build_network
from .noise_models import noise_model_from_config

FORMAT_NAME = "napari-divnoising-model"
FORMAT_VERSION = 1


def last_checkpoint_path(path: str | Path) -> Path:
    """Path of the "last" checkpoint next to the best one: ``model.pt`` -> ``model.last.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.last{path.suffix or '.pt'}")


def cpu_state_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A host copy of a ``state_dict`` (detached; never aliasing the module's own tensors)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def model_to_dict(model: DivNoisingModel, training_state: dict | None = None) -> dict[str, Any]:
    """The dict that :func:`save_model` writes (tensors on the CPU, metadata as a JSON string)."""
    net = model.network
    meta = {
        "name": model.name,
        "data_mean": float(model.data_mean),
        "data_std": float(model.data_std),
        "network": net.settings(),
        "noise_model": model.noise_model.to_config(),
        "config": model.config,
        "history": model.history,
    }
    try:
        meta_json = json.dumps(meta, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise DivNoisingError(f"The model's config or history cannot be saved as JSON: {exc}") from None
    state = training_state if training_state is not None else model.training_state
    out: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "meta": meta_json,
        "network": cpu_state_copy(net.state_dict()),
        "noise_model": cpu_state_copy(model.noise_model.state_dict()),
    }
    if state is not None:
        out["training_state"] = _to_cpu(state)
    return out


def save_model(model: DivNoisingModel, path: str | Path, *, training_state: dict | None = None) -> Path:
    """Write ``model`` to ``path`` atomically and return the path.

    Parameters
    ----------
    model
        The model to save.
    path
        Target file (conventionally ``.pt``); its folder is created if needed.
    training_state
        Optimizer/scheduler state to store for "continue training"; defaults to
        ``model.training_state``.

    Raises
    ------
    DivNoisingError
        For arguments of the wrong type or a folder at ``path``; its subclass
        :class:`~napari_divnoising.atomic.WriteError` when the file cannot be written
        (the previous file, if any, is then unchanged and no temporary file is left).
    """
    if not isinstance(model, DivNoisingModel):
        raise DivNoisingError(
            f"save_model needs a DivNoisingModel (from train() or load_model()); got {type(model).__name__}."
        )
    if training_state is not None and not isinstance(training_state, dict):
        raise DivNoisingError(f"training_state must be a dict or None; got {type(training_state).__name__}.")
    path = as_path(path, "model path")
    if path.is_dir():
        raise DivNoisingError(f"{path} is a folder; give a file name for the model.")
    from .atomic import ensure_folder

    ensure_folder(path.parent)
    payload = model_to_dict(model, training_state)
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # in memory first: a full disk then shows as an OSError with its errno
    return atomic_write_bytes(path, buffer.getbuffer())


def estimate_file_bytes(
    depth: int = 2, start_filters: int = 32, z_dim: int = 64, with_training_state: bool = True,
    network: str = "divnoising",
) -> int:
    """About how many bytes :func:`save_model` writes for a network of this size (for free-space checks);
    the settings are those of the network's ``settings()``.

    The weights, plus Adam's two moments per weight when ``with_training_state``, plus a margin for the
    metadata and history.
    """
    numel = sum(p.numel() for p in build_network(network, depth, start_filters, z_dim).parameters())
    copies = 3 if with_training_state else 1
    return int(numel * 4 * copies * 1.05) + 256 * 1024


def model_from_dict(payload: Any, source: str = "model", device: str | torch.device = "cpu") -> DivNoisingModel:
    """Rebuild a model from the dict of :func:`model_to_dict`, checking it thoroughly."""
    foreign = (
        f"{source} is not a napari-divnoising model file (it may be a plain PyTorch state_dict or another "
        "tool's model); train one with `divnoising train` or the Train widget."
    )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise DivNoisingError(foreign)
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DivNoisingError(
            f"{source} is a damaged napari-divnoising model file: its format version {version!r} is not a "
            "positive whole number. Use another copy of the model or train it again."
        )
    if version > FORMAT_VERSION:
        raise DivNoisingError(
            f"{source} has model format version {version!r}; this napari-divnoising reads up to version "
            f"{FORMAT_VERSION}. Update napari-divnoising."
        )
    try:
        meta = json.loads(payload["meta"])
        net_cfg = meta["network"]
        network = build_network(str(net_cfg.get("network", "divnoising")), int(net_cfg["depth"]),
                                int(net_cfg["start_filters"]), int(net_cfg["z_dim"]))
        network.load_state_dict(payload["network"])
        noise_model = noise_model_from_config(meta["noise_model"], payload["noise_model"])
        model = DivNoisingModel(
            network=network,
            noise_model=noise_model,
            data_mean=float(meta["data_mean"]),
            data_std=float(meta["data_std"]),
            config=dict(meta.get("config") or {}),
            history=dict(meta.get("history") or {}),
            name=str(meta.get("name") or "divnoising"),
            training_state=payload.get("training_state"),
        )
    except DivNoisingError:
        raise
    except Exception as exc:  # missing keys, wrong shapes, bad JSON: a damaged or tampered file
        raise DivNoisingError(
            f"{source} is a damaged napari-divnoising model file ({type(exc).__name__}: {exc})."
        ) from None
    if not model.data_std > 0:
        raise DivNoisingError(f"{source} is a damaged napari-divnoising model file (data_std {model.data_std}).")
    return model.to(device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> DivNoisingModel:
    """Load a model saved by :func:`save_model` (never executes code from the file).

    Raises :class:`DivNoisingError` for a missing, truncated, corrupt or foreign file.
    """
    path = as_path(path, "model file")
    if not path.exists():
        raise DivNoisingError(f"Model file not found: {path}")
    if path.is_dir():
        raise DivNoisingError(f"{path} is a folder, not a model file.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (PermissionError, IsADirectoryError) as exc:
        raise DivNoisingError(f"Could not read {path}: {exc.strerror or exc}.") from None
    except Exception as exc:  # UnpicklingError (code or unknown types), zip errors, truncation, ...
        kind = type(exc).__name__
        raise DivNoisingError(
            f"{path} is not a readable napari-divnoising model file (truncated, corrupt or not a model: {kind})."
        ) from None
    return model_from_dict(payload, source=str(path), device=device)
