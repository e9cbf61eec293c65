"""Choosing the torch device."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import DivNoisingError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device for a user setting.

    Parameters
    ----------
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"``, ``"mps"`` or a :class:`torch.device`.
    """
    import torch  # here, so that the settings (and ``divnoising --help``) load without torch

    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DivNoisingError(
                f"Device {device!r} was asked for, but this torch build sees no CUDA GPU; "
                "use --device cpu or auto."
            )
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise DivNoisingError(f"Unknown device {device!r}: {exc}") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DivNoisingError(
                f"Device {device!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) found."
            )
        return dev
    if name == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise DivNoisingError("Device 'mps' was asked for, but Apple MPS is not available here.")
        return torch.device("mps")
    raise DivNoisingError(
        f"Unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N)."
    )
