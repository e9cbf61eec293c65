"""A workflow's events from a child process: the same events, Stop, continued models, failures."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from napari_divnoising import child_process
from napari_divnoising.child_process import ChildEvents, ChildStartError, ModelPayload, _Packer
from napari_divnoising.errors import DivNoisingError
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.noise_models import GaussianNoiseModel
from napari_divnoising.training import COLEARN, TrainingConfig, TrainingDone, TrainingStarted, TrainStep, train_iter


def tiny_config(**kw) -> TrainingConfig:
    settings = dict(patch_size=16, batch_size=2, start_filters=8, z_dim=8, max_minutes=None, max_steps=12,
                    n_validation_patches=4, validation_interval=4, device="cpu", seed=0)
    settings.update(kw)
    return TrainingConfig(**settings)


def noisy_images(n: int = 2, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(100, 20, (size, size)).astype(np.float32) for _ in range(n)]


def failing_events(message: str):
    yield "started"
    raise DivNoisingError(message)


def dying_events():
    yield "started"
    os._exit(3)


def weights(model: DivNoisingModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.network.state_dict().items()}


def test_the_child_yields_the_same_events_and_model_as_the_loop_in_process():
    images, config = noisy_images(), tiny_config()
    here = list(train_iter(images, COLEARN, config))
    there = list(ChildEvents(train_iter, images, COLEARN, config))
    assert [type(e) for e in there] == [type(e) for e in here]
    assert [e.step for e in there if isinstance(e, TrainStep)] == [e.step for e in here if isinstance(e, TrainStep)]
    done_here, done_there = here[-1], there[-1]
    assert isinstance(done_there, TrainingDone) and done_there.steps == done_here.steps == 12
    assert isinstance(done_there.model, DivNoisingModel)
    # One model object on this side for the child's model: the live model of TrainingStarted is the final one.
    started = next(e for e in there if isinstance(e, TrainingStarted))
    assert started.model is done_there.model
    for name, value in weights(done_here.model).items():
        torch.testing.assert_close(weights(done_there.model)[name], value, rtol=1e-4, atol=1e-5)
    assert done_there.model.history["steps"] == 12


def test_stop_ends_the_run_after_the_current_step_and_keeps_the_model_so_far():
    events = ChildEvents(train_iter, noisy_images(), COLEARN, tiny_config(max_steps=100_000))
    started = next(events)
    assert isinstance(started, TrainingStarted)
    before = weights(started.model)
    seen = []
    for event in events:
        if isinstance(event, TrainStep):
            seen.append(event.step)
            if event.step == 5:
                events.request_stop()
    # The child runs ahead of this side by the steps it made before the request reached it (a few
    # milliseconds each here; more on a loaded machine): far from the budget either way.
    assert 5 <= seen[-1] < 500
    model = started.model
    assert model.history["steps"] == seen[-1]  # the child's clean-up ran and its final state came back
    assert any(not torch.equal(before[k], v) for k, v in weights(model).items())
    assert events.exit_code == 0


def test_the_mirror_follows_the_childs_validations_while_it_trains():
    events = ChildEvents(train_iter, noisy_images(), COLEARN, tiny_config(max_steps=100_000, validation_interval=3),
                         snapshot_interval_s=0.0)
    started = next(events)
    before = weights(started.model)
    for event in events:
        if isinstance(event, TrainStep) and event.step >= 7:
            break  # a validation at step 3 or 6 has been followed by a snapshot
    model = started.model
    assert model.history["val_steps"] and model.history["steps"] >= 3  # the history came with the weights
    assert any(not torch.equal(before[k], v) for k, v in weights(model).items())
    events.close()
    assert events.exit_code == 0


def test_continuing_a_model_trains_a_copy_as_in_process():
    first = list(train_iter(noisy_images(), COLEARN, tiny_config(max_steps=4)))[-1].model
    before = weights(first)
    continued = list(ChildEvents(train_iter, noisy_images(), None, tiny_config(max_steps=4), resume=first))[-1].model
    assert continued is not first and continued.history["steps"] == 8
    assert any(not torch.equal(before[k], v) for k, v in weights(continued).items())
    assert first.history["steps"] == 4 and all(torch.equal(before[k], v) for k, v in weights(first).items())


def test_closing_the_iterator_stops_the_child():
    events = ChildEvents(train_iter, noisy_images(), COLEARN, tiny_config(max_steps=100_000))
    started = next(events)
    next(events)
    events.close()
    assert events.exit_code == 0
    assert started.model.history["steps"] >= 1


def test_an_error_in_the_child_is_raised_here():
    events = ChildEvents(failing_events, "the data is empty")
    assert next(events) == "started"
    with pytest.raises(DivNoisingError, match="the data is empty") as caught:
        next(events)
    notes = "".join(getattr(caught.value, "__notes__", []))
    assert "Raised in the worker process" in notes and "failing_events" in notes


def test_a_child_that_dies_is_reported_in_one_line_and_leaves_no_files():
    events = ChildEvents(dying_events)
    socket_dir = events._socket_dir
    assert next(events) == "started"
    assert os.name != "posix" or os.path.isdir(socket_dir)
    with pytest.raises(DivNoisingError, match=r"ended unexpectedly \(exit code 3\)"):
        next(events)
    assert not socket_dir or not os.path.exists(socket_dir)  # the dead child could not clean up


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo hacked",))


def test_a_model_from_the_child_is_read_without_running_code():
    with pytest.raises(pickle.UnpicklingError):
        _Packer("parent").update(ModelPayload("child-1", pickle.dumps({"format": _Exploit()})))


def test_models_and_noise_models_travel_as_payloads():
    packer = _Packer("parent")
    noise = GaussianNoiseModel(a=2.0, b=3.0)
    packed = packer.pack({"noise": noise, "tensor": torch.ones(2)})
    assert not isinstance(packed["noise"], torch.nn.Module) and not isinstance(packed["tensor"], torch.Tensor)
    unpacked = _Packer("child").unpack(packed)
    assert isinstance(unpacked["noise"], GaussianNoiseModel)
    torch.testing.assert_close(unpacked["noise"].state_dict(), noise.state_dict())
    torch.testing.assert_close(unpacked["tensor"], torch.ones(2))


def test_a_child_that_cannot_start_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(child_process, "_BOOTSTRAP", "import sys; sys.exit(4)")
    with pytest.raises(ChildStartError, match=r"could not start \(exit code 4\)"):
        ChildEvents(failing_events, "never runs")
    monkeypatch.setattr(child_process.sys, "executable", "/nonexistent/python")
    with pytest.raises(ChildStartError, match="could not start"):
        ChildEvents(failing_events, "never runs")


def niceness_events():
    yield os.nice(0) if hasattr(os, "nice") else 0


@pytest.mark.skipif(not hasattr(os, "nice"), reason="Unix niceness")
def test_the_child_runs_at_a_lower_priority():
    (child_niceness,) = list(ChildEvents(niceness_events))
    assert child_niceness >= min(os.nice(0) + child_process.CHILD_NICENESS, 19)
