"""The DivNoising variational autoencoder (docs/method.md section 2).

The network owns its geometry: :meth:`DivNoisingVAE.receptive_radius` (how far
an output pixel sees, which tiled prediction relies on) and
:meth:`DivNoisingVAE.inference_decoder` (the decoder with its upsampling
layers folded into faster equivalent ones, for inference).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F  # noqa: N812 (the usual PyTorch name)
from torch import nn

from .hierarchical_network import HierarchicalVAE


def _conv_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]


class DivNoisingVAE(nn.Module):
    """Fully convolutional VAE whose decoder predicts the clean signal.

    Encoder: ``depth`` blocks of two conv3x3+ReLU and a 2x2 max-pool (filters
    ``start_filters * 2**i``), then linear conv3x3 heads for ``mu`` and
    ``logvar`` with ``z_dim`` channels. The decoder mirrors it with
    transposed convolutions and ends in a linear conv3x3 to one channel. No
    batch norm and no skip connections (skips would let noise bypass the
    bottleneck). Inputs and outputs are in normalised units.
    """

    kind = "divnoising"

    def __init__(self, depth: int = 2, start_filters: int = 32, z_dim: int = 64, in_channels: int = 1):
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.depth = depth
        self.start_filters = start_filters
        self.z_dim = z_dim
        enc: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            f = start_filters * 2**i
            enc += _conv_relu(c, f) + _conv_relu(f, f) + [nn.MaxPool2d(2)]
            c = f
        self.encoder = nn.Sequential(*enc)
        self.mu_head = nn.Conv2d(c, z_dim, 3, padding=1)
        self.logvar_head = nn.Conv2d(c, z_dim, 3, padding=1)
        dec: list[nn.Module] = []
        c = z_dim
        for i in reversed(range(depth)):
            f = start_filters * 2**i
            dec += _conv_relu(c, f) + _conv_relu(f, f) + [nn.ConvTranspose2d(f, f, 2, stride=2)]
            c = f
        dec.append(nn.Conv2d(c, in_channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)

    @property
    def size_multiple(self) -> int:
        """Height and width of network inputs must be multiples of this."""
        return 2**self.depth

    @property
    def noise_channels(self) -> int:
        """Channels of the latent grid that take standard normal noise (all of them here)."""
        return self.z_dim

    def settings(self) -> dict:
        """The training settings that build this network again (:func:`build_network`)."""
        return {"network": self.kind, "depth": self.depth, "start_filters": self.start_filters, "z_dim": self.z_dim}

    def receptive_radius(self) -> tuple[int, int]:
        """Upper bounds (pixels) on how far the encoder and the decoder see from an output position.

        Read off the layers: a k x k convolution at scale s (image pixels per feature pixel) adds
        ``(k // 2) * s``, a 2 x 2 max-pool at scale s adds ``s`` and doubles the scale, a stride-2
        transposed convolution with a 2 x 2 kernel adds nothing (each output pixel comes from one
        input pixel) and halves it. Encoder: from the image to mu / logvar; decoder: from the latent
        grid to the image.

        Returns
        -------
        tuple of int
            ``(encoder_radius, decoder_radius)`` in image pixels.
        """
        encoder, scale = _radius(list(self.encoder), 1)
        head, scale = _radius([self.mu_head], scale)
        decoder, _ = _radius(list(self.decoder), self.size_multiple)
        return encoder + head, decoder

    def inference_decoder(self) -> nn.Sequential:
        """A frozen copy of the decoder for inference, each (2x2 transposed conv, 3x3 conv) pair folded into
        one :class:`FoldedUpConv`; it computes the same function (up to float rounding), faster.

        The copy shares nothing with this network: training it further does not change the copy.
        """
        with torch.no_grad():
            folded = fold_decoder(copy.deepcopy(self.decoder))
        for p in folded.parameters():
            p.requires_grad_(False)
        return folded.eval()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mu, logvar)`` of q(z|x) for an input of shape (B, 1, H, W)."""
        h = self.encoder(x)
        return self.mu_head(h), self.logvar_head(h)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, std)`` of q(z|x): the means of every latent channel and the standard deviations of the first
        :attr:`noise_channels` (here all; float32), the channels that posterior samples draw noise for."""
        mu, logvar = self.encode(x)
        return mu, torch.exp(0.5 * logvar.float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents (B, z_dim, h, w) to signals (B, 1, h*2**depth, w*2**depth)."""
        return self.decoder(z)

    @staticmethod
    def sample_latent(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """Reparameterised sample z = mu + exp(logvar / 2) * eps."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(signal, mu, logvar)`` for one posterior sample per input."""
        mu, logvar = self.encode(x)
        return self.decode(self.sample_latent(mu, logvar)), mu, logvar


def _radius(layers: list[nn.Module], scale: int) -> tuple[int, int]:
    """Receptive radius (pixels at scale 1) added by ``layers`` entered at ``scale``, and the scale after them."""
    radius = 0
    for layer in layers:
        if isinstance(layer, FoldedUpConv):  # what its (2x2 transposed conv, 3x3 conv) pair adds
            scale //= 2
            radius += (layer.conv.kernel_size[0] // 2) * scale
        elif isinstance(layer, nn.ConvTranspose2d):
            if tuple(layer.kernel_size) != tuple(layer.stride):
                raise ValueError(f"receptive_radius: unsupported transposed convolution {layer}")
            scale //= layer.stride[0]
        elif isinstance(layer, nn.Conv2d):
            radius += (layer.kernel_size[0] // 2) * layer.dilation[0] * scale
            scale *= layer.stride[0]
        elif isinstance(layer, nn.MaxPool2d):
            k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
            stride = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
            radius += (k - 1) * scale
            scale *= stride
        elif not isinstance(layer, nn.ReLU):
            raise ValueError(f"receptive_radius: unsupported layer {type(layer).__name__}")
    return radius, scale


class FoldedUpConv(nn.Module):
    """``ConvTranspose2d(k=2, s=2)`` then ``Conv2d(3x3, padding=1)`` as one low-resolution 3x3 convolution
    and a pixel shuffle.

    Both layers are linear with no activation between them, so they compose exactly: output pixel
    (2y+i, 2x+j) depends on input pixels (y+-1, x+-1) through a folded kernel. The transposed
    convolution's bias passes through the zero-padded 3x3 convolution differently at the image border,
    so biases are added as a map computed once per output size. Inference only; about 1.5x faster
    decoding on the CPU (the transposed convolutions and the 1-channel output convolution are slow).
    """

    def __init__(self, up: nn.ConvTranspose2d, conv: nn.Conv2d):
        super().__init__()
        up_w = up.weight.detach()  # (c_in, c_mid, 2, 2)
        conv_w = conv.weight.detach()  # (c_out, c_mid, 3, 3)
        c_in, c_out = up_w.shape[0], conv_w.shape[0]
        # route[i, d, o, p] = 1 where output phase i (0/1) with 3x3 tap d (offset d - 1) reads the low-resolution
        # pixel at offset o - 1 through the transposed convolution's kernel position p:
        # divmod(i + d - 1, 2) == (o - 1, p)
        route = torch.zeros(2, 3, 3, 2, dtype=up_w.dtype, device=up_w.device)
        for i in range(2):
            for d in range(3):
                o, p = divmod(i + d - 1, 2)
                route[i, d, o + 1, p] = 1.0
        folded = torch.einsum("kmab,cmpq,iayp,jbxq->kijcyx", conv_w, up_w, route, route)
        self.weight = nn.Parameter(folded.reshape(c_out * 4, c_in, 3, 3).contiguous(), requires_grad=False)
        up_bias = up.bias.detach().clone() if up.bias is not None else torch.zeros(up_w.shape[1])
        self.register_buffer("up_bias", up_bias)
        self.conv = conv
        self._bias_map: tuple[tuple, torch.Tensor] | None = None

    def bias_map(self, h: int, w: int, like: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """The biases' contribution (1, c_out, h, w) to an output of ``h`` x ``w`` pixels (cached per size,
        device, dtype and memory format)."""
        key = (h, w, like.device, like.dtype, channels_last)
        if self._bias_map is None or self._bias_map[0] != key:
            plane = self.up_bias.to(like.device)[None, :, None, None].expand(1, -1, h, w).contiguous()
            bias = self.conv(plane).to(like.dtype)
            if channels_last:
                bias = bias.contiguous(memory_format=torch.channels_last)
            self._bias_map = (key, bias)
        return self._bias_map[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.weight.to(x.dtype), None, padding=1)  # (n, 4c, h, w), channel = c * 4 + i * 2 + j
        n, c4, h, w = y.shape
        c = c4 // 4
        if not (y.is_cuda and y.is_contiguous(memory_format=torch.channels_last)):
            return F.pixel_shuffle(y, 2) + self.bias_map(2 * h, 2 * w, y)
        # Channels-last on a GPU: shuffle and add the biases in one pass that reads each pixel's channels
        # together and writes a channels-last output (pixel_shuffle's generic copy is ~2x slower on large frames).
        source = y.permute(0, 2, 3, 1).view(n, h, w, c, 2, 2).permute(0, 1, 4, 2, 5, 3)  # (n, h, i, w, j, c)
        bias = self.bias_map(2 * h, 2 * w, y, channels_last=True).permute(0, 2, 3, 1).view(1, h, 2, w, 2, c)
        out = torch.empty((n, 2 * h, 2 * w, c), dtype=y.dtype, device=y.device)
        torch.add(source, bias, out=out.view(n, h, 2, w, 2, c))
        return out.permute(0, 3, 1, 2)


def fold_decoder(decoder: nn.Sequential) -> nn.Sequential:
    """The decoder with every (2x2 transposed conv, 3x3 conv) pair replaced by a :class:`FoldedUpConv`."""
    layers = list(decoder)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if (
            isinstance(layer, nn.ConvTranspose2d) and tuple(layer.kernel_size) == (2, 2)
            and tuple(layer.stride) == (2, 2) and isinstance(nxt, nn.Conv2d)
            and tuple(nxt.kernel_size) == (3, 3) and tuple(nxt.padding) == (1, 1) and nxt.groups == 1
        ):
            out.append(FoldedUpConv(layer, nxt))
            i += 2
        else:
            out.append(layer)
            i += 1
    return nn.Sequential(*out)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the last two axes of ``x`` up to a multiple; return the padded tensor and the original (H, W).

    Falls back to replicate padding where the image is too small for reflection.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the last two axes back to ``size`` (undo :func:`pad_to_multiple`)."""
    return x[..., : size[0], : size[1]]


def build_network(network: str = "divnoising", depth: int = 2, start_filters: int = 32, z_dim: int = 64) -> nn.Module:
    """A new network from the training settings.

    ``"divnoising"``: :class:`DivNoisingVAE` (``depth`` down-sampling levels, ``z_dim`` latent channels).
    ``"hierarchical"``: :class:`~napari_divnoising.hierarchical_network.HierarchicalVAE` with ``depth`` latent
    levels of ``z_dim`` channels each, ``start_filters`` channels at full resolution and twice as many elsewhere.
    """
    if network == "divnoising":
        return DivNoisingVAE(depth=depth, start_filters=start_filters, z_dim=z_dim)
    if network == "hierarchical":
        return HierarchicalVAE(levels=depth, start_filters=start_filters, z_dim=z_dim)
    raise ValueError(f"unknown network type {network!r}; known: divnoising, hierarchical")
