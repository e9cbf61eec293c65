"""Advice shown by the Train panel: what a budget buys before training, whether a model looks undertrained after.

Qt-free rules of thumb, written down here so the panel and its tests share them. They are
deliberately simple: a step rate measured in this session, a minimum number of steps, and the
trend of the validation loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Fewer optimisation steps than this give visibly undertrained models even on small images.
MIN_STEPS = 1000
#: Suggested minimum: every training pixel is seen this many times (in random patches).
MIN_PIXEL_PASSES = 20
#: Validation losses looked at for the trend, and the share of the whole fall over them that counts as "still falling".
RECENT_VALIDATIONS = 4
STILL_FALLING = 0.1


def suggested_min_steps(n_pixels: int, batch_size: int, patch_size: int) -> int:
    """A minimum number of steps for ``n_pixels`` training pixels: at least :data:`MIN_STEPS`,
    and enough for every pixel to be seen :data:`MIN_PIXEL_PASSES` times."""
    per_step = max(1, batch_size * patch_size * patch_size)
    return max(MIN_STEPS, math.ceil(MIN_PIXEL_PASSES * n_pixels / per_step))


def still_falling(val_loss: Sequence[float]) -> bool:
    """Whether the validation loss fell by more than :data:`STILL_FALLING` of its whole fall over the last
    :data:`RECENT_VALIDATIONS` validations and is at its lowest at the last one."""
    values = [float(v) for v in val_loss if math.isfinite(v)]
    if len(values) < RECENT_VALIDATIONS:
        return False
    recent = values[-RECENT_VALIDATIONS:]
    whole = max(values) - min(values)
    return whole > 0 and recent[-1] <= min(values) and recent[0] - recent[-1] > STILL_FALLING * whole


def undertrained_reasons(val_loss: Sequence[float], steps: int, min_steps: int) -> list[str]:
    """Why a model looks undertrained (empty when nothing says so)."""
    reasons = []
    if steps < min_steps:
        reasons.append(f"only {steps} steps, fewer than the {min_steps} suggested for this much data")
    if still_falling(val_loss):
        reasons.append("the validation loss was still falling fast at the end")
    return reasons


def budget_estimate(max_minutes: float | None, max_steps: int | None, steps_per_s: float | None,
                    device: str, min_steps: int) -> str:
    """One line on what a budget buys at the measured rate (or that the rate is not known yet)."""
    suggestion = f"suggested: at least {min_steps} steps for this data"
    if not steps_per_s or steps_per_s <= 0:
        if max_steps is not None:
            return f"Budget: {max_steps} steps ({suggestion}; the step rate on {device} is measured by the first run)."
        return f"Budget: step rate on {device} not measured yet; the first run measures it ({suggestion})."
    rate = f"{steps_per_s:.1f} steps/s measured on {device}"
    if max_steps is not None:
        return f"Budget: {max_steps} steps take about {max_steps / steps_per_s / 60:.1f} min at {rate} ({suggestion})."
    steps = int((max_minutes or 0) * 60 * steps_per_s)
    short = " - too short" if steps < min_steps else ""
    return f"Budget: about {steps} steps at {rate} ({suggestion}{short})."
