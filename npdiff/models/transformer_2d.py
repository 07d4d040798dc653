"""``Transformer2DModel``: the spatial transformer of Stable Diffusion's U-Net (continuous input).

Letters: B batch, C channels, H×W image, L = H·W tokens, D = inner width
(num_attention_heads · attention_head_dim), Lk text tokens.

Rombach et al. (2022, §3.3 and App. E) condition the U-Net on text by inserting,
after each ResNet block, a transformer that treats every pixel as a token and
cross-attends to the text encoder's hidden states:

    h = GroupNorm(x)                                       (B, C, H, W), eps 1e-6
    h = proj_in(h)  -> tokens                              (B, L, D)   (1×1 conv, or
                                                             Linear when use_linear_projection)
    h = BasicTransformerBlock(h, text) × num_layers        (B, L, D)
    out = proj_out(h) -> image  +  x                       (B, C, H, W)

Only the continuous-input form (``in_channels`` given, no ``patch_size`` /
``num_vector_embeds``) is built; the others are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import nn
from ..autograd import Tensor
from .attention import BasicTransformerBlock
from .modeling_utils import ModelMixin, register_to_config


@dataclass
class Transformer2DModelOutput:
    sample: Tensor


def mask_to_bias(mask, dtype):
    """A keep-mask (B, Lk) (1/True = attend) -> diffusers' additive bias (B, 1, Lk):
    0 where kept, −10000 where dropped. An array already 3-D is taken to be a bias."""
    m = mask.data if isinstance(mask, Tensor) else mask
    if m.ndim == 3:
        return m.astype(dtype, copy=False)
    if m.ndim != 2:
        raise ValueError(f"attention mask must be a keep-mask (B, Lk) or a bias (B, 1, Lk), got shape {m.shape}")
    return ((1 - m.astype(dtype)) * dtype.type(-10000.0))[:, None, :]  # (B, 1, Lk)


class Transformer2DModel(ModelMixin):
    """Diffusers' ``Transformer2DModel`` for continuous (B, C, H, W) input.

    Keys: norm, proj_in, transformer_blocks.{i}, proj_out. ``attention_head_dim``
    here really is the width of one head (the U-Net passes heads and width)."""

    @register_to_config
    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88, in_channels: int | None = None,
                 out_channels: int | None = None, num_layers: int = 1, dropout: float = 0.0, norm_num_groups: int = 32,
                 cross_attention_dim: int | None = None, attention_bias: bool = False, sample_size: int | None = None,
                 num_vector_embeds: int | None = None, patch_size: int | None = None, activation_fn: str = "geglu",
                 num_embeds_ada_norm: int | None = None, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, double_self_attention: bool = False,
                 upcast_attention: bool = False, norm_type: str = "layer_norm", norm_elementwise_affine: bool = True,
                 norm_eps: float = 1e-5, attention_type: str = "default"):
        super().__init__()
        for key, value in (("num_vector_embeds", num_vector_embeds), ("patch_size", patch_size),
                           ("num_embeds_ada_norm", num_embeds_ada_norm)):
            if value is not None:
                raise ValueError(f"Transformer2DModel: {key}={value!r} is not supported (continuous input only)")
        if in_channels is None:
            raise ValueError("Transformer2DModel: in_channels is required (continuous input)")
        out_channels = in_channels if out_channels is None else out_channels
        if out_channels != in_channels:
            raise ValueError(f"Transformer2DModel: out_channels={out_channels} must equal in_channels={in_channels} "
                             "(the block adds its input back)")
        self.use_linear_projection = use_linear_projection
        D = num_attention_heads * attention_head_dim
        self.inner_dim = D
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, D) if use_linear_projection else nn.Conv2d(in_channels, D, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(D, num_attention_heads, attention_head_dim, dropout=dropout,
                                  cross_attention_dim=cross_attention_dim, activation_fn=activation_fn,
                                  attention_bias=attention_bias, only_cross_attention=only_cross_attention,
                                  double_self_attention=double_self_attention, upcast_attention=upcast_attention,
                                  norm_type=norm_type, norm_elementwise_affine=norm_elementwise_affine,
                                  norm_eps=norm_eps, attention_type=attention_type)
            for _ in range(num_layers)])
        self.proj_out = nn.Linear(D, in_channels) if use_linear_projection else nn.Conv2d(D, in_channels, kernel_size=1)

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, encoder_attention_mask=None,
                return_dict: bool = False):
        """(B, C, H, W), text (B, Lk, C_text) -> (B, C, H, W). Masks: keep-masks (B, Lk) or
        additive biases (B, 1, Lk), as diffusers takes them."""
        x = hidden_states if isinstance(hidden_states, Tensor) else Tensor(hidden_states)
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"Transformer2DModel: hidden_states must be (B, {self.config.in_channels}, H, W), "
                             f"got {x.shape}")
        B, C, H, W = x.shape
        dtype = x.dtype
        if attention_mask is not None:
            attention_mask = mask_to_bias(attention_mask, dtype)
        if encoder_attention_mask is not None:
            encoder_attention_mask = mask_to_bias(encoder_attention_mask, dtype)
        D = self.inner_dim
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(B, H * W, C))  # (B, L, D)
        else:
            h = self.proj_in(h).permute(0, 2, 3, 1).reshape(B, H * W, D)  # (B, L, D)
        for block in self.transformer_blocks:
            h = block(h, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                      encoder_attention_mask=encoder_attention_mask)
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W)
        else:
            h = self.proj_out(h.reshape(B, H, W, D).permute(0, 3, 1, 2))  # (B, C, H, W)
        out = h + x
        return Transformer2DModelOutput(sample=out) if return_dict else out
