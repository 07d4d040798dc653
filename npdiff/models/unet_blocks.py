"""The down, mid and up blocks of the diffusion U-Net (diffusers' names and keys).

A down block runs ``num_layers`` ResNet blocks (each optionally followed by
self-attention) at one resolution, then halves the resolution; it returns every
intermediate map as a skip connection. An up block consumes the same number of
skips plus one (the down block's downsampled output), concatenating one skip to
its input before each ResNet block, then doubles the resolution. The mid block
is ResNet → attention → ResNet at the lowest resolution.

The cross-attention variants (``CrossAttnDownBlock2D``, ``UNetMidBlock2DCrossAttn``,
``CrossAttnUpBlock2D``; Stable Diffusion's U-Net) put a ``Transformer2DModel`` after
each ResNet block instead of the spatial self-attention: the image tokens attend to
themselves and to the text (``encoder_hidden_states``, (B, Lk, cross_attention_dim)).
Their ``num_attention_heads`` is the number of heads; the head width is
``out_channels // num_attention_heads``.

Letters: B batch, C channels, H×W image, E time-embedding width.
"""

from __future__ import annotations

from .. import nn
from ..autograd import cat
from .attention import Attention
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .transformer_2d import Transformer2DModel


def _resnet(*, in_channels, out_channels, temb_channels, eps, groups, dropout, act_fn, time_scale_shift,
            output_scale_factor=1.0):
    """A block's ResnetBlock2D, from the block's argument names (keywords only: nine of them)."""
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels, eps=eps,
                         groups=groups, dropout=dropout, non_linearity=act_fn, time_embedding_norm=time_scale_shift,
                         output_scale_factor=output_scale_factor)


def _attention(channels, head_dim, eps, groups, output_scale_factor=1.0):
    head_dim = channels if head_dim is None else head_dim  # None: one head as wide as the block
    return Attention(channels, heads=channels // head_dim, dim_head=head_dim, rescale_output_factor=output_scale_factor,
                     eps=eps, norm_num_groups=groups, residual_connection=True, bias=True,
                     _from_deprecated_attn_block=True)


class DownBlock2D(nn.Module):
    """``num_layers`` ResNet blocks, then an optional stride-2 convolution.

    (B, C_in, H, W) -> (B, C_out, H/2, W/2) and a tuple of ``num_layers`` (+1 if
    downsampling) skip maps."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, add_downsample: bool = True,
                 downsample_padding: int = 1):
        super().__init__()
        self.resnets = nn.ModuleList([
            _resnet(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                    temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                    act_fn=resnet_act_fn, time_scale_shift=resnet_time_scale_shift)
            for i in range(num_layers)])
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, out_channels=out_channels,
                                                         padding=downsample_padding)])
                             if add_downsample else None)

    def _layer(self, i, hidden_states, temb):
        return self.resnets[i](hidden_states, temb)

    def forward(self, hidden_states, temb=None, **cross):
        """``cross``: ``encoder_hidden_states`` / ``encoder_attention_mask`` for the
        cross-attention variant (passed on to each layer)."""
        skips = ()
        for i in range(len(self.resnets)):
            hidden_states = self._layer(i, hidden_states, temb, **cross)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class AttnDownBlock2D(DownBlock2D):
    """As ``DownBlock2D`` with self-attention after every ResNet block."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, attention_head_dim: int | None = 1,
                 add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__(in_channels, out_channels, temb_channels, dropout, num_layers, resnet_eps,
                         resnet_time_scale_shift, resnet_act_fn, resnet_groups, add_downsample, downsample_padding)
        self.attentions = nn.ModuleList([_attention(out_channels, attention_head_dim, resnet_eps, resnet_groups)
                                         for _ in range(num_layers)])
        self._modules.move_to_end("attentions", last=False)  # diffusers' parameter order: attentions first

    def _layer(self, i, hidden_states, temb):
        return self.attentions[i](self.resnets[i](hidden_states, temb))


class UNetMidBlock2D(nn.Module):
    """ResNet, then ``num_layers`` × (attention, ResNet), at constant shape (B, C, H, W).

    ``attn_groups`` None means: GroupNorm in the attention with ``resnet_groups``
    groups for "default" time conditioning, none for "scale_shift" (diffusers' rule).
    ``add_attention=False`` keeps the ResNets only (``attentions`` holds Nones)."""

    def __init__(self, in_channels: int, temb_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, attn_groups: int | None = None, add_attention: bool = True,
                 attention_head_dim: int | None = 1, output_scale_factor: float = 1.0):
        super().__init__()
        if attn_groups is None:
            attn_groups = resnet_groups if resnet_time_scale_shift == "default" else None
        self.add_attention = add_attention
        self.attentions = nn.ModuleList([
            _attention(in_channels, attention_head_dim, resnet_eps, attn_groups, output_scale_factor)
            if add_attention else None for _ in range(num_layers)])
        self.resnets = nn.ModuleList([
            _resnet(in_channels=in_channels, out_channels=in_channels, temb_channels=temb_channels, eps=resnet_eps,
                    groups=resnet_groups, dropout=dropout, act_fn=resnet_act_fn,
                    time_scale_shift=resnet_time_scale_shift, output_scale_factor=output_scale_factor)
            for _ in range(num_layers + 1)])

    def forward(self, hidden_states, temb=None):
        hidden_states = self.resnets[0](hidden_states, temb)
        for i in range(len(self.resnets) - 1):
            attn = self.attentions[i]
            if attn is not None:
                hidden_states = attn(hidden_states)
            hidden_states = self.resnets[i + 1](hidden_states, temb)
        return hidden_states


class UpBlock2D(nn.Module):
    """``num_layers`` ResNet blocks, each on [input, skip] concatenated along C, then
    an optional nearest ×2 upsampling + 3×3 convolution.

    ``prev_output_channel``: channels coming from below; ``in_channels``: channels
    of the last skip (from the next-shallower down block); earlier skips have
    ``out_channels``."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 dropout: float = 0.0, num_layers: int = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 add_upsample: bool = True):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            below_channels = prev_output_channel if i == 0 else out_channels
            resnets.append(_resnet(in_channels=below_channels + skip_channels, out_channels=out_channels,
                                   temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                                   act_fn=resnet_act_fn, time_scale_shift=resnet_time_scale_shift))
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels, out_channels=out_channels)]) if add_upsample else None

    def _step(self, i, hidden_states, skips, temb):
        hidden_states = cat([hidden_states, skips[-1 - i]], dim=1)  # (B, C_below + C_skip, H, W)
        return self.resnets[i](hidden_states, temb)

    def forward(self, hidden_states, res_hidden_states_tuple, temb=None, **cross):
        """``cross``: ``encoder_hidden_states`` / ``encoder_attention_mask`` for the
        cross-attention variant (passed on to each step)."""
        for i in range(len(self.resnets)):
            hidden_states = self._step(i, hidden_states, res_hidden_states_tuple, temb, **cross)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states)
        return hidden_states


class AttnUpBlock2D(UpBlock2D):
    """As ``UpBlock2D`` with self-attention after every ResNet block."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 dropout: float = 0.0, num_layers: int = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 attention_head_dim: int | None = 1, add_upsample: bool = True):
        super().__init__(in_channels, prev_output_channel, out_channels, temb_channels, dropout, num_layers,
                         resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, add_upsample)
        self.attentions = nn.ModuleList([_attention(out_channels, attention_head_dim, resnet_eps, resnet_groups)
                                         for _ in range(num_layers)])
        self._modules.move_to_end("attentions", last=False)  # diffusers' parameter order: attentions first

    def _step(self, i, hidden_states, skips, temb):
        return self.attentions[i](UpBlock2D._step(self, i, hidden_states, skips, temb))


def per_entry(value, n: int, what: str, entries: str = "layer") -> list:
    """One scalar (None, bool, int, float) for all ``n`` entries, or a list of exactly ``n``."""
    if value is None or isinstance(value, (bool, int, float)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what}: expected one value per {entries} ({n}), got {value}")
    return value


def _attach_transformers(block, channels, num_layers, transformer_layers_per_block, num_attention_heads,
                         cross_attention_dim, groups, use_linear_projection, only_cross_attention, upcast_attention):
    """Give ``block`` its ``attentions``: one Transformer2DModel per layer, registered before
    the ResNets (diffusers' parameter order)."""
    if channels % num_attention_heads:
        raise ValueError(f"attention_head_dim (= number of heads in diffusers' naming) {num_attention_heads} must "
                         f"divide the block's channels {channels}")
    depth = per_entry(transformer_layers_per_block, num_layers, "transformer_layers_per_block")
    block.attentions = nn.ModuleList([
        Transformer2DModel(num_attention_heads, channels // num_attention_heads, in_channels=channels,
                           num_layers=depth[i], cross_attention_dim=cross_attention_dim, norm_num_groups=groups,
                           use_linear_projection=use_linear_projection, only_cross_attention=only_cross_attention,
                           upcast_attention=upcast_attention)
        for i in range(num_layers)])
    block._modules.move_to_end("attentions", last=False)


class CrossAttnDownBlock2D(DownBlock2D):
    """As ``DownBlock2D`` with a ``Transformer2DModel`` after every ResNet block.

    forward(hidden_states, temb, encoder_hidden_states=..., encoder_attention_mask=None):
    the mask is a keep-mask (B, Lk) or diffusers' additive bias (B, 1, Lk)."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, transformer_layers_per_block: int | tuple[int, ...] = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 downsample_padding: int = 1, add_downsample: bool = True, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False):
        super().__init__(in_channels, out_channels, temb_channels, dropout, num_layers, resnet_eps,
                         resnet_time_scale_shift, resnet_act_fn, resnet_groups, add_downsample, downsample_padding)
        _attach_transformers(self, out_channels, num_layers, transformer_layers_per_block, num_attention_heads,
                             cross_attention_dim, resnet_groups, use_linear_projection, only_cross_attention,
                             upcast_attention)

    def _layer(self, i, hidden_states, temb, encoder_hidden_states=None, encoder_attention_mask=None):
        return self.attentions[i](self.resnets[i](hidden_states, temb), encoder_hidden_states,
                                  encoder_attention_mask=encoder_attention_mask)


class UNetMidBlock2DCrossAttn(nn.Module):
    """ResNet, then ``num_layers`` × (Transformer2DModel, ResNet), at constant shape (B, C, H, W)."""

    has_cross_attention = True

    def __init__(self, in_channels: int, temb_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 transformer_layers_per_block: int | tuple[int, ...] = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 num_attention_heads: int = 1, output_scale_factor: float = 1.0, cross_attention_dim: int = 1280,
                 use_linear_projection: bool = False, upcast_attention: bool = False):
        super().__init__()
        _attach_transformers(self, in_channels, num_layers, transformer_layers_per_block, num_attention_heads,
                             cross_attention_dim, resnet_groups, use_linear_projection, False, upcast_attention)
        self.resnets = nn.ModuleList([
            _resnet(in_channels=in_channels, out_channels=in_channels, temb_channels=temb_channels, eps=resnet_eps,
                    groups=resnet_groups, dropout=dropout, act_fn=resnet_act_fn,
                    time_scale_shift=resnet_time_scale_shift, output_scale_factor=output_scale_factor)
            for _ in range(num_layers + 1)])

    def forward(self, hidden_states, temb=None, encoder_hidden_states=None, encoder_attention_mask=None):
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = attn(hidden_states, encoder_hidden_states, encoder_attention_mask=encoder_attention_mask)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


class CrossAttnUpBlock2D(UpBlock2D):
    """As ``UpBlock2D`` with a ``Transformer2DModel`` after every ResNet block."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 dropout: float = 0.0, num_layers: int = 1, transformer_layers_per_block: int | tuple[int, ...] = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 add_upsample: bool = True, use_linear_projection: bool = False, only_cross_attention: bool = False,
                 upcast_attention: bool = False):
        super().__init__(in_channels, prev_output_channel, out_channels, temb_channels, dropout, num_layers,
                         resnet_eps, resnet_time_scale_shift, resnet_act_fn, resnet_groups, add_upsample)
        _attach_transformers(self, out_channels, num_layers, transformer_layers_per_block, num_attention_heads,
                             cross_attention_dim, resnet_groups, use_linear_projection, only_cross_attention,
                             upcast_attention)

    def _step(self, i, hidden_states, skips, temb, encoder_hidden_states=None, encoder_attention_mask=None):
        return self.attentions[i](UpBlock2D._step(self, i, hidden_states, skips, temb), encoder_hidden_states,
                                  encoder_attention_mask=encoder_attention_mask)


DOWN_BLOCKS = {"DownBlock2D": DownBlock2D, "AttnDownBlock2D": AttnDownBlock2D}
UP_BLOCKS = {"UpBlock2D": UpBlock2D, "AttnUpBlock2D": AttnUpBlock2D}
# the blocks of UNet2DConditionModel (Stable Diffusion's U-Net)
CROSS_ATTN_DOWN_BLOCKS = {"DownBlock2D": DownBlock2D, "CrossAttnDownBlock2D": CrossAttnDownBlock2D}
CROSS_ATTN_UP_BLOCKS = {"UpBlock2D": UpBlock2D, "CrossAttnUpBlock2D": CrossAttnUpBlock2D}
