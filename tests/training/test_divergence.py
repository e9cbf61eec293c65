"""A run that diverges goes back to its best weights with a lower learning rate, by itself."""

import math

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.training import (
    TrainingConfig,
    TrainingDone,
    TrainingStarted,
    TrainingWarning,
    TrainStep,
    Validation,
    train_iter,
)
from napari_divnoising.training import engine as engine_module
from napari_divnoising.training.optimiser import Optimiser


def small_config(**kw) -> TrainingConfig:
    base = dict(network="divnoising", patch_size=16, batch_size=4, depth=1, start_filters=4, z_dim=2,
                n_validation_patches=4, max_minutes=None, max_steps=60, validation_interval=10, log_interval=1,
                device="cpu", collapse_restarts=0, early_stopping_patience=1000, lr_decay_fraction=0.0, seed=0)
    base.update(kw)
    return TrainingConfig(**base)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).poisson(40.0, (4, 48, 48)).astype(np.float32)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def run_recording_best(images, config):
    """The run's events, and for each divergence warning whether the live weights were then the best ones."""
    events, best_weights, at_warning = [], None, []
    model = None
    for event in train_iter(images, 10.0, config):
        events.append(event)
        if isinstance(event, TrainingStarted):
            model = event.model
        elif isinstance(event, Validation) and event.is_best:
            best_weights = weights(model)
        elif isinstance(event, TrainingWarning) and event.kind == "divergence":
            now = weights(model)
            at_warning.append(all(torch.equal(now[k], best_weights[k]) for k in now))
    return events, at_warning


def change_validation_loss(monkeypatch, change) -> None:
    """Replace the ``n``-th validation loss (1-based) by ``change(n, loss)``."""
    real_loss = engine_module.ValidationSet.loss
    calls = []

    def changed_loss(self, *args, **kwargs):
        calls.append(1)
        val_loss, recon, kl = real_loss(self, *args, **kwargs)
        return change(len(calls), val_loss), recon, kl

    monkeypatch.setattr(engine_module.ValidationSet, "loss", changed_loss)


def test_a_validation_loss_far_above_the_best_rolls_back_and_halves_the_learning_rate(images, monkeypatch):
    change_validation_loss(monkeypatch, lambda n, loss: loss + 5.0 if n == 4 else loss)
    events, at_warning = run_recording_best(images, small_config())
    warnings = [e for e in events if isinstance(e, TrainingWarning) and e.kind == "divergence"]
    assert len(warnings) == 1 and "step 40" in warnings[0].message and "validation loss" in warnings[0].message
    assert at_warning == [True]  # the live weights are the best ones again
    lrs = {e.step: e.lr for e in events if isinstance(e, TrainStep)}
    assert lrs[41] == pytest.approx(0.5 * lrs[40])
    done = events[-1]
    assert isinstance(done, TrainingDone) and done.reason == "max_steps" and done.steps == 60
    assert done.history["divergence_rollbacks"] == [40]


def nan_loss_at_call(monkeypatch, call: int) -> None:
    """Make the ``call``-th training loss (1-based) not finite."""
    real_terms = engine_module.loss_terms
    calls = []

    def terms_with_one_nan(*args, **kwargs):
        calls.append(1)
        recon, kl = real_terms(*args, **kwargs)
        return (recon * math.nan, kl) if len(calls) == call else (recon, kl)

    monkeypatch.setattr(engine_module, "loss_terms", terms_with_one_nan)


def test_a_non_finite_loss_rolls_back_instead_of_ending_the_run(images, monkeypatch):
    nan_loss_at_call(monkeypatch, 25)
    events, at_warning = run_recording_best(images, small_config())
    warnings = [e for e in events if isinstance(e, TrainingWarning) and e.kind == "divergence"]
    assert len(warnings) == 1 and "step 25" in warnings[0].message and "non-finite" in warnings[0].message
    assert at_warning == [True]
    done = events[-1]
    assert isinstance(done, TrainingDone) and done.reason == "max_steps" and done.steps == 60
    assert all(torch.isfinite(p).all() for p in done.model.network.parameters())
    assert np.isfinite(done.history["train_loss"]).all()
    # the diverged step counts against the budget once: every other step is in the history once
    assert sorted(done.history["train_steps"]) == [s for s in range(1, 61) if s != 25]


def test_without_rollbacks_a_non_finite_loss_ends_the_run_with_one_line(images, monkeypatch):
    nan_loss_at_call(monkeypatch, 25)
    with pytest.raises(DivNoisingError, match="diverged at step 25"):
        list(train_iter(images, 10.0, small_config(divergence_rollbacks=0)))


def test_a_non_finite_loss_before_any_validation_cannot_roll_back(images, monkeypatch):
    nan_loss_at_call(monkeypatch, 1)
    with pytest.raises(DivNoisingError, match="diverged at step 1"):
        list(train_iter(images, 10.0, small_config()))


def test_the_rollbacks_are_limited(images, monkeypatch):
    change_validation_loss(monkeypatch, lambda n, loss: loss + 5.0 if n >= 3 else loss)
    events = list(train_iter(images, 10.0, small_config(divergence_rollbacks=2)))
    warnings = [e for e in events if isinstance(e, TrainingWarning) and e.kind == "divergence"]
    assert [w.message.split("(rollback ")[1] for w in warnings] == ["1 of 2).", "2 of 2)."]
    assert events[-1].reason == "max_steps"


def test_a_rollback_drops_the_moments_and_lowers_the_plateau_rate():
    params = [torch.nn.Parameter(torch.ones(3))]
    optimiser = Optimiser(params, TrainingConfig(learning_rate=1e-3))
    optimiser.step((params[0] ** 2).sum())
    assert optimiser.optimizer.state
    optimiser.roll_back(0.5)
    assert not optimiser.optimizer.state and optimiser.lr == pytest.approx(5e-4)
    optimiser.set_progress(0.1)
    assert optimiser.lr == pytest.approx(5e-4)


@pytest.mark.parametrize("factor, rolls_back", [(50.0, True), (1.3, False)])
def test_during_the_kl_ramp_only_a_blow_up_rolls_back(images, monkeypatch, factor, rolls_back):
    change_validation_loss(monkeypatch, lambda n, loss: abs(loss) * factor if n == 3 else loss)
    events = list(train_iter(images, 10.0, small_config(kl_annealing_steps=45)))  # validations 1-4 in the ramp
    warnings = [e for e in events if isinstance(e, TrainingWarning) and e.kind == "divergence"]
    assert [("step 30" in w.message) for w in warnings] == ([True] if rolls_back else [])
    assert events[-1].reason == "max_steps"
