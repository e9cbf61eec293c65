"""A training step recorded once as a CUDA graph and replayed.

On a GPU a DivNoising step is a few hundred small kernels: the host spends longer launching them than
the device spends running them (see ``benchmarks/bench_optimizer.py``'s profile). A CUDA graph records
the whole step (forward pass, loss, backward pass and Adam update) once and replays it with one launch.

A recorded step reads everything that changes between steps from tensors it was recorded with: the
batch is copied into a fixed input tensor, the KL weight into a 0-d tensor, and the learning rate lives
in a tensor of the optimizer (see :class:`~napari_divnoising.training.optimiser.Optimiser`). The loss
terms it returns are the same tensors at every step, overwritten by the next replay.

The first steps run without a graph (on a side stream, as recording requires: lazily created state
such as Adam's moments and cuDNN's algorithm choice must exist first); a new optimizer (a restart after
a collapse) is recorded anew. A step that cannot be recorded (an operation that must wait for the
device) falls back to running without a graph, and the reason is kept in :attr:`GraphedStep.failure`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

#: Steps run without a graph before recording (a new optimizer's state is created by its first step).
WARMUP_STEPS = 3

LossTerms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def uses_cuda_graphs(cuda_graphs: bool, device: torch.device) -> bool:
    """Whether a run on ``device`` records its steps (the ``cuda_graphs`` setting, on a CUDA device)."""
    return bool(cuda_graphs) and device.type == "cuda"


class GraphBackend(Protocol):
    """How a step is warmed up and recorded: :class:`CudaGraphs` on a GPU; tests use a CPU stand-in."""

    def warm_up(self, step: Callable[[], LossTerms]) -> LossTerms: ...

    def capture(self, step: Callable[[], LossTerms]) -> tuple[Callable[[], None], LossTerms]: ...


class CudaGraphs:
    """Warm-up on a side stream and recording with :class:`torch.cuda.CUDAGraph` on ``device``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def warm_up(self, step: Callable[[], LossTerms]) -> LossTerms:
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            terms = step()
        current.wait_stream(self.stream)
        return terms

    def capture(self, step: Callable[[], LossTerms]) -> tuple[Callable[[], None], LossTerms]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            terms = step()
        return graph.replay, terms


class GraphedStep:
    """Training steps (loss terms, backward pass, optimizer update) replayed from one recording.

    Parameters
    ----------
    loss_terms
        ``loss_terms(x)`` returns (reconstruction, KL) per pixel of the batch ``x`` (the forward pass).
    optimiser
        The run's :class:`~napari_divnoising.training.optimiser.Optimiser`, made with ``capturable=True``.
    backend
        Warm-up and recording (:class:`CudaGraphs` for a CUDA device).
    warmup_steps
        Steps run without a graph before recording, for each new optimizer.
    """

    def __init__(self, loss_terms: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], optimiser: Any,
                 backend: GraphBackend, warmup_steps: int = WARMUP_STEPS):
        self.loss_terms = loss_terms
        self.optimiser = optimiser
        self.backend = backend
        self.warmup_steps = warmup_steps
        #: why recording failed (then every step runs without a graph), or None
        self.failure: str | None = None
        self._x: torch.Tensor | None = None
        self._kl_weight: torch.Tensor | None = None
        self._kl_weight_value: float | None = None
        self._replay: Callable[[], None] | None = None
        self._terms: LossTerms | None = None
        self._recorded_for: Any = None
        self._warmed_up = 0

    @property
    def recorded(self) -> bool:
        """Whether steps are now replayed from a recording."""
        return self._replay is not None

    def _step(self) -> LossTerms:
        recon, kl = self.loss_terms(self._x)
        loss = recon + self._kl_weight * kl
        loss.backward()
        self.optimiser.optimizer.step()
        return loss.detach(), recon.detach(), kl.detach()

    def __call__(self, x: torch.Tensor, kl_weight: float) -> LossTerms:
        """One training step on batch ``x`` with ``kl_weight``; returns (loss, reconstruction, KL).

        After recording, the returned tensors are the same at every step: copy them before the next.
        """
        optimizer = self.optimiser.optimizer
        if self._recorded_for is not optimizer:  # a new optimizer: warm up and record again
            self._replay, self._terms, self._recorded_for, self._warmed_up = None, None, optimizer, 0
        if self._x is None or self._x.shape != x.shape:
            self._x = torch.empty_like(x)
            self._kl_weight = torch.zeros((), dtype=torch.float32, device=x.device)
            self._kl_weight_value = None
            self._replay, self._warmed_up = None, 0  # new shapes: warm up (cuDNN's choice) before recording
        self._x.copy_(x)
        if kl_weight != self._kl_weight_value:
            self._kl_weight.fill_(kl_weight)
            self._kl_weight_value = kl_weight
        if self._replay is None and self.failure is None and self._warmed_up >= self.warmup_steps:
            optimizer.zero_grad(set_to_none=True)
            try:
                self._replay, self._terms = self.backend.capture(self._step)
            except Exception as error:  # an operation that cannot be recorded: run without graphs
                self.failure = f"{type(error).__name__}: {error}".strip()
                self._replay = self._terms = None
        if self._replay is None:
            optimizer.zero_grad(set_to_none=True)
            self._warmed_up += 1
            return self.backend.warm_up(self._step) if self.failure is None else self._step()
        self._replay()
        return self._terms
