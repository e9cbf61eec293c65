"""The CUDA-graph training step, run on the CPU with a stand-in for the recording.

The stand-in keeps what a CUDA graph does to a step: recording changes nothing (no weights, no optimizer
state move), and each replay writes its loss terms into the same tensors. So these tests check that the
graphed step trains exactly as the plain one does, including the KL weight and learning rate changing
between replays; the device check of the real graphs is ``benchmarks/bench_optimizer.py --device cuda``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_divnoising.model import DivNoisingModel
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.training import TrainingConfig, TrainingDone, TrainingWarning, TrainStep, train_iter
from napari_divnoising.training import engine as engine_module
from napari_divnoising.training.graphed import WARMUP_STEPS, GraphedStep, uses_cuda_graphs
from napari_divnoising.training.loss import loss_terms
from napari_divnoising.training.optimiser import Optimiser


class StandInGraphs:
    """Records a step as a CUDA graph would (without changing any state) and replays it into the same tensors."""

    def __init__(self, optimiser: Optimiser, fail: bool = False):
        self.optimiser = optimiser
        self.fail = fail
        self.warm_ups = 0
        self.captures = 0
        self.replays = 0

    def warm_up(self, step):
        self.warm_ups += 1
        return step()

    def capture(self, step):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        optimizer = self.optimiser.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
        terms = tuple(t.clone() for t in step())
        with torch.no_grad():  # recording runs nothing: put every tensor back
            for p, saved in zip(params, saved_params, strict=True):
                p.copy_(saved)
            for p, state in saved_state.items():
                for key, value in state.items():
                    optimizer.state[p][key].copy_(value)

        def replay():
            self.replays += 1
            optimizer.zero_grad(set_to_none=True)  # a replayed backward pass writes the gradients afresh
            for static, new in zip(terms, step(), strict=True):
                static.copy_(new)

        return replay, terms


def _model(seed: int = 0) -> DivNoisingModel:
    torch.manual_seed(seed)
    return DivNoisingModel(DivNoisingVAE(depth=1, start_filters=4, z_dim=4), GaussianNoiseModel(a=0.0, b=25.0,
                                                                                                trainable=False),
                           40.0, 8.0)


def _batches(n: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(1)
    return [torch.from_numpy(rng.poisson(40.0, (2, 1, 16, 16)).astype(np.float32)) for _ in range(n)]


def _eps(model: DivNoisingModel, x: torch.Tensor, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(step)
    return torch.randn((x.shape[0], model.network.z_dim, 8, 8), generator=generator)


def _run(graphed: bool, fail: bool = False, steps: int = 10):
    """Steps of the plain loop or of GraphedStep with the same batches, latent noise, KL weights and rates."""
    model = _model()
    config = TrainingConfig(learning_rate=3e-3, lr_decay_fraction=0.5)
    optimiser = Optimiser(list(model.network.parameters()), config, capturable=True)
    counter = {"step": 0}

    def terms(x):
        return loss_terms(model, x, _eps(model, x, counter["step"]))

    backend = StandInGraphs(optimiser, fail=fail)
    runner = GraphedStep(terms, optimiser, backend)
    losses = []
    for i, x in enumerate(_batches(steps)):
        counter["step"] = i
        kl_weight = min(1.0, i / 5)
        optimiser.set_progress(i / steps)
        if graphed:
            loss, _recon, _kl = runner(x, kl_weight)
        else:
            recon, kl = terms(x)
            loss = recon + kl_weight * kl
            optimiser.step(loss)
        losses.append(float(loss))
    return model, losses, backend, runner


def test_a_recorded_step_trains_as_the_plain_step_does():
    plain, plain_losses, _, _ = _run(graphed=False)
    graphed, graphed_losses, backend, runner = _run(graphed=True)
    assert backend.warm_ups == WARMUP_STEPS and backend.captures == 1 and backend.replays == 10 - WARMUP_STEPS
    assert runner.recorded and runner.failure is None
    # the KL weight and the learning rate change at every step: the replays see both
    np.testing.assert_allclose(graphed_losses, plain_losses, rtol=1e-5)
    for a, b in zip(graphed.network.parameters(), plain.network.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert plain_losses[-1] < plain_losses[0]


def test_a_step_that_cannot_be_recorded_runs_without_a_graph():
    plain, plain_losses, _, _ = _run(graphed=False)
    graphed, graphed_losses, backend, runner = _run(graphed=True, fail=True)
    assert not runner.recorded and "operation not permitted" in runner.failure
    assert backend.captures == 0 and backend.replays == 0
    np.testing.assert_allclose(graphed_losses, plain_losses, rtol=1e-5)


def test_a_new_optimizer_is_warmed_up_and_recorded_again():
    model = _model()
    optimiser = Optimiser(list(model.network.parameters()), TrainingConfig(), capturable=True)
    backend = StandInGraphs(optimiser)
    runner = GraphedStep(lambda x: loss_terms(model, x), optimiser, backend)
    batches = _batches(12)
    for x in batches[:6]:
        runner(x, 1.0)
    assert backend.captures == 1
    optimiser.restart()  # as after a collapse: new optimizer state
    for x in batches[6:]:
        runner(x, 1.0)
    assert backend.captures == 2 and backend.warm_ups == 2 * WARMUP_STEPS


def test_a_capturable_optimiser_keeps_its_rate_in_one_tensor():
    params = list(torch.nn.Linear(3, 1).parameters())
    config = TrainingConfig(learning_rate=1e-3, lr_patience=0, lr_factor=0.5, lr_decay_fraction=0.5)
    optimiser = Optimiser(params, config, capturable=True)
    rate = optimiser.optimizer.param_groups[0]["lr"]
    assert isinstance(rate, torch.Tensor)
    optimiser.set_progress(0.75)
    assert optimiser.lr == pytest.approx(optimiser.plateau_lr * optimiser.budget_decay(0.75))
    assert float(rate) == pytest.approx(optimiser.lr)
    optimiser.after_validation(1.0)
    optimiser.after_validation(2.0)  # no improvement: the plateau schedule halves the rate
    assert optimiser.plateau_lr == pytest.approx(5e-4)
    assert optimiser.optimizer.param_groups[0]["lr"] is rate and float(rate) == pytest.approx(5e-4)
    state = optimiser.state()
    assert isinstance(state["optimizer"]["param_groups"][0]["lr"], float)  # a file holds plain numbers
    resumed = Optimiser(params, config, state, capturable=True)
    assert isinstance(resumed.optimizer.param_groups[0]["lr"], torch.Tensor)
    assert resumed.lr == pytest.approx(5e-4) and float(resumed.optimizer.param_groups[0]["lr"]) == pytest.approx(5e-4)
    plain = Optimiser(params, config, state)
    assert plain.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert not plain.optimizer.param_groups[0]["capturable"]


def test_only_cuda_runs_record_their_steps():
    assert uses_cuda_graphs(True, torch.device("cuda"))
    assert not uses_cuda_graphs(False, torch.device("cuda"))
    assert not uses_cuda_graphs(True, torch.device("cpu"))
    assert not uses_cuda_graphs(True, torch.device("mps"))


@pytest.mark.parametrize("fail", [False, True])
def test_train_iter_with_recorded_steps(monkeypatch, fail):
    backends = []

    def stand_in(_device):
        return backends[-1]

    real_optimiser = engine_module.Optimiser

    def optimiser_with_backend(*args, **kwargs):
        optimiser = real_optimiser(*args, **kwargs)
        backends.append(StandInGraphs(optimiser, fail=fail))
        return optimiser

    monkeypatch.setattr(engine_module, "uses_cuda_graphs", lambda enabled, device: enabled)
    monkeypatch.setattr(engine_module, "Optimiser", optimiser_with_backend)
    monkeypatch.setattr(engine_module, "CudaGraphs", stand_in)
    frames = np.random.default_rng(0).poisson(40.0, (3, 48, 48)).astype(np.float32)
    config = TrainingConfig(patch_size=16, batch_size=4, start_filters=4, z_dim=4, max_steps=40, max_minutes=None,
                            validation_interval=10, log_interval=5, device="cpu", collapse_restarts=0)
    events = list(train_iter(frames, 5.0, config))
    done = events[-1]
    assert isinstance(done, TrainingDone) and done.reason == "max_steps"
    warnings = [e for e in events if isinstance(e, TrainingWarning) and e.kind == "cuda_graphs"]
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert len(steps) == 40 and np.isfinite(done.model.history["train_loss"]).all()
    assert len(done.model.history["train_loss"]) == 40
    if fail:
        assert len(warnings) == 1 and "could not be recorded" in warnings[0].message
        assert backends[0].captures == 0
    else:
        assert not warnings and backends[0].captures == 1 and backends[0].replays == 40 - WARMUP_STEPS
        # every step's loss was copied before the next replay overwrote it
        assert len(set(done.model.history["train_loss"][WARMUP_STEPS:])) > 30
    losses = done.model.history["train_loss"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def _state_of_a_plain_cpu_run(params: list[torch.nn.Parameter]) -> dict:
    optimiser = Optimiser(params, TrainingConfig())
    optimiser.optimizer = torch.optim.Adam(params, lr=1e-3, foreach=False)  # as saved by an older version
    optimiser.step(sum(p.sum() for p in params))
    return optimiser.state()


def test_a_state_saved_by_another_implementation_is_loaded_with_this_ones_settings(monkeypatch):
    # torch decides from the loaded groups' settings where Adam's step counts go (fused and capturable
    # Adam keep them on the parameters' device): it must be given this optimizer's settings
    params = list(torch.nn.Linear(3, 1).parameters())
    state = _state_of_a_plain_cpu_run(params)
    loaded = []
    real_load = torch.optim.Adam.load_state_dict
    monkeypatch.setattr(torch.optim.Adam, "load_state_dict",
                        lambda self, saved: (loaded.append(saved), real_load(self, saved))[1])
    resumed = Optimiser(params, TrainingConfig(), state, capturable=True)
    assert loaded and all(g["fused"] and g["capturable"] for g in loaded[0]["param_groups"])
    assert not state["optimizer"]["param_groups"][0]["capturable"]  # the saved state itself is not changed
    resumed.step(sum(p.sum() for p in params))
    assert all(float(s["step"]) == 2 for s in resumed.optimizer.state.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cpu_run_continues_on_the_gpu_with_graphs():
    params = list(torch.nn.Linear(3, 1).parameters())
    state = _state_of_a_plain_cpu_run(params)
    on_gpu = [torch.nn.Parameter(p.detach().cuda()) for p in params]
    resumed = Optimiser(on_gpu, TrainingConfig(), state, capturable=True)
    resumed.step(sum(p.sum() for p in on_gpu))
    assert all(s["step"].device.type == "cuda" and float(s["step"]) == 2 for s in resumed.optimizer.state.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("network", ["divnoising", "hierarchical"])
def test_each_network_trains_with_recorded_steps_on_a_gpu(network):
    frames = np.random.default_rng(0).poisson(40.0, (3, 64, 64)).astype(np.float32)
    config = TrainingConfig(network=network, patch_size=32, batch_size=4, start_filters=8, z_dim=4, max_steps=30,
                            max_minutes=None, validation_interval=10, log_interval=5, device="cuda",
                            collapse_restarts=0, stop_on_collapse=False)  # a network this small may collapse
    events = list(train_iter(frames, 5.0, config))
    done = events[-1]
    assert isinstance(done, TrainingDone) and done.reason == "max_steps"
    assert not [e.message for e in events if isinstance(e, TrainingWarning) and e.kind == "cuda_graphs"]
    losses = done.model.history["train_loss"]
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert len(set(losses[WARMUP_STEPS:])) > 20  # every replay drew new patches and new latent noise
