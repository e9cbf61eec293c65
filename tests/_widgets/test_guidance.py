"""The Train panel's rules of thumb: suggested minimum steps, validation trend, budget estimate."""

from __future__ import annotations

from napari_divnoising._widgets._guidance import (
    MIN_STEPS,
    budget_estimate,
    still_falling,
    suggested_min_steps,
    undertrained_reasons,
)
from napari_divnoising._widgets._plots import loss_limits


def test_suggested_min_steps_grows_with_the_data():
    assert suggested_min_steps(64 * 64, 8, 64) == MIN_STEPS
    assert suggested_min_steps(100 * 512 * 512, 8, 64) == 20 * 100 * 512 * 512 // (8 * 64 * 64)


def test_still_falling_only_when_the_last_validations_still_drop_a_lot():
    assert still_falling([5.0, 4.0, 3.0, 2.0, 1.0])
    assert not still_falling([5.0, 1.1, 1.05, 1.02, 1.01, 1.0])
    assert not still_falling([5.0, 1.0, 1.2, 1.5, 1.1])  # rising or noisy, not at its best
    assert not still_falling([2.0, 1.0])  # too few validations to say


def test_undertrained_reasons():
    assert len(undertrained_reasons([4.0, 3.0, 2.0, 1.0], steps=51, min_steps=1000)) == 2
    assert undertrained_reasons([5.0, 1.1, 1.05, 1.02, 1.0], steps=5000, min_steps=1000) == []


def test_budget_estimate_from_the_measured_rate():
    assert "about 600 steps" in budget_estimate(1.0, None, 10.0, "cpu", 1000)
    assert "too short" in budget_estimate(1.0, None, 10.0, "cpu", 1000)
    assert "not measured yet" in budget_estimate(1.0, None, None, "cuda", 1000)
    assert "about 1.7 min" in budget_estimate(None, 1000, 10.0, "cpu", 1000)


def test_loss_limits_ignore_the_first_step_spike():
    train = [1000.0] + [1.0 + 1.0 / k for k in range(1, 100)]
    lo, hi = loss_limits(train, [1.5, 1.2])
    assert lo < 1.01 and hi < 3.0
    assert loss_limits([1.0, 2.0], []) is None
