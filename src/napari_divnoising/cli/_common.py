"""Helpers shared by the command-line subcommands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomic import check_output_file


def default_planned_bytes(path: Path) -> int:
    """Bytes to expect at ``path`` when the caller gives none: a default-sized model with its optimizer
    state, written as best and last checkpoints plus one temporary copy, for ``.pt`` files; else 0."""
    if path.suffix.lower() != ".pt":
        return 0
    from ..model_io import estimate_file_bytes

    return 3 * estimate_file_bytes()


def checkpoint_bytes(config: Any) -> int:
    """Bytes training writes next to ``--out`` for the network of ``config`` (a resolved-enough
    :class:`~napari_divnoising.training.TrainingConfig`): the best and the last checkpoint with the
    optimizer state, plus one temporary copy while a checkpoint is replaced."""
    from ..model_io import estimate_file_bytes
    from ..training.config import CPU_DEFAULTS, GPU_DEFAULTS, SMALL_GPU_DEFAULTS

    filters = config.start_filters
    if filters is None:  # chosen for the device when training starts: count the widest
        filters = max(d["start_filters"] for d in (CPU_DEFAULTS, GPU_DEFAULTS, SMALL_GPU_DEFAULTS))
    return 3 * max(estimate_file_bytes(**network, start_filters=filters)
                   for network in config.possible_network_settings())


def check_output_path(
    path: str | Path, force: bool, planned_bytes: int | None = None, what: str = "file", option: str = "--out"
) -> Path:
    """Check an output file before any work starts; make its folder. One clear error line otherwise.

    Refuses a folder at ``path``, an existing file unless ``force``, a file where a folder of the
    path should be, a folder that cannot be written, and less free space than ``planned_bytes``
    (None: :func:`default_planned_bytes`). See :func:`~napari_divnoising.atomic.check_output_file`.
    """
    path = Path(path)
    if planned_bytes is None:
        planned_bytes = default_planned_bytes(path)
    return check_output_file(path, force=force, planned_bytes=planned_bytes, what=what, option=option)
