"""The training schedule follows the budget fraction (pure logic, no training)."""

import math

import pytest

from napari_divnoising.training.schedule import (
    MIN_STEPS_BETWEEN_VALIDATIONS,
    WARMUP_STEPS,
    Budget,
    CollapseMonitor,
    KLAnnealing,
    ValidationSchedule,
)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_budget_fraction_is_time_or_steps_whichever_runs_out_first():
    clock = FakeClock()
    budget = Budget(60.0, 1000, clock)
    clock.now += 30
    assert budget.fraction(100) == pytest.approx(0.5)
    assert budget.fraction(900) == pytest.approx(0.9)
    assert budget.exhausted(999, 59.9) is None
    assert budget.exhausted(1000, 10.0) == "max_steps"
    assert budget.exhausted(10, 60.0) == "max_minutes"
    assert Budget(math.inf, None, clock).fraction(10**6) == 0.0


def test_step_rate_leaves_out_the_warm_up():
    clock = FakeClock()
    budget = Budget(math.inf, 10_000, clock)
    elapsed = 0.0
    for step in range(1, 200):
        elapsed += 5.0 if step <= WARMUP_STEPS else 0.01  # the first steps are 500x slower
        budget.mark(step, elapsed)
    assert budget.steps_per_second() == pytest.approx(100.0, rel=1e-6)
    assert budget.eta(199, elapsed) == pytest.approx((10_000 - 199) / 100.0, rel=1e-6)


def test_kl_annealing_by_fraction_and_restart_stretches_it():
    annealing = KLAnnealing(beta=1.0, fraction=0.1, steps=None)
    assert annealing.weight(0, 0.0) == 0.0
    assert annealing.weight(50, 0.05) == pytest.approx(0.5)
    assert annealing.weight(100, 0.1) == 1.0 and annealing.done
    annealing.restart(300, 0.3)
    assert annealing.weight(300, 0.3) == 0.0
    assert annealing.weight(400, 0.4) == pytest.approx(0.5)  # twice as long: over 0.2 of the budget
    assert annealing.describe() == "20% of the budget"


def test_kl_annealing_by_steps():
    annealing = KLAnnealing(beta=2.0, fraction=0.1, steps=10)
    assert annealing.weight(5, 0.9) == pytest.approx(1.0)
    annealing.restart(20, 0.5)
    assert annealing.weight(30, 0.5) == pytest.approx(1.0) and annealing.describe() == "20 steps"


def test_validations_are_spread_over_the_budget_whatever_the_step_rate():
    for steps_in_budget in (300, 30_000):
        schedule = ValidationSchedule(interval=None, per_run=25)
        due = [s for s in range(1, steps_in_budget + 1) if schedule.due(s, s / steps_in_budget)]
        assert 24 <= len(due) <= 25
        assert due[-1] >= steps_in_budget - steps_in_budget // 25
        assert min(b - a for a, b in zip(due, due[1:])) >= MIN_STEPS_BETWEEN_VALIDATIONS


def test_explicit_validation_interval_counts_steps():
    schedule = ValidationSchedule(interval=7, per_run=25)
    assert [s for s in range(1, 30) if schedule.due(s, 0.0)] == [7, 14, 21, 28]


def test_collapse_needs_a_whole_window_of_low_kl():
    monitor = CollapseMonitor(1e-3)
    for step in range(1, 30):
        monitor.update(step, 1e-5 if step != 15 else 1.0)
    assert not monitor.collapsed(29, 20)  # the streak restarted at step 16
    for step in range(30, 40):
        monitor.update(step, 1e-5)
    assert monitor.collapsed(39, 20)


def test_progress_is_planned_from_the_steady_rate_not_the_warm_up():
    clock = FakeClock()
    budget = Budget(900.0, None, clock)
    elapsed = 0.0
    for step in range(1, 13):
        elapsed += 100.0 if step <= 5 else 1.0
        budget.mark(step, elapsed)
        if step <= WARMUP_STEPS:
            assert budget.progress(step, elapsed) == 0.0  # nothing planned from the warm-up
    # rate 1 step/s, 393 s left: 12 of 405 planned steps
    assert budget.progress(12, elapsed) == pytest.approx(12 / (12 + 393))
    assert budget.progress(12, 900.0) == 1.0


def test_a_restart_is_planned_only_when_its_longer_ramp_fits_in_the_budget():
    by_steps = KLAnnealing(1.0, 0.1, steps=50)
    assert by_steps.restart_fits(0.5, steps_left=101) and not by_steps.restart_fits(0.5, steps_left=100)
    assert by_steps.restart_fits(0.9, steps_left=None)  # no step budget: the time budget decides by fraction
    by_fraction = KLAnnealing(1.0, 0.1, steps=None)
    assert by_fraction.restart_fits(0.75, steps_left=None) and not by_fraction.restart_fits(0.85, steps_left=None)


def test_pauses_between_steps_do_not_push_the_planned_progress_ahead():
    """A GPU run: steps are queued fast and wait at every read-back, and each validation pauses the run. The
    planned progress must follow the steps' real share of the run, not jump at each pause."""
    clock = FakeClock()
    budget = Budget(60.0, None, clock)
    elapsed, step, trace = 0.0, 0, []
    while elapsed < 60.0:
        step += 1
        elapsed += 0.0001 if step % 10 else 0.019  # nine queued steps, then a read-back waits for all ten
        if step % 500 == 0:
            elapsed += 0.3  # a validation and its checkpoints
        budget.mark(step, elapsed)
        trace.append((step, budget.progress(step, elapsed)))
    total = step
    errors = [abs(progress - s / total) for s, progress in trace if s > 0.1 * total]
    assert max(errors) < 0.03
