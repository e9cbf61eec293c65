"""Notifications for the user: napari toasts with a message and a hint, never a traceback dialog."""

from __future__ import annotations

import logging

from ..errors import DivNoisingError

log = logging.getLogger("napari_divnoising")


def user_message(exc: BaseException, action: str) -> str:
    """One-line message for ``exc`` raised while doing ``action`` (e.g. "Training")."""
    if isinstance(exc, DivNoisingError):
        return str(exc)
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return (f"{action} ran out of memory. Try a smaller patch or batch size, a smaller image, "
                "or the CPU device.")
    return (f"{action} failed unexpectedly ({type(exc).__name__}: {exc}). Check the inputs and settings; "
            "the full error is in the napari console log.")


def show_error(message: str) -> None:
    from napari.utils.notifications import show_error as _show

    _show(message)


def show_warning(message: str) -> None:
    from napari.utils.notifications import show_warning as _show

    _show(message)


def show_info(message: str) -> None:
    from napari.utils.notifications import show_info as _show

    _show(message)


def report_exception(exc: BaseException, action: str) -> None:
    """Show ``exc`` as an error notification; log the traceback of unexpected errors."""
    if not isinstance(exc, DivNoisingError):
        log.error("%s failed", action, exc_info=(type(exc), exc, exc.__traceback__))
    show_error(user_message(exc, action))
