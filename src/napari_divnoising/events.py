"""The event protocol shared by every long-running workflow.

Long work (noise-model fitting, training, prediction, prior sampling) is a
generator of small typed events. Every such generator yields :class:`Progress`
(or richer step events) while it works and ends with exactly one event that
is a :class:`Done`; :func:`run_to_end` drains a generator and returns that
event's :attr:`Done.result`. Front ends (widgets, the command line) import the
event classes and dispatch with ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import DivNoisingError

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of work finished; ``message`` says what is happening."""

    done: int
    total: int
    message: str = ""


class Done:
    """Base class of the one final event of a workflow; subclasses say what :attr:`result` is."""

    @property
    def result(self) -> Any:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


def run_to_end(events: Iterable[Any], on_event: Callable[[Any], None] | None = None) -> Any:
    """Consume a workflow's events and return the :attr:`Done.result` of its final event.

    Parameters
    ----------
    events
        The generator of a workflow (e.g. ``train_iter(...)``).
    on_event
        Called with every event, the final one included (e.g. to print progress).

    Raises
    ------
    DivNoisingError
        If the events end without a :class:`Done` event.
    """
    done: Done | None = None
    for event in events:
        if on_event is not None:
            on_event(event)
        if isinstance(event, Done):
            done = event
    if done is None:
        raise DivNoisingError("The work ended without a result.")
    return done.result
