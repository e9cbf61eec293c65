"""The training schedule as a function of the budget fraction, so that it follows the budget.

A time budget is not planned once from the first steps: on a GPU those include
autotuning and warm-up and can be a hundred times slower than the rest. Instead
:meth:`Budget.progress` re-plans at every step from the recent step rate, warm-up
excluded (steps done / steps done plus the steps the rest of the time buys), and
KL annealing, validations and the earliest allowed early stop are placed at
fractions of that progress. The clock is injectable so that tests can replay slow
warm-ups.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

#: Steps whose time is left out of the step-rate estimate (cuDNN autotuning, allocator warm-up).
WARMUP_STEPS = 10
#: The step rate is measured over this share of the run's time since the warm-up (and over at least
#: ``MIN_RATE_STEPS`` steps): long enough to average over the pauses at read-backs and validations, which a
#: short window mistakes for a slower run (the planned progress then runs ahead, and never comes back).
RATE_WINDOW_FRACTION = 0.25
MIN_RATE_STEPS = 64
#: Least number of steps between two validations planned by fraction.
MIN_STEPS_BETWEEN_VALIDATIONS = 10
#: Part of the KL ramp over which training holds the weight at 0: at initialisation the decoder
#: hardly depends on the latents, and Adam turns even a small KL gradient on the encoder heads into
#: full-size steps, which pull the posterior to the prior before the network has learnt a code.
KL_HOLD = 0.5


class Budget:
    """How much of a time and/or step budget a run has used, and how fast it goes.

    Parameters
    ----------
    max_seconds
        Wall-clock budget (``math.inf`` for none).
    max_steps
        Step budget of this run (``None`` for none).
    clock
        Returns seconds; ``time.monotonic`` by default.
    """

    def __init__(self, max_seconds: float, max_steps: int | None, clock: Callable[[], float] = time.monotonic):
        self.max_seconds = max_seconds
        self.max_steps = max_steps
        self.clock = clock
        self.start = clock()
        self._marks: deque[tuple[int, float]] = deque()
        self._first_mark: float | None = None
        self._progress = 0.0

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self.clock() - self.start

    def fraction(self, steps_done: int, elapsed: float | None = None) -> float:
        """Fraction of the budget used, 0 to 1: time or steps, whichever runs out first."""
        elapsed = self.elapsed() if elapsed is None else elapsed
        used = elapsed / self.max_seconds if math.isfinite(self.max_seconds) else 0.0
        if self.max_steps is not None:
            used = max(used, steps_done / self.max_steps)
        return min(1.0, used)

    def progress(self, steps_done: int, elapsed: float) -> float:
        """Schedule position, 0 to 1: the fraction of the steps this run will make, as planned now.

        For a time budget that is ``steps_done / (steps_done + rate * seconds left)`` with the
        recent, warm-up-free step rate; it stays 0 until that rate is measured, so nothing is
        planned from warm-up steps. It never decreases.
        """
        used = 0.0
        if math.isfinite(self.max_seconds):
            rate = self.steps_per_second()
            left = max(0.0, self.max_seconds - elapsed)
            if left == 0.0:
                used = 1.0
            elif rate > 0 and steps_done > 0:
                used = steps_done / (steps_done + rate * left)
        if self.max_steps is not None:
            used = max(used, steps_done / self.max_steps)
        self._progress = max(self._progress, min(1.0, used))
        return self._progress

    def exhausted(self, steps_done: int, elapsed: float) -> str | None:
        """``"max_steps"`` or ``"max_minutes"`` when that budget is used up, else ``None``."""
        if self.max_steps is not None and steps_done >= self.max_steps:
            return "max_steps"
        if elapsed >= self.max_seconds:
            return "max_minutes"
        return None

    def mark(self, steps_done: int, elapsed: float) -> None:
        """Record that ``steps_done`` steps were done after ``elapsed`` seconds (for the rate)."""
        if steps_done <= WARMUP_STEPS:
            return
        if self._first_mark is None:
            self._first_mark = elapsed
        marks = self._marks
        marks.append((steps_done, elapsed))
        window = RATE_WINDOW_FRACTION * (elapsed - self._first_mark)
        while len(marks) > MIN_RATE_STEPS and elapsed - marks[1][1] >= window:
            marks.popleft()

    def steps_per_second(self) -> float:
        """Recent step rate (over the last ``RATE_WINDOW_FRACTION`` of the run's time) with the warm-up steps left
        out (0 until it can be measured)."""
        if len(self._marks) < 2:
            return 0.0
        (s0, t0), (s1, t1) = self._marks[0], self._marks[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self, steps_done: int, elapsed: float) -> float:
        """Seconds left: by the clock for a time budget, by the recent rate for a step budget."""
        left = self.max_seconds - elapsed if math.isfinite(self.max_seconds) else math.inf
        if self.max_steps is not None:
            rate = self.steps_per_second()
            if rate > 0:
                left = min(left, (self.max_steps - steps_done) / rate)
            elif not math.isfinite(left):
                fraction = self.fraction(steps_done, elapsed)
                left = elapsed * (1 - fraction) / fraction if fraction > 0 else math.inf
        return max(0.0, left)


class KLAnnealing:
    """The KL weight ramps linearly from 0 to ``beta`` over a fraction of the budget (or a number of steps).

    After a restart the ramp starts again from the restart's step and fraction, ``stretch`` times as long.
    With ``hold`` > 0 the weight stays 0 over that part of the ramp, then rises linearly to ``beta``.
    """

    def __init__(self, beta: float, fraction: float, steps: int | None, done: bool = False, hold: float = 0.0):
        self.beta = beta
        self.hold = hold
        self.ramp_fraction = fraction
        self.ramp_steps = steps
        self.done = done or (steps is None and fraction <= 0)
        self.origin_step = 0
        self.origin_fraction = 0.0

    def weight(self, step: int, fraction: float) -> float:
        """KL weight for the step about to run."""
        if self.done:
            return self.beta
        if self.ramp_steps is not None:
            progress = (step - self.origin_step) / self.ramp_steps
        else:
            progress = (fraction - self.origin_fraction) / self.ramp_fraction
        if progress >= 1.0:
            self.done = True
            return self.beta
        return self.beta * max(0.0, (progress - self.hold) / (1.0 - self.hold))

    def restart(self, step: int, fraction: float, stretch: float = 2.0) -> None:
        """Start the ramp again from ``step`` / ``fraction``, ``stretch`` times as long."""
        self.done = False
        self.origin_step, self.origin_fraction = step, fraction
        if self.ramp_steps is not None:
            self.ramp_steps = max(1, int(stretch * self.ramp_steps))
        else:
            self.ramp_fraction = min(1.0, stretch * max(self.ramp_fraction, 1e-3))

    def restart_fits(self, fraction: float, steps_left: int | None, stretch: float = 2.0) -> bool:
        """True when a restarted, ``stretch`` times longer ramp ends before the budget does."""
        if self.ramp_steps is not None:
            return steps_left is None or stretch * self.ramp_steps < steps_left
        return fraction + stretch * max(self.ramp_fraction, 1e-3) < 1.0

    def describe(self) -> str:
        if self.ramp_steps is not None:
            return f"{self.ramp_steps} steps"
        return f"{100 * self.ramp_fraction:.0f}% of the budget"


class ValidationSchedule:
    """When to validate: every ``interval`` steps, or ``per_run`` times spread evenly over the budget."""

    def __init__(self, interval: int | None, per_run: int):
        self.interval = interval
        self.per_run = max(1, per_run)
        self._next = 1.0 / self.per_run
        self._last_step = 0

    def due(self, steps_done: int, fraction: float) -> bool:
        """True when a validation should run after ``steps_done`` steps of this run."""
        if self.interval is not None:
            return steps_done % self.interval == 0
        if fraction + 1e-12 < self._next or steps_done - self._last_step < MIN_STEPS_BETWEEN_VALIDATIONS:
            return False
        while self._next <= fraction + 1e-12:
            self._next += 1.0 / self.per_run
        self._last_step = steps_done
        return True

    def steps_between(self, steps_done: int, fraction: float) -> int:
        """Steps between two validations at the current pace (at least the planned minimum)."""
        if self.interval is not None:
            return self.interval
        if fraction <= 0:
            return MIN_STEPS_BETWEEN_VALIDATIONS
        return max(MIN_STEPS_BETWEEN_VALIDATIONS, int(steps_done / fraction / self.per_run))


class CollapseMonitor:
    """Posterior collapse: the KL per pixel stayed under ``threshold`` for a whole window of steps."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._low_since: int | None = None

    def update(self, step: int, kl: float) -> None:
        """Record the KL of ``step`` (called for every step whose loss was read back)."""
        if kl < self.threshold:
            if self._low_since is None:
                self._low_since = step
        else:
            self._low_since = None

    def collapsed(self, step: int, window: int) -> bool:
        """True when the KL has been under the threshold for at least ``window`` steps up to ``step``."""
        return self._low_since is not None and step - self._low_since + 1 >= window

    def reset(self) -> None:
        self._low_since = None
