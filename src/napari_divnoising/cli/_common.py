"""Helpers shared by the command-line subcommands."""

from __future__ import annotations

from pathlib import Path

from ..errors import DivNoisingError


def check_output_path(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing file unless ``force``; make the parent folder."""
    path = Path(path)
    if path.exists() and not force:
        raise DivNoisingError(f"{path} already exists; pass --force to overwrite it.")
    if path.is_dir():
        raise DivNoisingError(f"{path} is a folder; give a file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
