"""Events of :func:`~napari_divnoising.scale.predict_to_zarr_iter` (small, typed, picklable)."""

from __future__ import annotations

from dataclasses import dataclass

from ..events import Done


@dataclass(frozen=True)
class ZarrPlan:
    """First event: ``total`` units (frames or regions of frames), ``already_done`` of them finished earlier."""

    path: str
    total: int
    already_done: int
    n_frames: int
    seed: int
    workers: str


@dataclass(frozen=True)
class UnitDone:
    """A unit was written and marked complete; ``done`` of ``total`` units are finished (earlier runs included).

    ``worker`` is ``host:pid`` of the process that computed it, ``peak_rss`` that process's peak resident
    memory so far (bytes), ``seconds`` the unit's compute and write time.
    """

    frame: int
    region: tuple[int, int]
    done: int
    total: int
    seconds: float
    worker: str = ""
    peak_rss: int = 0

    @property
    def fraction(self) -> float:
        return self.done / max(1, self.total)


@dataclass(frozen=True)
class ZarrPredictionDone(Done):
    """Last event: every unit of the store at ``path`` is complete (``computed`` of them in this run)."""

    path: str
    total: int
    computed: int
    seed: int

    @property
    def result(self) -> str:
        """The results store's path (open it with :func:`~napari_divnoising.scale.read_results`)."""
        return self.path
