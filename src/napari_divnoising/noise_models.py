"""Pixel-wise noise models p(x | s) in raw intensity units (docs/method.md section 4).

Every noise model follows :class:`NoiseModelProtocol` (a ``torch.nn.Module``):

- ``kind``: the name it is stored under (``"gmm"``, ``"gaussian"``);
- ``log_likelihood(observation, signal)`` returns log p(x_i | s_i) per pixel
  (same shape as the inputs), computed stably in log space;
- ``mean(signal)`` / ``variance(signal)``: the noise distribution's mean and
  variance at each signal value;
- ``to_config()`` returns a JSON-serialisable dict; with ``state_dict()`` it
  rebuilds the model through :func:`noise_model_from_config`.

A new noise model is one class here with those members and a ``from_config``
classmethod, registered in :data:`NOISE_MODEL_TYPES`; training, prediction,
model files and the plots use only the protocol.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)


@runtime_checkable
class NoiseModelProtocol(Protocol):
    """What training, prediction, model files and plots need of a noise model."""

    kind: str

    def log_likelihood(self, observation: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        """log p(observation | signal) per pixel."""
        ...

    def mean(self, signal: torch.Tensor) -> torch.Tensor:
        """Mean of the observation at ``signal``."""
        ...

    def variance(self, signal: torch.Tensor) -> torch.Tensor:
        """Variance of the observation at ``signal``."""
        ...

    def to_config(self) -> dict:
        """JSON-serialisable settings; with the state dict they rebuild the model."""
        ...


def _poly(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """sum_j weights[..., j] * u**j for each row of ``weights``; returns (rows, *u.shape)."""
    powers = torch.stack([u**j for j in range(weights.shape[1])], dim=0)  # (n_coeff, *u.shape)
    return torch.tensordot(weights.to(u.dtype), powers, dims=1)


def gmm_parameters(
    weight: torch.Tensor, min_signal: Any, max_signal: Any, min_variance: Any, signal: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Means, variances and log mixture weights, each (K, *signal.shape), of the GMM with ``weight``.

    ``weight`` is (3K, n_coeff) as in :class:`GMMNoiseModel`; it may be a free tensor being
    optimised (the fit calls this with float64 weights), so this is the one place the formula lives.
    """
    k = weight.shape[0] // 3
    lo = torch.as_tensor(min_signal, dtype=signal.dtype, device=signal.device)
    hi = torch.as_tensor(max_signal, dtype=signal.dtype, device=signal.device)
    u = (signal - lo) / (hi - lo)
    means = _poly(weight[:k], u)
    # the bounds stay tensors on the signal's device: reading a GPU number back would wait for the device
    floor = torch.as_tensor(min_variance, dtype=signal.dtype, device=signal.device)
    variances = torch.clamp(_poly(torch.exp(weight[k : 2 * k]), u), min=floor)
    log_weights = torch.log_softmax(_poly(weight[2 * k :], u), dim=0)
    # Shift the components so the mixture mean is the signal itself.
    means = means - (log_weights.exp() * means).sum(0) + signal
    return means, variances, log_weights


def gmm_log_likelihood(
    weight: torch.Tensor, min_signal: Any, max_signal: Any, min_variance: Any,
    observation: torch.Tensor, signal: torch.Tensor,
) -> torch.Tensor:
    """log p(observation | signal) per pixel of the GMM with ``weight``, via logsumexp over components."""
    means, variances, log_weights = gmm_parameters(weight, min_signal, max_signal, min_variance, signal)
    log_normal = -0.5 * ((observation - means) ** 2 / variances + torch.log(variances) + LOG_2PI)
    return torch.logsumexp(log_weights + log_normal, dim=0)


class GMMNoiseModel(nn.Module):
    """Gaussian-mixture noise model of the reference code (PPN2V / DivNoising / CAREamics).

    Parameters
    ----------
    weight
        Array (3K, n_coeff): rows 0..K-1 are the mean polynomials, K..2K-1 the
        log-variance polynomials (exp is applied to the coefficients), 2K..3K-1
        the mixture logits. Polynomials are in u = (s - min) / (max - min).
    min_signal, max_signal
        Signal range used to normalise u.
    min_variance
        Floor on the *variance* of each component, in grey values squared
        (stored as ``min_sigma`` in the reference ``.npz`` files).
    """

    kind = "gmm"

    def __init__(self, weight: Any, min_signal: float, max_signal: float, min_variance: float = 1.0):
        super().__init__()
        w = torch.as_tensor(weight, dtype=torch.float32)
        if w.ndim != 2 or w.shape[0] % 3 != 0 or w.shape[0] == 0:
            raise ValueError(f"GMM weight must have shape (3K, n_coeff); got {tuple(w.shape)}")
        if not float(max_signal) > float(min_signal):
            raise ValueError(f"max_signal ({max_signal}) must exceed min_signal ({min_signal})")
        self.weight = nn.Parameter(w.clone())
        self.register_buffer("min_signal", torch.tensor(float(min_signal), dtype=torch.float32))
        self.register_buffer("max_signal", torch.tensor(float(max_signal), dtype=torch.float32))
        self.register_buffer("min_variance", torch.tensor(float(min_variance), dtype=torch.float32))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # Model files written before the rename call the variance floor "min_sigma".
        old = prefix + "min_sigma"
        if old in state_dict and prefix + "min_variance" not in state_dict:
            state_dict[prefix + "min_variance"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args)

    @classmethod
    def initial(
        cls, min_signal: float, max_signal: float, n_gaussians: int = 3, n_coeffs: int = 2,
        min_variance: float = 1.0, generator: torch.Generator | None = None,
    ) -> GMMNoiseModel:
        """The reference initialisation: W ~ N(0, 1), variance rows' linear term log(max - min)."""
        w = torch.randn(3 * n_gaussians, n_coeffs, generator=generator)
        if n_coeffs > 1:
            w[n_gaussians : 2 * n_gaussians, 1] = math.log(float(max_signal) - float(min_signal))
        return cls(w, min_signal, max_signal, min_variance)

    @classmethod
    def from_config(cls, config: dict) -> GMMNoiseModel:
        """An untrained model of the shape :meth:`to_config` describes (load the state dict next)."""
        k, n = int(config["n_gaussians"]), int(config["n_coeffs"])
        floor = config["min_variance"] if "min_variance" in config else config["min_sigma"]
        return cls(torch.zeros(3 * k, n), config["min_signal"], config["max_signal"], floor)

    @property
    def n_gaussians(self) -> int:
        return self.weight.shape[0] // 3

    @property
    def n_coeffs(self) -> int:
        return self.weight.shape[1]

    def parameters_at(self, signal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(means, variances, log_weights)``, each (K, *signal.shape), at raw ``signal``."""
        return gmm_parameters(self.weight, self.min_signal, self.max_signal, self.min_variance, signal)

    def log_likelihood(self, observation: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        """log p(observation | signal) per pixel, via logsumexp over the components."""
        return gmm_log_likelihood(self.weight, self.min_signal, self.max_signal, self.min_variance, observation, signal)

    def mean(self, signal: torch.Tensor) -> torch.Tensor:
        """Mixture mean at ``signal`` (equals ``signal`` by construction)."""
        means, _, log_weights = self.parameters_at(signal)
        return (log_weights.exp() * means).sum(0)

    def variance(self, signal: torch.Tensor) -> torch.Tensor:
        """Total variance of the mixture at ``signal``."""
        means, variances, log_weights = self.parameters_at(signal)
        a = log_weights.exp()
        m = (a * means).sum(0)
        return (a * (variances + means**2)).sum(0) - m**2

    def to_config(self) -> dict:
        return {
            "kind": self.kind,
            "n_gaussians": self.n_gaussians,
            "n_coeffs": self.n_coeffs,
            "min_signal": float(self.min_signal),
            "max_signal": float(self.max_signal),
            "min_variance": float(self.min_variance),
        }


class GaussianNoiseModel(nn.Module):
    """Gaussian noise with variance linear in the signal: N(x; s, max(a*s + b, sigma_min**2)).

    Used as the co-learned noise model (docs/method.md 4b, ``trainable=True``) or
    as a fixed Gaussian of known sigma (``a=0, b=sigma**2``). Internally
    a and b are kept as O(1) numbers relative to the data scale so that Adam
    moves them at a useful speed whatever the intensity range:
    ``var = scale**2 * (alpha * (s - offset) / scale + beta)``.

    Cameras clip: with a ``floor`` (``ceiling``) an observation at or below the floor (at or above the
    ceiling) stands for every value below ``floor + quantum / 2`` (above ``ceiling - quantum / 2``), where
    ``quantum`` is the step between recorded values (1 for whole numbers, 0 for continuous data), and its
    likelihood is the probability that the camera clipped the value there. Other observations keep the
    Gaussian density (with a step of 1 it is close to the probability of the whole number). The model's
    :meth:`mean` is then the mean of the recorded value, which clipping pulls away from the signal near
    the limits.
    """

    kind = "gaussian"

    def __init__(
        self, a: float = 0.0, b: float = 1.0, sigma_min: float = 1.0,
        offset: float = 0.0, scale: float = 1.0, trainable: bool = True,
        quantum: float = 0.0, floor: float | None = None, ceiling: float | None = None,
    ):
        super().__init__()
        scale = float(scale) if scale > 0 else 1.0
        if not quantum >= 0:
            raise ValueError(f"quantum must be 0 or more (got {quantum})")
        if floor is not None and ceiling is not None and not float(ceiling) > float(floor):
            raise ValueError(f"ceiling ({ceiling}) must exceed floor ({floor})")
        self.register_buffer("offset", torch.tensor(float(offset), dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("sigma_min", torch.tensor(float(sigma_min), dtype=torch.float32))
        alpha = float(a) / scale
        beta = (float(b) + float(a) * float(offset)) / scale**2
        self.alpha = nn.Parameter(torch.tensor(alpha, dtype=torch.float32), requires_grad=trainable)
        self.beta = nn.Parameter(torch.tensor(beta, dtype=torch.float32), requires_grad=trainable)
        self.quantum = float(quantum)
        self.floor = None if floor is None else float(floor)
        self.ceiling = None if ceiling is None else float(ceiling)

    @property
    def a(self) -> float:
        """Slope of the variance in raw units."""
        return float(self.alpha.detach() * self.scale)

    @property
    def b(self) -> float:
        """Intercept of the variance in raw units (variance at signal 0)."""
        return float(self.beta.detach() * self.scale**2 - self.alpha.detach() * self.scale * self.offset)

    @property
    def mean_is_signal(self) -> bool:
        """Whether :meth:`mean` is the signal itself and the likelihood a plain density (no clipping)."""
        return self.floor is None and self.ceiling is None

    def variance(self, signal: torch.Tensor) -> torch.Tensor:
        dev = signal.device  # prediction may decode on a GPU with the noise model left on the host
        scale, alpha, beta = self.scale.to(dev), self.alpha.to(dev), self.beta.to(dev)
        var = scale**2 * (alpha * (signal - self.offset.to(dev)) / scale + beta)
        return torch.clamp(var, min=(self.sigma_min.to(dev) ** 2).to(var.dtype))

    def log_likelihood(self, observation: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        var = self.variance(signal)
        result = -0.5 * ((observation - signal) ** 2 / var + torch.log(var) + LOG_2PI)
        if self.mean_is_signal:
            return result
        sigma, half = torch.sqrt(var), 0.5 * self.quantum
        if self.floor is not None:
            below = torch.special.log_ndtr((self.floor + half - signal) / sigma)
            result = torch.where(observation <= self.floor, below, result)
        if self.ceiling is not None:
            above = torch.special.log_ndtr((signal - self.ceiling + half) / sigma)
            result = torch.where(observation >= self.ceiling, above, result)
        return result

    def mean(self, signal: torch.Tensor) -> torch.Tensor:
        """Mean of the recorded value: the signal, or with clipping the mean of the clipped Gaussian."""
        if self.mean_is_signal:
            return signal
        sigma = torch.sqrt(self.variance(signal))
        half = 0.5 * self.quantum
        low_mass, low_density, result = torch.zeros_like(signal), torch.zeros_like(signal), torch.zeros_like(signal)
        if self.floor is not None:
            alpha = (self.floor + half - signal) / sigma
            low_mass, low_density = torch.special.ndtr(alpha), torch.exp(-0.5 * alpha**2 - 0.5 * LOG_2PI)
            result = result + self.floor * low_mass
        high_mass, high_density = torch.ones_like(signal), torch.zeros_like(signal)
        if self.ceiling is not None:
            beta = (self.ceiling - half - signal) / sigma
            high_mass, high_density = torch.special.ndtr(beta), torch.exp(-0.5 * beta**2 - 0.5 * LOG_2PI)
            result = result + self.ceiling * (1.0 - high_mass)
        return result + signal * (high_mass - low_mass) + sigma * (low_density - high_density)

    @classmethod
    def from_config(cls, config: dict) -> GaussianNoiseModel:
        """The model :meth:`to_config` describes (load the state dict next for the trained values)."""
        return cls(
            a=config["a"], b=config["b"], sigma_min=config["sigma_min"], offset=config["offset"],
            scale=config["scale"], trainable=config.get("trainable", True), quantum=config.get("quantum", 0.0),
            floor=config.get("floor"), ceiling=config.get("ceiling"),
        )

    def to_config(self) -> dict:
        return {
            "kind": self.kind,
            "a": self.a,
            "b": self.b,
            "sigma_min": float(self.sigma_min),
            "offset": float(self.offset),
            "scale": float(self.scale),
            "trainable": bool(self.alpha.requires_grad),
            "quantum": self.quantum,
            "floor": self.floor,
            "ceiling": self.ceiling,
        }


#: The noise model classes by their ``kind``; a new noise model registers itself here.
NOISE_MODEL_TYPES: dict[str, type[nn.Module]] = {"gmm": GMMNoiseModel, "gaussian": GaussianNoiseModel}


def noise_model_from_config(config: dict, state_dict: dict | None = None) -> nn.Module:
    """Rebuild a noise model from :meth:`to_config` output and (optionally) its ``state_dict``."""
    kind = config.get("kind")
    if kind not in NOISE_MODEL_TYPES:
        raise ValueError(f"unknown noise model kind {kind!r}")
    model = NOISE_MODEL_TYPES[kind].from_config(config)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model
