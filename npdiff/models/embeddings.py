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


class LabelEmbedding(nn.Module):
    """Class labels -> vectors (diffusers' ``LabelEmbedding``), key ``embedding_table``.

    The table has ``num_classes + 1`` rows when ``dropout_prob > 0``: the last row
    (index ``num_classes``) is the null class ∅ of classifier-free guidance (Ho &
    Salimans 2022, §3.2). Diffusers also replaces labels by ∅ at random in training
    mode; npdiff leaves that to the trainer's label dropout (one place for the
    concept), so here labels are only dropped where ``force_drop_ids`` is 1."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels, force_drop_ids=None):
        y = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"class_labels must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
        if force_drop_ids is not None:
            y = np.where(np.asarray(force_drop_ids) == 1, self.num_classes, y)
        rows = self.embedding_table.num_embeddings
        if y.size and (y.min() < 0 or y.max() >= rows):
            raise ValueError(f"class_labels must lie in [0, {rows - 1}] (index {self.num_classes} is the null "
                             f"class), got values in [{y.min()}, {y.max()}]")
        return self.embedding_table(y)


class CombinedTimestepLabelEmbeddings(nn.Module):
    """DiT's conditioning vector c = MLP(sinusoidal code of t) + embedding of y (Peebles &
    Xie 2023, §3.2): (B,) timesteps, (B,) labels -> (B, E). The code is 256 wide, cos
    first, s = 1; keys ``timestep_embedder.linear_{1,2}``, ``class_embedder.embedding_table``."""

    def __init__(self, num_classes: int, embedding_dim: int, class_dropout_prob: float = 0.1):
        super().__init__()
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=1)
        self.timestep_embedder = TimestepEmbedding(in_channels=256, time_embed_dim=embedding_dim)
        self.class_embedder = LabelEmbedding(num_classes, embedding_dim, class_dropout_prob)

    def forward(self, timestep, class_labels, hidden_dtype=None):
        code = self.time_proj(timestep)  # (B, 256), float32 as diffusers computes it
        if hidden_dtype is not None:
            code = code.astype(hidden_dtype)
        return self.timestep_embedder(code) + self.class_embedder(class_labels)  # (B, E)
