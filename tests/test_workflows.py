"""Core workflows: bootstrapping and streamed whole-stack prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.events import Done, run_to_end
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel, GMMNoiseModel
from napari_divnoising.prediction import PredictionDone, predict
from napari_divnoising.training import TrainingConfig, TrainingDone, TrainingStarted, TrainStep
from napari_divnoising.workflows import (
    BootstrapPhase,
    PredictionUpdate,
    bootstrap_iter,
    split_budget,
    stream_prediction,
)


def make_model(seed: int = 0) -> DivNoisingModel:
    """A small random model whose samples differ visibly and span a wide range."""
    torch.manual_seed(seed)
    net = DivNoisingVAE(depth=2, start_filters=8, z_dim=8)
    with torch.no_grad():
        net.decoder[0].weight.mul_(6.0)
        net.decoder[-1].weight.mul_(40.0)
    return DivNoisingModel(net, GaussianNoiseModel(a=0.0, b=4.0, sigma_min=0.1), data_mean=100.0, data_std=20.0)


def noisy_images(n: int = 2, size: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, (n, size, size)).astype(np.float32)


def tiny_config(**kw) -> TrainingConfig:
    settings = dict(patch_size=16, batch_size=2, start_filters=8, z_dim=8, max_minutes=None, max_steps=4,
                    n_validation_patches=4, device="cpu", seed=0)
    settings.update(kw)
    return TrainingConfig(**settings)


def test_stream_prediction_assembles_the_stack_and_ends_with_the_core_result():
    model, stack = make_model(), noisy_images(3, 24)
    events = list(stream_prediction(model, stack, 5, keep_samples=2, seed=7))
    updates = [e for e in events if isinstance(e, PredictionUpdate)]
    assert isinstance(events[-1], PredictionDone) and sum(isinstance(e, PredictionDone) for e in events) == 1
    result = events[-1].result
    assert updates[-1].done == updates[-1].total == 15
    np.testing.assert_allclose(updates[-1].mmse, result.mmse, rtol=1e-6)
    np.testing.assert_allclose(updates[-1].variance, result.variance, rtol=1e-5)
    first = updates[0]
    assert np.isfinite(first.mmse[0]).all() and np.isnan(first.mmse[1:]).all()  # frames not reached yet
    kept = [u.kept_samples for u in updates if u.kept_samples is not None][-1]
    assert kept.shape == (2, 3, 24, 24)
    np.testing.assert_allclose(kept, result.samples, rtol=1e-6)


def test_stream_prediction_throttled_reads_only_each_frames_last_batch_and_keeps_every_kept_sample():
    model, stack = make_model(), noisy_images(3, 24)
    events = list(stream_prediction(model, stack, 6, keep_samples=4, seed=7, batch_size=2, min_interval_s=1e6,
                                    orientations=1, offsets=1))
    updates = [e for e in events if isinstance(e, PredictionUpdate)]
    result = events[-1].result
    # the first batch (nothing shown yet) and every frame's last batch; batches in between are skipped
    assert [u.done for u in updates] == [2, 6, 12, 18]
    np.testing.assert_allclose(updates[-1].mmse, result.mmse, rtol=1e-6)
    kept = [u.kept_samples for u in updates if u.kept_samples is not None][-1]
    np.testing.assert_allclose(kept, result.samples, rtol=1e-6)


def test_stream_prediction_hands_every_batch_on_once_flush_says_so():
    """Once Stop is pressed a worker thread must see the next batch at once, not after the interval."""
    model, stack = make_model(), noisy_images(1, 24)
    stop_pressed = []
    updates = []
    for event in stream_prediction(model, stack, 8, keep_samples=0, seed=7, batch_size=2, min_interval_s=1e6,
                                   orientations=1, offsets=1, flush=lambda: bool(stop_pressed)):
        if isinstance(event, PredictionUpdate):
            updates.append(event.done)
            stop_pressed.append(True)
    # the first batch (nothing shown yet), then every batch
    assert updates == [2, 4, 6, 8]


def test_bootstrap_fits_a_gmm_to_the_first_models_denoising_and_trains_with_it():
    images, first = noisy_images(), make_model()
    events = list(bootstrap_iter(images, tiny_config(), first_model=first, n_samples=3, seed=500))
    phases = [e for e in events if isinstance(e, BootstrapPhase)]
    assert [p.stage for p in phases] == [2, 3] and phases[0].model is first
    assert sum(isinstance(e, Done) for e in events) == 1 and isinstance(events[-1], TrainingDone)
    gmm = phases[1].noise_model
    assert isinstance(gmm, GMMNoiseModel)
    final = run_to_end(iter(events))
    assert final is events[-1].model and final.noise_model.to_config() == gmm.to_config()
    # The GMM's signal range is the 0.5 / 99.5 percentile clip of the first model's MMSE of the frames.
    pseudo = np.concatenate([predict(first, f, 3, keep_samples=0, seed=500 + i, orientations=1, offsets=1).mmse.ravel()
                             for i, f in enumerate(images)])
    lo, hi = np.percentile(pseudo, (0.5, 99.5))
    assert float(gmm.min_signal) == pytest.approx(lo, rel=1e-4)
    assert float(gmm.max_signal) == pytest.approx(hi, rel=1e-4)


def _bootstrap_start_weights(first: DivNoisingModel, config: TrainingConfig, **kwargs) -> tuple[list, dict]:
    """The phases of a bootstrap from ``first`` and the final training's network weights as it started."""
    phases, start = [], {}
    for event in bootstrap_iter(noisy_images(), config, first_model=first, n_samples=3, seed=500, **kwargs):
        if isinstance(event, BootstrapPhase):
            phases.append(event)
        elif isinstance(event, TrainingStarted):
            start = {k: v.clone() for k, v in event.model.network.state_dict().items()}
        elif isinstance(event, TrainingDone):
            phases.append(event)
    return phases, start


def test_bootstrap_trains_the_first_network_on_with_the_gmm():
    first = make_model()
    before = {k: v.clone() for k, v in first.network.state_dict().items()}
    first.history["steps"] = 123
    config = tiny_config(network="divnoising", depth=2)
    phases, start = _bootstrap_start_weights(first, config, warm_start=True)
    assert "training the first network on" in phases[1].message
    assert start.keys() == before.keys() and all(torch.equal(start[k], before[k]) for k in before)
    done = phases[-1]
    final = done.model
    assert final.noise_model.to_config() == phases[1].noise_model.to_config()
    assert not any(p.requires_grad for p in final.noise_model.parameters())
    assert final.network is not first.network and all(torch.equal(v, before[k])
                                                      for k, v in first.network.state_dict().items())
    assert isinstance(first.noise_model, GaussianNoiseModel)  # the first model keeps its own noise model
    assert final.history["warm_start"] == {"steps": 123, "noise_model": "gaussian"}
    assert (final.data_mean, final.data_std) == (first.data_mean, first.data_std)
    assert done.steps == 4 and final.history["runs"][-1]["start_step"] == 0
    assert final.history["train_steps"] == [1, 2, 3, 4]  # a new history, counted from step 0


def test_a_warm_bootstrap_takes_the_full_kl_weight_from_its_first_step():
    config = tiny_config(network="divnoising", depth=2, kl_annealing_fraction=0.5)
    weights = [e.kl_weight for e in bootstrap_iter(noisy_images(), config, first_model=make_model(), n_samples=3,
                                                   warm_start=True) if isinstance(e, TrainStep)]
    assert weights and all(w == pytest.approx(config.beta) for w in weights)
    scratch = [e.kl_weight for e in bootstrap_iter(noisy_images(), config, first_model=make_model(), n_samples=3)
               if isinstance(e, TrainStep)]
    assert scratch[0] < config.beta  # a new network anneals the KL weight


def test_bootstrap_trains_a_new_network_by_default_or_when_the_config_wants_another():
    first = make_model()
    before = first.network.state_dict()
    for config, kwargs in ((tiny_config(network="divnoising", depth=2), {}),
                           (tiny_config(network="divnoising", depth=2, start_filters=16), {"warm_start": True}),
                           (tiny_config(), {"warm_start": True})):  # the CPU default: the hierarchical network
        phases, start = _bootstrap_start_weights(first, config, **kwargs)
        assert phases[1].message == "Bootstrap 3/3: training with the bootstrapped GMM noise model"
        assert "warm_start" not in phases[-1].model.history
        same = start.keys() == before.keys() and all(
            start[k].shape == before[k].shape and torch.equal(start[k], before[k]) for k in before)
        assert not same


def test_bootstrap_from_scratch_trains_first_and_explains_a_failed_fit():
    events = []
    with pytest.raises(DivNoisingError, match="Bootstrapping stopped after the first training"):
        for event in bootstrap_iter(noisy_images(), tiny_config(max_steps=1), n_samples=2):
            events.append(event)
    assert isinstance(events[0], BootstrapPhase) and events[0].stage == 1
    assert any(isinstance(e, TrainingStarted) for e in events) and any(isinstance(e, TrainStep) for e in events)
    assert not any(isinstance(e, TrainingDone) for e in events)  # the first training's end is not passed on


def test_split_budget_halves_both_budgets():
    half = split_budget(TrainingConfig(max_minutes=10.0, max_steps=9))
    assert half.max_minutes == 5.0 and half.max_steps == 4
    assert split_budget(TrainingConfig(max_minutes=None, max_steps=1)).max_steps == 1
