"""Small typed events that long-running generators yield.

Widgets wrap the generators in napari thread workers and the command line in
a progress bar; each module adds its own event types next to these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of work finished; ``message`` says what is happening."""

    done: int
    total: int
    message: str = ""
