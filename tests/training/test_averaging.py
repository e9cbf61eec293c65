"""Weight averaging: the average follows its formula, and it is what training validates, saves and returns."""

import numpy as np
import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.model_io import load_model
from napari_divnoising.training import TrainingConfig, TrainingDone, TrainingStarted, TrainStep, train_iter
from napari_divnoising.training.averaging import WeightAverage


def test_average_follows_its_formula_and_applied_restores_the_live_weights():
    net = torch.nn.Linear(2, 1)
    average = WeightAverage(net, decay=0.5)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    average.update()  # first update: decay min(0.5, 2/11) = 2/11
    expected = start * (2 / 11) + (start + 1.0) * (9 / 11)
    live = net.weight.detach().clone()
    with average.applied():
        assert torch.allclose(net.weight, expected)
    assert torch.equal(net.weight, live)
    average.reset()
    with average.applied():
        assert torch.equal(net.weight, live)


def _config(**kw) -> TrainingConfig:
    base = dict(network="divnoising", patch_size=16, batch_size=2, depth=1, start_filters=4, z_dim=2,
                n_validation_patches=4, max_minutes=None, max_steps=30, validations_per_run=1,
                kl_annealing_fraction=0.0, seed=3, device="cpu")
    base.update(kw)
    return TrainingConfig(**base)


def _live_weights_per_step(images, config):
    """The network's (live) weights at the start and after every step of a run without averaging."""
    per_step, model = [], None
    for event in train_iter(images, 10.0, config):
        if isinstance(event, TrainingStarted):
            model = event.model
            per_step.append([p.detach().clone() for p in model.network.parameters()])
        if isinstance(event, TrainStep):
            per_step.append([p.detach().clone() for p in model.network.parameters()])
    return per_step


@pytest.fixture
def one_torch_thread():
    """One torch thread while the test runs (the same sums in the same order), the suite's setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_trained_and_saved_model_hold_the_averaged_weights(tmp_path, one_torch_thread):
    images = np.random.default_rng(0).normal(100, 10, (4, 32, 32)).astype(np.float32)
    decay = 0.9
    live = _live_weights_per_step(images, _config())
    assert len(live) == 31
    expected = [w.clone() for w in live[0]]
    for n, weights in enumerate(live[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        expected = [e * d + w * (1 - d) for e, w in zip(expected, weights)]

    path = tmp_path / "ema.pt"
    done = [e for e in train_iter(images, 10.0, _config(ema_decay=decay), checkpoint_path=path)
            if isinstance(e, TrainingDone)][0]
    returned = [p.detach() for p in done.model.network.parameters()]
    assert not all(torch.allclose(r, w, atol=1e-6) for r, w in zip(returned, live[-1]))  # not the live weights
    saved = [p.detach() for p in load_model(path).network.parameters()]
    for r, s in zip(returned, saved):
        assert torch.allclose(r, s)
    # averaging does not change the optimisation: the result is the average of the same trajectory
    for r, e in zip(returned, expected):
        assert torch.allclose(r, e, atol=1e-5, rtol=1e-4)


def test_a_decay_of_one_is_refused_with_one_line():
    with pytest.raises(DivNoisingError, match="ema_decay must be between"):
        TrainingConfig(ema_decay=1.0).validate()
