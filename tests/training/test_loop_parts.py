"""The training loop's collaborators on their own: optimiser, loss log, best model, validation set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_divnoising.data import split_frames
from napari_divnoising.errors import DivNoisingError
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.training import TrainingConfig
from napari_divnoising.training.checkpoints import BestModel, load_state, state_copy
from napari_divnoising.training.feed import ValidationSet, batch_source
from napari_divnoising.training.loss_log import LossLog
from napari_divnoising.training.optimiser import Optimiser, make_adam


def _parameters() -> list[torch.nn.Parameter]:
    return list(torch.nn.Linear(3, 1).parameters())


def test_budget_decay_is_flat_then_linear_down_to_the_floor():
    optimiser = Optimiser(_parameters(), TrainingConfig(lr_decay_fraction=0.3, lr_decay_floor=0.1))
    assert optimiser.budget_decay(0.0) == optimiser.budget_decay(0.7) == 1.0
    assert optimiser.budget_decay(0.85) == pytest.approx(0.1 + 0.9 * 0.5)
    assert optimiser.budget_decay(1.0) == pytest.approx(0.1)
    optimiser.set_progress(0.85)
    assert optimiser.lr == pytest.approx(TrainingConfig().learning_rate * 0.55)
    assert Optimiser(_parameters(), TrainingConfig(lr_decay_fraction=0.0)).budget_decay(1.0) == 1.0


def test_plateau_lowers_the_rate_and_the_state_continues_a_run():
    config = TrainingConfig(learning_rate=1e-3, lr_patience=1, lr_factor=0.5, lr_decay_fraction=0.3)
    params = _parameters()
    optimiser = Optimiser(params, config)
    optimiser.set_progress(0.9)  # the decay does not reach the plateau schedule's rate
    for loss in (1.0, 1.0, 1.0):
        optimiser.after_validation(loss)
    assert optimiser.plateau_lr == pytest.approx(5e-4)
    params[0].sum().backward()
    optimiser.optimizer.step()
    again = Optimiser(params, config, saved_state=optimiser.state())
    assert again.plateau_lr == pytest.approx(5e-4)
    assert again.optimizer.state_dict()["state"].keys() == optimiser.optimizer.state_dict()["state"].keys()
    # a state of other parameters is not forced on a new run: it starts fresh
    other = Optimiser(list(torch.nn.Linear(5, 2).parameters()) + _parameters(), config, saved_state=optimiser.state())
    assert other.plateau_lr == config.learning_rate and not other.optimizer.state_dict()["state"]
    optimiser.restart()
    assert optimiser.plateau_lr == config.learning_rate and optimiser.lr == config.learning_rate


def test_step_runs_the_hook_between_backward_and_update():
    params = _parameters()
    optimiser = Optimiser(params, TrainingConfig())
    before = params[0].detach().clone()
    seen = []
    optimiser.step((params[0] ** 2).sum(), before_update=lambda: seen.append(torch.equal(params[0], before)))
    assert seen == [True] and not torch.equal(params[0], before)


def test_loss_log_records_in_groups_and_refuses_a_diverged_step():
    history = {"train_steps": [], "train_loss": [], "train_kl": []}
    kls = []
    log = LossLog(history, interval=2, start_step=10, on_kl=lambda s, kl: kls.append((s, kl)))
    assert math.isnan(log.last[1]) and log.last[0] == 10
    log.add(11, torch.tensor(3.0), torch.tensor(2.0), torch.tensor(1.0))
    assert not log.full and history["train_steps"] == []
    log.add(12, torch.tensor(2.5), torch.tensor(2.0), torch.tensor(0.5))
    assert log.full
    log.read_back()
    assert history == {"train_steps": [11, 12], "train_loss": [3.0, 2.5], "train_kl": [1.0, 0.5]}
    assert kls == [(11, 1.0), (12, 0.5)] and log.last == (12, 2.5, 2.0, 0.5) and not log.pending
    log.add(13, torch.tensor(float("nan")), torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(DivNoisingError, match="diverged at step 13"):
        log.read_back()


def test_loss_log_reads_the_colearned_noise_parameters():
    noise = GaussianNoiseModel(a=2.0, b=5.0, trainable=True)
    log = LossLog({"train_steps": [], "train_loss": [], "train_kl": []}, 1, 0, lambda s, kl: None, noise)
    log.add(1, torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.0))
    log.read_back()
    assert log.noise_ab == pytest.approx((2.0, 5.0))


def _model() -> DivNoisingModel:
    torch.manual_seed(0)
    network = DivNoisingVAE(depth=1, start_filters=4, z_dim=2)
    return DivNoisingModel(network, GaussianNoiseModel(a=0.0, b=1.0, trainable=False), 0.0, 1.0)


def test_best_model_keeps_the_best_weights_and_counts_stalls():
    model = _model()
    history: dict = {}
    best = BestModel(history, model, resumed=False, min_delta=0.1)
    assert best.state is None and best.val_loss == math.inf
    assert best.consider(model, 5.0, step=10) and history["best_step"] == 10
    kept = state_copy(model)
    with torch.no_grad():
        for p in model.network.parameters():
            p.add_(1.0)
    assert not best.consider(model, 4.95, step=20)  # better by less than min_delta
    assert [best.count(False), best.count(False), best.count(True)] == [1, 2, 0]
    load_state(model, best.state)
    assert all(torch.equal(a, b) for a, b in zip(model.network.state_dict().values(), kept["network"].values()))
    resumed = BestModel(history, model, resumed=True, min_delta=0.0)
    assert resumed.val_loss == 5.0 and resumed.step == 10 and resumed.state is not None


def test_validation_set_is_fixed_by_the_seed_and_its_loss_adds_beta_times_kl():
    rng = np.random.default_rng(0)
    frames = rng.normal(10, 2, (4, 48, 48)).astype(np.float32)
    config = TrainingConfig(patch_size=16, batch_size=4, n_validation_patches=6, beta=0.5, seed=3)
    data = split_frames(frames, 16, 0.25, seed=3)
    a = ValidationSet(data, config, z_dim=2, size_multiple=2, device=torch.device("cpu"))
    b = ValidationSet(data, config, z_dim=2, size_multiple=2, device=torch.device("cpu"))
    assert a.x.shape == (6, 1, 16, 16) and a.eps.shape == (6, 2, 8, 8)
    assert torch.equal(a.x, b.x) and torch.equal(a.eps, b.eps)
    model = _model()
    model.data_mean, model.data_std = float(frames.mean()), float(frames.std())
    total, recon, kl = a.loss(model, None, torch.contiguous_format)
    assert total == pytest.approx(recon + 0.5 * kl) and model.network.training
    assert a.loss(model, None, torch.contiguous_format) == (total, recon, kl)


def test_batch_source_cuts_training_patches_of_the_configured_size():
    frames = np.random.default_rng(1).normal(0, 1, (3, 40, 40)).astype(np.float32)
    config = TrainingConfig(patch_size=16, batch_size=5)
    data = split_frames(frames, 16, 0.3, seed=0)
    next_batch = batch_source(data, config, torch.device("cpu"), np.random.default_rng(0), start_step=0)
    first = next_batch().clone()  # on a CPU the batches share one buffer
    second = next_batch()
    assert first.shape == (5, 1, 16, 16) and first.dtype == torch.float32
    assert not torch.equal(first, second)


def test_make_adam_gives_each_implementation():
    params = list(torch.nn.Linear(2, 1).parameters())
    fused = make_adam(params, 1e-3, "fused")
    foreach = make_adam(params, 1e-3, "foreach")
    single = make_adam(params, 1e-3, "single")
    assert fused.param_groups[0]["fused"] and foreach.param_groups[0]["foreach"]
    assert not single.param_groups[0]["foreach"] and not single.param_groups[0]["fused"]
