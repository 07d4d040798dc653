"""ResNet block with a time embedding, and the U-Net's down/up-sampling layers.

Letters: B batch, C_in / C_out channels, H×W image, E time-embedding width.

``ResnetBlock2D`` is the residual unit of Ho et al. (2020, Appendix B), a
pre-activation ResNet block (He et al. 2016b) with GroupNorm (Wu & He 2018)
and the timestep injected between its two convolutions. With τ = act(temb) W_tᵀ + b_t:

    h = conv1(act(norm1(x)))
    "default":      h = norm2(h + τ)                       (τ broadcast over H, W)
    "scale_shift":  h = norm2(h) · (1 + τ_scale) + τ_shift  (τ = [τ_scale, τ_shift];
                                                           Dhariwal & Nichol 2021, "AdaGN")
    h = conv2(dropout(act(h)))
    out = (shortcut(x) + h) / output_scale_factor

where shortcut is a 1×1 convolution when C_in ≠ C_out and the identity otherwise.
"""

from __future__ import annotations

from .. import nn
from ..autograd import pad
from ..nn import functional as F
from .embeddings import get_activation


class ResnetBlock2D(nn.Module):
    """(B, C_in, H, W), (B, E) -> (B, C_out, H, W). Keys as diffusers: norm1, conv1,
    time_emb_proj, norm2, conv2, conv_shortcut (only when C_in ≠ C_out)."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 temb_channels: int | None = 512, groups: int = 32, groups_out: int | None = None, eps: float = 1e-6,
                 non_linearity: str = "swish", time_embedding_norm: str = "default", output_scale_factor: float = 1.0):
        super().__init__()
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"time_embedding_norm={time_embedding_norm!r} is not supported; "
                             "choose 'default' or 'scale_shift'")
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.time_embedding_norm = time_embedding_norm
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels is None:
            self.time_emb_proj = None
        else:
            width = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
            self.time_emb_proj = nn.Linear(temb_channels, width)
        self.norm2 = nn.GroupNorm(groups if groups_out is None else groups_out, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(non_linearity)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, input_tensor, temb=None):
        act = self.nonlinearity
        h = self.conv1(nn.norm_act(self.norm1, act, input_tensor))
        tau = None
        if self.time_emb_proj is not None and temb is not None:
            B = temb.shape[0]
            tau = self.time_emb_proj(act(temb))
            tau = tau.reshape(B, tau.shape[1], 1, 1)  # (B, C_out or 2·C_out, 1, 1)
        if self.time_embedding_norm == "scale_shift":
            if tau is None:
                raise ValueError("ResnetBlock2D with time_embedding_norm='scale_shift' needs a time embedding")
            scale, shift = tau.chunk(2, dim=1)  # each (B, C_out, 1, 1)
            h = act(self.norm2(h) * (scale + 1.0) + shift)
        else:
            h = nn.norm_act(self.norm2, act, h + tau if tau is not None else h)  # one fused kernel for GroupNorm + SiLU
        h = self.conv2(self.dropout(h))
        x = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Module):
    """Halve H and W with a stride-2 3×3 convolution (``conv``).

    ``padding=0`` pads one zero row/column at the bottom/right first (diffusers'
    convention); for even H, W both paddings give H/2 × W/2.
    Only the convolutional form (``use_conv=True``) that the U-Net uses is built.
    """

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None, padding: int = 1,
                 name: str = "op"):
        super().__init__()
        if not use_conv or name != "op":
            raise ValueError(f"Downsample2D: only use_conv=True, name='op' (the U-Net's form) is supported, "
                             f"got use_conv={use_conv}, name={name!r}")
        self.channels = channels
        self.padding = padding
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, hidden_states):
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"Downsample2D expects {self.channels} channels, got input shape {hidden_states.shape}")
        if self.padding == 0:
            hidden_states = pad(hidden_states, ((0, 0), (0, 0), (0, 1), (0, 1)))  # (B, C, H+1, W+1)
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    """Double H and W: nearest-neighbour interpolation, then a 3×3 convolution (``conv``)."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None, name: str = "conv"):
        super().__init__()
        if not use_conv or name != "conv":
            raise ValueError(f"Upsample2D: only use_conv=True, name='conv' (the U-Net's form) is supported, "
                             f"got use_conv={use_conv}, name={name!r}")
        self.channels = channels
        self.conv = nn.Conv2d(channels, out_channels or channels, kernel_size=3, padding=1)

    def forward(self, hidden_states):
        if hidden_states.shape[1] != self.channels:
            raise ValueError(f"Upsample2D expects {self.channels} channels, got input shape {hidden_states.shape}")
        return self.conv(F.interpolate(hidden_states, scale_factor=2, mode="nearest"))
