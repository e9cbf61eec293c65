"""Running a core generator in a napari thread worker, with Stop and clean shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from qtpy.QtCore import QEvent, QObject, Qt, Slot
from qtpy.QtWidgets import QApplication, QLabel

from ._notify import report_exception


class WorkerFailure(Exception):  # noqa: N818 (a carrier, not an error of its own)
    """Carries an exception out of a worker thread.

    superqt treats a ``RuntimeError`` escaping a worker as "the worker was
    deleted" and then emits neither ``errored`` nor ``finished``; torch raises
    RuntimeError for many ordinary failures, so every error is wrapped.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _Relay(QObject):
    """Calls ``fn`` in the GUI thread, queued behind the worker's ``yielded`` events.

    A plain function or lambda connected to a worker signal may run in the worker thread, before the
    GUI has handled the events yielded last; a slot of an object living in the GUI thread cannot.
    """

    def __init__(self, fn: Callable[[], None]) -> None:
        super().__init__()
        self._fn = fn

    @Slot()
    def fire(self) -> None:
        self._fn()


class WorkerRunner:
    """Owns at most one thread worker at a time.

    ``start(make_events, on_event, on_done)`` runs the generator returned by
    ``make_events()`` in a napari thread worker; every yielded event goes to
    ``on_event`` in the GUI thread; errors become notifications (``action``
    names the work); ``on_done(stopped)`` runs at the end, whatever happened.

    An event source with a ``request_stop()`` method (work in a child process,
    :class:`~napari_divnoising.child_process.ChildEvents`) is stopped by asking it: it
    then sends its remaining events and ends, and the worker hands them all on. Other
    generators are stopped after their current event and closed in the GUI thread.
    """

    def __init__(self, action: str) -> None:
        self.action = action
        self.worker: Any = None
        self._done = threading.Event()
        self._done.set()
        self.failed = False
        #: True once the last run's events and its ``on_done`` have been handled in the GUI thread.
        self.settled = True
        self._source: Any = None
        self._stop_requested = False

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def stop_requested(self) -> bool:
        """Whether Stop was asked for in the current run: the ``flush`` of throttled event streams, which
        must then yield at once for the worker thread to see the request."""
        return self._stop_requested

    def start(
        self,
        make_events: Callable[[], Iterator[Any]],
        on_event: Callable[[Any], None],
        on_done: Callable[[bool], None],
        on_error: Callable[[BaseException], None] | None = None,
        wrap: Callable[[Iterator[Any]], Iterator[Any]] | None = None,
    ) -> Any:
        """Start the worker; ``wrap`` (e.g. grouping events) is applied to the source's events."""
        from napari.qt.threading import create_worker

        if self.running:
            raise RuntimeError("a worker is already running")
        self.failed = False
        self.settled = False
        self._source = None
        self._stop_requested = False
        done = threading.Event()
        self._done = done

        def events() -> Iterator[Any]:
            try:
                source = make_events()
                self._source = source  # set before the flag is read; stop() sets the flag before reading this
                if self._stop_requested:
                    if hasattr(source, "request_stop"):
                        source.request_stop()
                    else:
                        worker.quit()
                yield from (wrap(source) if wrap is not None else source)
            except Exception as exc:
                raise WorkerFailure(exc) from exc

        def errored(exc: BaseException) -> None:
            if isinstance(exc, WorkerFailure):
                exc = exc.original
            self.failed = True
            if on_error is not None:
                on_error(exc)
            report_exception(exc, self.action)

        worker = create_worker(events, _start_thread=False, _connect={"yielded": on_event, "errored": errored})
        # Set from the worker thread itself, so close/quit can wait without an event loop round trip.
        worker.finished.connect(done.set, Qt.ConnectionType.DirectConnection)
        self._relay = _Relay(lambda: self._finish(worker, on_done))
        worker.finished.connect(self._relay.fire)
        self.worker = worker
        worker.start()
        return worker

    def _finish(self, worker: Any, on_done: Callable[[bool], None]) -> None:
        try:
            self._close_generator(worker)
            on_done(worker.abort_requested or self._stop_requested)
        finally:
            self.settled = True

    @staticmethod
    def _close_generator(worker: Any) -> None:
        """Close a stopped worker's generator (in the GUI thread, after the worker thread ended).

        superqt only stops iterating on quit(); closing runs the core generator's own clean-up
        (e.g. training records its step count and writes its last checkpoint).
        """
        gen = getattr(worker, "_gen", None)
        if gen is not None:
            try:
                gen.close()
            except Exception as exc:  # clean-up failures must not crash the GUI
                report_exception(exc, "Finishing the stopped run")

    def stop(self) -> None:
        """Ask the worker to stop after its current step (the result so far is kept)."""
        if self.worker is None or not self.running:
            return
        self._stop_requested = True
        source = self._source
        if source is None:
            return  # the worker has not made its source yet: it reads the flag once it has
        if hasattr(source, "request_stop"):
            source.request_stop()
        else:
            self.worker.quit()

    def stop_and_wait(self, timeout: float = 30.0) -> bool:
        """Stop and block (processing events) until the worker has finished; True if it did."""
        self.stop()
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            self._done.wait(0.02)
            app = QApplication.instance()
            if app is not None:
                app.processEvents()
        if not self.running and self.worker is not None:
            self._close_generator(self.worker)
        return not self.running


class StopWhenRemoved(QObject):
    """Stops ``runners`` when ``widget`` is taken out of its dock (its parent becomes None).

    napari's dock close button (and ``viewer.window.remove_dock_widget``) only unparents the panel:
    it is neither closed nor destroyed, so ``closeEvent``/``destroyed`` alone would let its run go on.
    """

    def __init__(self, widget: Any, *runners: WorkerRunner) -> None:
        super().__init__(widget)
        self._runners = runners
        widget.installEventFilter(self)

    def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802 (Qt name)
        if event.type() == QEvent.Type.ParentChange and obj.parent() is None:
            for runner in self._runners:
                runner.stop()
        return False


#: The activity dock's bar for a panel's run moves at most this often (seconds).
ACTIVITY_UPDATE_INTERVAL_S = 10.0


class ActivityProgress:
    """A progress bar in napari's activity dock (bottom right) mirroring a panel's progress bar.

    napari's progress bar runs ``QApplication.processEvents()`` whenever its value changes, which
    would run queued worker events (even the end of the run) in the middle of a panel's event
    handler. So the bar is only touched from its own zero-delay timer, outside any handler, and a
    close requested while it updates waits until the update returns.

    While a bar is shown, napari animates an "in progress" image in the status bar, and each frame
    repaints the window around the viewer's OpenGL canvas. Without a GPU (software OpenGL, remote
    desktops) that takes CPU time training needs (``benchmarks/bench_gui.py``; even slowed down the
    animation kept costing it), so with ``panel`` (a widget in the viewer's window) given, the
    animation is paused while our bar is shown: the bar itself shows that work goes on.
    """

    def __init__(self, panel: Any = None) -> None:
        self._panel = panel
        self._movie: Any = None
        self._bar: Any = None
        self._value = 0
        self._target = 0
        self._total: int | None = None
        self._updating = False
        self._close_requested = False
        self._scheduled = False
        self._last_apply = -float("inf")

    def start(self, description: str, total: int) -> None:
        from napari.utils import progress

        self._close_now()
        self._bar = progress(total=max(1, int(total)), desc=description)
        self._pause_animation()
        self._value = self._target = 0
        self._total = None
        self._close_requested = False
        self._last_apply = -float("inf")

    def set(self, value: int, total: int | None = None) -> None:
        """Ask for ``value`` (of ``total``) to be shown; applied once the current handler returned.

        The bar moves at most every :data:`ACTIVITY_UPDATE_INTERVAL_S` (and when it is full): napari
        repaints the whole window for each change of its value.
        """
        self._target, self._total = int(value), total
        bar_total = total if total is not None else (self._bar.total if self._bar is not None else None)
        full = bar_total is not None and self._target >= bar_total
        if full or time.monotonic() - self._last_apply >= ACTIVITY_UPDATE_INTERVAL_S:
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            from qtpy.QtCore import QTimer

            self._scheduled = True
            QTimer.singleShot(0, self._apply)

    def _apply(self) -> None:
        self._scheduled = False
        bar = self._bar
        if bar is None or self._updating:
            return
        self._last_apply = time.monotonic()
        self._updating = True
        try:
            if self._total is not None and self._total != bar.total:
                bar.total = max(1, int(self._total))
            if self._target != self._value:
                delta, self._value = self._target - self._value, self._target
                bar.update(delta)
            self._keep_paused()
        finally:
            self._updating = False
        if self._close_requested:
            self._close_now()

    @property
    def value(self) -> int:
        return self._value

    @property
    def active(self) -> bool:
        return self._bar is not None

    def close(self) -> None:
        if self._updating:
            self._close_requested = True
        else:
            self._close_now()

    def _close_now(self) -> None:
        self._close_requested = False
        if self._bar is not None:
            bar, self._bar = self._bar, None
            bar.close()
        self._restore_animation()

    def _pause_animation(self) -> None:
        """Pause napari's "in progress" animation, found as the animated label of the panel's window."""
        if self._panel is None or self._movie is not None:
            return
        try:
            window = self._panel.window()
            movies = [label.movie() for label in window.findChildren(QLabel) if label.movie() is not None]
            movies = [movie for movie in movies if movie.fileName().endswith("loading.gif")]
            if not movies:
                return
            movie = movies[0]
            movie.setPaused(True)
        except RuntimeError:  # the window is being deleted
            return
        self._movie = movie

    def _keep_paused(self) -> None:
        """Pause the animation again if napari restarted it (e.g. for another progress bar)."""
        try:
            if self._movie is not None and self._movie.state() == self._movie.MovieState.Running:
                self._movie.setPaused(True)
        except RuntimeError:  # the window is gone
            self._movie = None

    def _restore_animation(self) -> None:
        movie, self._movie = self._movie, None
        if movie is not None:
            try:
                movie.setPaused(False)
            except RuntimeError:  # the window is gone
                pass
