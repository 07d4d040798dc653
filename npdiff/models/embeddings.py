"""Timestep embeddings: the sinusoidal code of t and the MLP that lifts it.

Letters: B batch, D = ``num_channels`` (width of the sinusoidal code), h = D // 2,
E = ``time_embed_dim`` (width of the embedding fed to every ResNet block).

Ho et al. (2020, §4 and Appendix B) feed the timestep to the U-Net as the
Transformer's sinusoidal position code (Vaswani et al. 2017, §3.5), followed by a
two-layer MLP. With frequencies

    ω_j = exp(−ln(max_period) · j / (h − s)),   j = 0 … h−1,   s = downscale_freq_shift

the code of a (possibly fractional) timestep t is

    emb(t) = [sin(t·ω_0) … sin(t·ω_{h−1}), cos(t·ω_0) … cos(t·ω_{h−1})]

and ``flip_sin_to_cos`` swaps the two halves (cos first). s = 1 is the
original tensor2tensor spacing (the last frequency is exactly 1/max_period);
diffusers' UNet2DModel passes ``freq_shift`` (default 0) as s.
"""

from __future__ import annotations

import math

import numpy as np

from .. import nn
from ..autograd import Tensor
from ..backend import get_array_module


def get_timestep_embedding(timesteps, embedding_dim: int, flip_sin_to_cos: bool = False,
                           downscale_freq_shift: float = 1, scale: float = 1, max_period: int = 10000):
    """Sinusoidal code of a 1-D array of timesteps, as a plain float32 array.

    Shapes: timesteps (B,) -> (B, embedding_dim). An odd ``embedding_dim`` gets one
    zero column at the end. Computed in float32 exactly as diffusers does (the
    frequencies too), so a diffusers checkpoint sees the same inputs to the bit.
    """
    xp = get_array_module(timesteps)
    t = xp.asarray(timesteps)
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D array, got shape {t.shape}")
    half = embedding_dim // 2
    exponent = (-math.log(max_period) * xp.arange(half, dtype=xp.float32)) / np.float32(half - downscale_freq_shift)
    freqs = xp.exp(exponent.astype(xp.float32))  # ω_j, (h,)
    args = np.float32(scale) * (t.astype(xp.float32)[:, None] * freqs[None, :])  # t·ω_j, (B, h)
    emb = xp.concatenate([xp.sin(args), xp.cos(args)], axis=-1)  # (B, 2h)
    if flip_sin_to_cos:
        emb = xp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)  # cos first
    if embedding_dim % 2 == 1:
        emb = xp.pad(emb, ((0, 0), (0, 1)))  # (B, D)
    return emb.astype(xp.float32)


class Timesteps(nn.Module):
    """The sinusoidal code as a module (no parameters): (B,) timesteps -> (B, D) Tensor.

    The result is a constant (the tape does not reach back into t)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: int = 1):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps):
        t = timesteps.data if isinstance(timesteps, Tensor) else timesteps
        return Tensor(get_timestep_embedding(t, self.num_channels, self.flip_sin_to_cos,
                                             self.downscale_freq_shift, self.scale))

    def extra_repr(self):
        return f"num_channels={self.num_channels}, flip_sin_to_cos={self.flip_sin_to_cos}, shift={self.downscale_freq_shift}"


def get_activation(act_fn: str) -> nn.Module:
    """An activation module from its diffusers name ("silu" = "swish", "gelu", "relu")."""
    table = {"silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}
    key = act_fn.lower() if isinstance(act_fn, str) else act_fn
    if key not in table:
        raise ValueError(f"act_fn={act_fn!r} is not supported; choose one of {sorted(table)}")
    return table[key]()


class TimestepEmbedding(nn.Module):
    """The MLP on the sinusoidal code: linear_1 -> act -> linear_2, (B, D) -> (B, E).

    Key names follow diffusers (``linear_1``, ``linear_2``); ``act`` has no parameters.
    """

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu", out_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim)

    def forward(self, sample):
        return self.linear_2(self.act(self.linear_1(sample)))
