"""Small embedded matplotlib plots (FigureCanvasQTAgg) for the dock widgets."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

PLOT_STYLE = {
    "font.size": 7,
    "axes.titlesize": 8,
    "axes.labelsize": 7,
    "legend.fontsize": 6,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
}


class PlotCanvas(FigureCanvasQTAgg):
    """A compact figure with one Axes, of fixed height so it never dominates the dock."""

    def __init__(self, height_px: int = 230) -> None:
        figure = Figure(figsize=(3.6, height_px / 100.0), dpi=100, layout="constrained")
        super().__init__(figure)
        self.ax = figure.add_subplot(111)
        self.setMinimumHeight(height_px)
        self.setMaximumHeight(height_px)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def clear(self) -> None:
        self.ax.clear()


class LossPlot(PlotCanvas):
    """Training and validation loss against step, redrawn at most ``max_redraws_per_s`` times a second.

    Every redraw repaints the window that holds the viewer's OpenGL canvas, which costs the training
    thread CPU time on a small machine; so the plot keeps its line objects, updates their data, draws
    at most ``max_points`` points per curve (block means of consecutive steps) and redraws rarely.
    """

    def __init__(self, height_px: int = 200, max_redraws_per_s: float = 0.2, max_points: int = 500) -> None:
        super().__init__(height_px)
        self.train_steps: list[int] = []
        self.train_loss: list[float] = []
        self.val_steps: list[int] = []
        self.val_loss: list[float] = []
        self.max_points = max_points
        self.redraw_count = 0
        self._dirty = False
        self._last_draw = 0.0
        self._interval = 1.0 / max_redraws_per_s
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.redraw)
        with _style():
            ax = self.ax
            ax.clear()  # the axes were made before the style applied: their labels take its sizes now
            (self.train_line,) = ax.plot([], [], color="tab:blue", linewidth=0.8, label="training")
            (self.val_line,) = ax.plot([], [], "o-", color="tab:orange", markersize=3, label="validation")
            ax.set_xlabel("training step")
            ax.set_ylabel("loss (nats / pixel)")
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=PLOT_STYLE["xtick.labelsize"])
            self._placeholder = ax.text(0.5, 0.5, "loss curves appear here while training", ha="center",
                                        va="center", transform=ax.transAxes, color="gray")
            self._legend = ax.legend(loc="upper right")
        self.redraw()

    def reset(self) -> None:
        self.train_steps.clear()
        self.train_loss.clear()
        self.val_steps.clear()
        self.val_loss.clear()
        self.request_redraw()

    def set_history(self, history: dict) -> None:
        """Show a model's saved loss history (e.g. after loading it)."""
        self.train_steps[:] = [int(s) for s in history.get("train_steps", [])]
        self.train_loss[:] = [float(v) for v in history.get("train_loss", [])]
        self.val_steps[:] = [int(s) for s in history.get("val_steps", [])]
        self.val_loss[:] = [float(v) for v in history.get("val_loss", [])]
        self.request_redraw()

    def add_train(self, step: int, loss: float) -> None:
        self.train_steps.append(step)
        self.train_loss.append(loss)
        self.request_redraw()

    def add_validation(self, step: int, loss: float) -> None:
        self.val_steps.append(step)
        self.val_loss.append(loss)
        self.request_redraw()

    def request_redraw(self) -> None:
        """Redraw now if the last redraw is old enough, else once the interval has passed."""
        self._dirty = True
        wait = self._interval - (time.monotonic() - self._last_draw)
        if wait <= 0:
            self.redraw()
        elif not self._timer.isActive():
            self._timer.start(int(wait * 1000) + 1)

    def redraw(self) -> None:
        self.train_line.set_data(*block_means(self.train_steps, self.train_loss, self.max_points))
        self.val_line.set_data(self.val_steps, self.val_loss)
        has_points = bool(self.train_steps or self.val_steps)
        self._placeholder.set_visible(not has_points)
        self._legend.set_visible(has_points)
        ax = self.ax
        ax.tick_params(labelbottom=has_points, labelleft=has_points)
        if has_points:
            first = min(self.train_steps[:1] + self.val_steps[:1])
            last = max(self.train_steps[-1:] + self.val_steps[-1:])
            ax.set_xlim(first, last if last > first else first + 1)
        limits = loss_limits(self.train_loss, self.val_loss)
        if limits is not None:
            ax.set_ylim(*limits)
        elif has_points:
            values = np.asarray(self.train_loss + self.val_loss, dtype=float)
            values = values[np.isfinite(values)]
            if values.size:
                ax.set_ylim(*_padded(float(values.min()), float(values.max())))
        self.draw_idle()
        self._dirty = False
        self._last_draw = time.monotonic()
        self.redraw_count += 1


def block_means(steps: list[int], values: list[float], max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points: means of consecutive blocks of (step, value) when there are more.

    The blocks have equal counts (the last takes the remainder); a block mean also smooths the
    per-step noise of the training loss, which is what a user judges convergence by.
    """
    x = np.asarray(steps, dtype=float)
    y = np.asarray(values, dtype=float)
    if x.size <= max_points:
        return x, y
    size = -(-x.size // max_points)
    edges = np.arange(0, x.size, size)
    counts = np.diff(np.append(edges, x.size))
    return np.add.reduceat(x, edges) / counts, np.add.reduceat(y, edges) / counts


def loss_limits(train: list[float], val: list[float], skip: float = 0.1) -> tuple[float, float] | None:
    """Y-limits that show convergence: the first ``skip`` of the training curve (its early spike) and
    outliers above the 98th percentile are left out of the range; None for too few points."""
    later = np.asarray(train[int(len(train) * skip):] + val, dtype=float)
    later = later[np.isfinite(later)]
    if later.size < 5:
        return None
    return _padded(float(later.min()), float(np.percentile(later, 98)))


def _padded(lo: float, hi: float) -> tuple[float, float]:
    """``lo``..``hi`` widened by 5 % of the range on each side (5 % of the value, at least 1e-3, when flat)."""
    margin = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
    return lo - margin, hi + margin


def _style() -> Any:
    import matplotlib

    return matplotlib.rc_context(PLOT_STYLE)
