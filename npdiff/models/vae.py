"""The VAE's encoder, decoder and posterior (diffusers' ``Encoder``, ``Decoder``,
``DownEncoderBlock2D``, ``UpDecoderBlock2D`` and ``DiagonalGaussianDistribution``).

Letters: B batch, C_k = block_out_channels[k], K levels, c latent channels,
f = 2^(K−1) the downsampling factor, H×W image, h×w = H/f × W/f latent.

    Encoder  x (B, C_in, H, W) → conv_in → K down blocks (ResNets, then a stride-2
             3×3 conv on a bottom/right zero-padded map, all but the last)
             → mid block (ResNet, single-head self-attention, ResNet)
             → GroupNorm, SiLU, conv_out → (B, 2c, h, w) = [μ, log σ²]
    Decoder  z (B, c, h, w) → conv_in → mid block → K up blocks (ResNets, then
             nearest ×2 + 3×3 conv, all but the last) → GroupNorm, SiLU, conv_out
             → (B, C_out, H, W)

No block takes a time embedding (``temb_channels=None``); there are no skip
connections between encoder and decoder. The posterior q(z|x) = N(μ, diag σ²)
(Kingma & Welling 2014, §3 and Appendix B) is ``DiagonalGaussianDistribution``.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend, nn
from ..autograd import Tensor
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .unet_blocks import UNetMidBlock2D

VAE_EPS = 1e-6  # diffusers hard-codes this GroupNorm eps in the VAE (not the config's)


def _resnets(in_channels, out_channels, num_layers, eps, groups, dropout, act_fn) -> nn.ModuleList:
    """``num_layers`` ResNet blocks without time embedding; the first maps C_in -> C_out."""
    return nn.ModuleList([
        ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                      temb_channels=None, eps=eps, groups=groups, dropout=dropout, non_linearity=act_fn)
        for i in range(num_layers)])


class DownEncoderBlock2D(nn.Module):
    """``num_layers`` ResNet blocks without time embedding, then an optional stride-2
    conv: (B, C_in, H, W) -> (B, C_out, H/2, W/2) (H, W when ``add_downsample`` is off)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_layers, resnet_eps, resnet_groups, dropout,
                                resnet_act_fn)
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, out_channels=out_channels,
                                                         padding=downsample_padding)])
                             if add_downsample else None)

    def forward(self, hidden_states):
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
        return hidden_states


class UpDecoderBlock2D(nn.Module):
    """``num_layers`` ResNet blocks without time embedding or skips, then an optional
    nearest ×2 upsampling + 3×3 conv: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 add_upsample: bool = True):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, num_layers, resnet_eps, resnet_groups, dropout,
                                resnet_act_fn)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels=out_channels)]) if add_upsample else None

    def forward(self, hidden_states):
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


def _mid_block(channels: int, act_fn: str, groups: int, add_attention: bool) -> UNetMidBlock2D:
    # one attention head as wide as the block (attention_head_dim = C), as diffusers builds it
    return UNetMidBlock2D(in_channels=channels, temb_channels=None, resnet_eps=VAE_EPS, resnet_act_fn=act_fn,
                          resnet_groups=groups, attention_head_dim=channels, add_attention=add_attention)


class Encoder(nn.Module):
    """x (B, C_in, H, W) -> (B, 2c, h, w) with ``double_z`` (mean and log-variance), else (B, c, h, w)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types=("DownEncoderBlock2D",),
                 block_out_channels=(64,), layers_per_block: int = 2, norm_num_groups: int = 32,
                 act_fn: str = "silu", double_z: bool = True, mid_block_add_attention: bool = True):
        super().__init__()
        C = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, C[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList([
            DownEncoderBlock2D(C[max(k - 1, 0)], C[k], num_layers=layers_per_block, resnet_eps=VAE_EPS,
                               resnet_act_fn=act_fn, resnet_groups=norm_num_groups, add_downsample=k < len(C) - 1,
                               downsample_padding=0)  # 0: pad bottom/right by one, then a stride-2 3×3 conv
            for k in range(len(down_block_types))])
        self.mid_block = _mid_block(C[-1], act_fn, norm_num_groups, mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, C[-1], eps=VAE_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(C[-1], 2 * out_channels if double_z else out_channels, kernel_size=3, padding=1)

    def forward(self, sample):
        h = self.conv_in(sample)  # (B, C_0, H, W)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)  # (B, C_{K-1}, h, w)
        return self.conv_out(nn.norm_act(self.conv_norm_out, self.conv_act, h))


class Decoder(nn.Module):
    """z (B, c, h, w) -> (B, C_out, H, W); the channel list runs backwards from C_{K-1} to C_0."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, up_block_types=("UpDecoderBlock2D",),
                 block_out_channels=(64,), layers_per_block: int = 2, norm_num_groups: int = 32,
                 act_fn: str = "silu", mid_block_add_attention: bool = True):
        super().__init__()
        rev = list(block_out_channels)[::-1]
        self.conv_in = nn.Conv2d(in_channels, rev[0], kernel_size=3, stride=1, padding=1)
        # registered before mid_block, as in diffusers, so the parameter order matches
        self.up_blocks = nn.ModuleList([
            UpDecoderBlock2D(rev[max(i - 1, 0)], rev[i], num_layers=layers_per_block + 1, resnet_eps=VAE_EPS,
                             resnet_act_fn=act_fn, resnet_groups=norm_num_groups, add_upsample=i < len(rev) - 1)
            for i in range(len(up_block_types))])
        self.mid_block = _mid_block(rev[0], act_fn, norm_num_groups, mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, rev[-1], eps=VAE_EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(rev[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, sample):
        h = self.mid_block(self.conv_in(sample))  # (B, C_{K-1}, h, w)
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(nn.norm_act(self.conv_norm_out, self.conv_act, h))  # (B, C_out, H, W)


class DiagonalGaussianDistribution:
    """The VAE posterior q(z|x) = N(μ, diag σ²) from the encoder's (B, 2c, h, w) output.

    ``parameters`` is split along channels into ``mean`` (first c) and ``logvar``
    (last c, clamped to [−30, 20] so that exp never overflows or underflows in
    float32); ``std = exp(logvar / 2)``, ``var = exp(logvar)``. All are Tensors on
    the tape, so gradients flow from a loss to the encoder through every method.
    ``deterministic=True`` makes std = var = 0 (sample() = mode(), kl = nll = 0).

    Kingma & Welling (2014): sampling by the reparameterisation z = μ + σ ⊙ ε,
    ε ~ N(0, I) (§2.4), and the closed-form KL to N(0, I) (Appendix B).
    """

    def __init__(self, parameters, deterministic: bool = False):
        p = parameters if isinstance(parameters, Tensor) else Tensor(parameters)
        if p.ndim < 2 or p.shape[1] % 2:
            raise ValueError(f"DiagonalGaussianDistribution: parameters need an even channel count on dim 1 "
                             f"([mean, logvar]), got shape {p.shape}")
        self.parameters = p
        self.deterministic = deterministic
        self.mean, logvar = p.chunk(2, dim=1)  # each (B, c, h, w)
        self.logvar = logvar.clip(-30.0, 20.0)
        self.std = (self.logvar * 0.5).exp()
        self.var = self.logvar.exp()
        if deterministic:
            zeros = backend.get_array_module(p.data).zeros(self.mean.shape, dtype=p.dtype)
            self.std = self.var = Tensor(zeros)

    def sample(self, generator: np.random.Generator | None = None) -> Tensor:
        """z = μ + σ ⊙ ε with ε = ``generator.standard_normal`` (npdiff's global generator if None).

        ∂z/∂μ = 1 and ∂z/∂logσ² = σ ε / 2 = (z − μ)/2, so the gradient reaches the encoder."""
        gen = backend.default_generator() if generator is None else generator
        eps = gen.standard_normal(self.mean.shape).astype(self.mean.dtype, copy=False)
        xp = backend.get_array_module(self.mean.data)
        return self.mean + self.std * Tensor(xp.asarray(eps))

    def mode(self) -> Tensor:
        return self.mean

    def _zero(self) -> Tensor:
        return Tensor(backend.get_array_module(self.mean.data).zeros((1,), dtype=self.mean.dtype))

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> Tensor:
        """KL(self ‖ other) summed over (c, h, w), shape (B,); ``other=None`` is N(0, I).

            KL(N(μ, σ²) ‖ N(0, 1))     = ½ (μ² + σ² − 1 − log σ²)
            KL(N(μ, σ²) ‖ N(m, s²))    = ½ ((μ − m)²/s² + σ²/s² − 1 − log σ² + log s²)
        """
        if self.deterministic:
            return self._zero()
        if other is None:
            terms = self.mean * self.mean + self.var - 1.0 - self.logvar
        else:
            d = self.mean - other.mean
            terms = d * d / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
        return terms.sum(axis=(1, 2, 3)) * 0.5

    def nll(self, sample, dims=(1, 2, 3)) -> Tensor:
        """−log q(sample) summed over ``dims``: ½ Σ (log 2π + log σ² + (sample − μ)²/σ²)."""
        if self.deterministic:
            return self._zero()
        d = sample - self.mean
        return (self.logvar + d * d / self.var + math.log(2.0 * math.pi)).sum(axis=tuple(dims)) * 0.5
