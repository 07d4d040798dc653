"""``UNet2DConditionModel``: Stable Diffusion's text-conditioned U-Net, built as diffusers builds it.

Same constructor arguments, defaults, submodule names and state-dict keys as
diffusers' ``UNet2DConditionModel`` (0.42), so a diffusers folder (e.g. a scaled-down
Stable Diffusion v1 U-Net) loads unchanged and computes the same function.

Letters: B batch, C_k = block_out_channels[k], E time-embedding width (4·C_0 by
default), Lk text tokens, C_text = cross_attention_dim, K number of resolutions.

    emb  = TimestepEmbedding(Timesteps(t)) [+ class embedding]              (B, E)
    h    = conv_in(x)                                                        (B, C_0, H, W)
    down: K blocks; "CrossAttnDownBlock2D" = ResNet → Transformer2DModel per layer,
          each transformer cross-attending to ``encoder_hidden_states`` (B, Lk, C_text);
          every block but the last halves H, W; every intermediate map is a skip
          (+ ``down_block_additional_residuals[i]``: what ControlNet feeds)
    mid:  ResNet → Transformer2DModel → ResNet   (+ ``mid_block_additional_residual``)
    up:   K blocks mirroring the down path, one skip concatenated per ResNet
    out  = conv_out(act(GroupNorm(h)))                                       (B, out_channels, H, W)

Naming trap (diffusers issue #2011): the config key ``attention_head_dim`` is the
NUMBER OF HEADS of each block's transformer, not their width; the width is
``block_out_channels[k] // attention_head_dim[k]``. npdiff keeps diffusers' meaning so
that configs load unchanged; ``num_attention_heads`` (the honest name) is refused,
exactly as diffusers refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import nn
from ..autograd import Tensor, cat
from ..backend import get_array_module
from .embeddings import TimestepEmbedding, Timesteps, get_activation
from .modeling_utils import register_to_config
from .transformer_2d import mask_to_bias
from .unet_2d import UNetBase, _block_type, _refuse
from .unet_blocks import (CROSS_ATTN_DOWN_BLOCKS, CROSS_ATTN_UP_BLOCKS, CrossAttnDownBlock2D, CrossAttnUpBlock2D,
                          UNetMidBlock2D, UNetMidBlock2DCrossAttn, per_entry)

MODEL = "UNet2DConditionModel"


@dataclass
class UNet2DConditionOutput:
    """What ``forward(..., return_dict=True)`` returns (diffusers' return type)."""

    sample: Tensor


def _per_block(value, n: int, key: str) -> list:
    """A config value for every down block (a scalar, or one per block)."""
    return per_entry(value, n, key, entries="down block")


class UNet2DConditionModel(UNetBase):
    """Diffusers' ``UNet2DConditionModel``; see the module docstring for the data flow.

    Built: down blocks "CrossAttnDownBlock2D" / "DownBlock2D", up blocks
    "CrossAttnUpBlock2D" / "UpBlock2D", mid block "UNetMidBlock2DCrossAttn",
    "UNetMidBlock2D" or None; per-block ``layers_per_block``, ``attention_head_dim``
    (number of heads, see the module docstring), ``cross_attention_dim``,
    ``only_cross_attention`` and ``transformer_layers_per_block`` (ints, per block,
    or per layer with ``reverse_transformer_layers_per_block``);
    ``use_linear_projection``; class embeddings (labels, "timestep", "identity",
    ``class_embeddings_concat``); ``time_embedding_dim``, ``time_embedding_act_fn``,
    ``conv_in_kernel`` / ``conv_out_kernel``. ``upcast_attention`` is accepted and has
    no effect (it only changes float16 arithmetic).

    Refused by key name: ``time_embedding_type`` other than "positional",
    ``num_attention_heads``, ``encoder_hid_dim(_type)``, ``addition_embed_type``,
    ``timestep_post_act``, ``time_cond_proj_dim``, ``dual_cross_attention``,
    ``attention_type`` other than "default", ``class_embed_type`` "projection" /
    "simple_projection", ``norm_num_groups=None``. Accepted and unused, as diffusers
    leaves them unused for these block types: ``resnet_skip_time_act``,
    ``resnet_out_scale_factor``, ``cross_attention_norm``,
    ``mid_block_only_cross_attention``, ``addition_time_embed_dim``,
    ``addition_embed_type_num_heads``, ``projection_class_embeddings_input_dim``.

    ``model(sample, timestep, encoder_hidden_states, class_labels=None,
    down_block_additional_residuals=None, mid_block_additional_residual=None,
    encoder_attention_mask=None)`` -> Tensor (B, out_channels, H, W).
    ``encoder_attention_mask``: (B, Lk), 1/True = attend to that text token.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                             "DownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                           "CrossAttnUpBlock2D"),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple = 1,
        reverse_transformer_layers_per_block: tuple | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        # 1. refuse what we do not build, by config key
        for key, value in (("num_attention_heads", num_attention_heads), ("encoder_hid_dim", encoder_hid_dim),
                           ("encoder_hid_dim_type", encoder_hid_dim_type), ("addition_embed_type", addition_embed_type),
                           ("timestep_post_act", timestep_post_act), ("time_cond_proj_dim", time_cond_proj_dim)):
            if value is not None:
                hint = (" (diffusers' attention_head_dim already means the number of heads)"
                        if key == "num_attention_heads" else "")
                raise ValueError(f"{key}={value!r} is not supported by npdiff's {MODEL}; supported: [None]{hint}")
        _refuse("time_embedding_type", time_embedding_type, ("positional",), MODEL)
        _refuse("dual_cross_attention", dual_cross_attention, (False,), MODEL)
        _refuse("attention_type", attention_type, ("default",), MODEL)
        _refuse("class_embed_type", class_embed_type, (None, "timestep", "identity"), MODEL)
        _refuse("mid_block_type", mid_block_type, ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None), MODEL)
        _refuse("resnet_time_scale_shift", resnet_time_scale_shift, ("default", "scale_shift"), MODEL)
        if not isinstance(norm_num_groups, int) or norm_num_groups < 1:
            raise ValueError(f"norm_num_groups must be a positive int for npdiff's {MODEL}, got {norm_num_groups!r}")
        block_out_channels = tuple(block_out_channels)
        K = len(down_block_types)
        if len(up_block_types) != K:
            raise ValueError(f"down_block_types {list(down_block_types)} and up_block_types {list(up_block_types)} "
                             "must have the same length")
        if len(block_out_channels) != K:
            raise ValueError(f"block_out_channels {list(block_out_channels)} and down_block_types "
                             f"{list(down_block_types)} must have the same length")
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block_out_channels entry; "
                             f"{bad} in {list(block_out_channels)} are not divisible")
        heads = _per_block(attention_head_dim, K, "attention_head_dim")  # number of heads (diffusers' naming)
        if not all(isinstance(h, int) and h >= 1 for h in heads):
            raise ValueError(f"attention_head_dim (the number of heads per block, diffusers' naming) must be a "
                             f"positive int or one per block, got {attention_head_dim!r}")
        cross_dim = _per_block(cross_attention_dim, K, "cross_attention_dim")
        layers = _per_block(layers_per_block, K, "layers_per_block")
        depth = _per_block(transformer_layers_per_block, K, "transformer_layers_per_block")
        if any(not isinstance(d, int) for d in depth) and reverse_transformer_layers_per_block is None:
            raise ValueError("transformer_layers_per_block given per layer needs reverse_transformer_layers_per_block "
                             "(the up path's layer counts)")
        only_cross = _per_block(only_cross_attention, K, "only_cross_attention")
        self.sample_size = sample_size

        # 2. input convolution, time and class embeddings
        C0 = block_out_channels[0]
        E = time_embedding_dim or 4 * C0
        self.conv_in = nn.Conv2d(in_channels, C0, kernel_size=conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
        self.time_proj = Timesteps(C0, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(C0, E, act_fn=act_fn)
        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, E)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(C0, E, act_fn=act_fn)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        else:
            self.class_embedding = None
        self.time_embed_act = None if time_embedding_act_fn is None else get_activation(time_embedding_act_fn)
        temb = 2 * E if class_embeddings_concat else E  # what the ResNet blocks receive

        common = dict(temb_channels=temb, dropout=dropout, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, resnet_time_scale_shift=resnet_time_scale_shift)

        def cross(cls, k, only, transformer_depth):
            if cls not in (CrossAttnDownBlock2D, CrossAttnUpBlock2D):
                return {}
            return dict(num_attention_heads=heads[k], cross_attention_dim=cross_dim[k], only_cross_attention=only,
                        transformer_layers_per_block=transformer_depth, use_linear_projection=use_linear_projection,
                        upcast_attention=upcast_attention)

        # 3. down path: block k maps C_{k-1} -> C_k, all but the last halve H, W
        self.down_blocks = nn.ModuleList()
        for k, name in enumerate(down_block_types):
            cls = _block_type(name, CROSS_ATTN_DOWN_BLOCKS, "down_block_types")
            self.down_blocks.append(cls(in_channels=block_out_channels[max(k - 1, 0)], out_channels=block_out_channels[k],
                                        num_layers=layers[k], add_downsample=k < K - 1,
                                        downsample_padding=downsample_padding, **cross(cls, k, only_cross[k], depth[k]),
                                        **common))

        # 4. up path (registered before mid_block, as in diffusers, so parameter order matches)
        self.up_blocks = nn.ModuleList()
        rev = block_out_channels[::-1]
        rev_depth = (list(reverse_transformer_layers_per_block) if reverse_transformer_layers_per_block is not None
                     else depth[::-1])
        for i, name in enumerate(up_block_types):
            cls = _block_type(name, CROSS_ATTN_UP_BLOCKS, "up_block_types")
            k = K - 1 - i  # the down block this up block mirrors
            self.up_blocks.append(cls(in_channels=rev[min(i + 1, K - 1)], prev_output_channel=rev[max(i - 1, 0)],
                                      out_channels=rev[i], num_layers=layers[k] + 1, add_upsample=i < K - 1,
                                      **cross(cls, k, only_cross[k], rev_depth[i]), **common))

        # 5. middle (one transformer layer stack between two ResNets)
        mid_depth = depth[-1]
        if mid_block_type == "UNetMidBlock2DCrossAttn":
            self.mid_block = UNetMidBlock2DCrossAttn(
                in_channels=block_out_channels[-1], output_scale_factor=mid_block_scale_factor,
                num_attention_heads=heads[-1], cross_attention_dim=cross_dim[-1],
                transformer_layers_per_block=mid_depth, use_linear_projection=use_linear_projection,
                upcast_attention=upcast_attention, **common)
        elif mid_block_type == "UNetMidBlock2D":  # diffusers builds it with no attention: one ResNet
            self.mid_block = UNetMidBlock2D(in_channels=block_out_channels[-1], num_layers=0, add_attention=False,
                                            output_scale_factor=mid_block_scale_factor, **common)
        else:
            self.mid_block = None

        # 6. output head
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, C0, eps=norm_eps)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(C0, out_channels, kernel_size=conv_out_kernel, padding=(conv_out_kernel - 1) // 2)

    def _combine_class_embedding(self, emb: Tensor, class_emb: Tensor) -> Tensor:
        if self.config.class_embeddings_concat:
            return cat([emb, class_emb], dim=-1)  # (B, 2E)
        return emb + class_emb

    def _check_text(self, encoder_hidden_states, B: int) -> Tensor:
        c = encoder_hidden_states if isinstance(encoder_hidden_states, Tensor) else Tensor(encoder_hidden_states)
        widths = sorted(set(_per_block(self.config.cross_attention_dim, len(self.config.down_block_types),
                                       "cross_attention_dim")))
        if c.ndim != 3 or c.shape[0] != B or (len(widths) == 1 and c.shape[2] != widths[0]):
            raise ValueError(f"encoder_hidden_states must have shape ({B}, Lk, cross_attention_dim={widths}), "
                             f"got {c.shape}")
        return c

    @staticmethod
    def _check_residuals(down, mid, skips, h):
        if (down is None) != (mid is None):
            raise ValueError("down_block_additional_residuals and mid_block_additional_residual must be given together "
                             "(ControlNet returns both)")
        if down is None:
            return
        if len(down) != len(skips):
            raise ValueError(f"down_block_additional_residuals: expected {len(skips)} tensors (one per skip), "
                             f"got {len(down)}")
        for i, (r, s) in enumerate(zip(down, skips)):
            if tuple(r.shape) != tuple(s.shape):
                raise ValueError(f"down_block_additional_residuals[{i}] has shape {tuple(r.shape)}, the skip it is "
                                 f"added to has {tuple(s.shape)}")
        if tuple(mid.shape) != tuple(h.shape):
            raise ValueError(f"mid_block_additional_residual has shape {tuple(mid.shape)}, the mid block output has "
                             f"{tuple(h.shape)}")

    def forward(self, sample, timestep, encoder_hidden_states, class_labels=None,
                down_block_additional_residuals=None, mid_block_additional_residual=None,
                encoder_attention_mask=None, return_dict: bool = False):
        """Predict (B, out_channels, H, W) from a noisy sample at ``timestep`` under the text
        ``encoder_hidden_states`` (B, Lk, C_text). Returns a Tensor (or
        ``UNet2DConditionOutput`` with ``return_dict=True``)."""
        x = sample if isinstance(sample, Tensor) else Tensor(sample)
        self._check_sample(x)
        B = x.shape[0]
        xp = get_array_module(x.data)
        dtype = self.conv_in.weight.dtype
        text = self._check_text(encoder_hidden_states, B)
        mask = None
        if encoder_attention_mask is not None:
            m = encoder_attention_mask
            m = xp.asarray(m.data if isinstance(m, Tensor) else m)
            if m.shape != (B, text.shape[1]):
                raise ValueError(f"encoder_attention_mask must have shape ({B}, {text.shape[1]}) (1 = attend), "
                                 f"got {m.shape}")
            mask = mask_to_bias(m, dtype)  # (B, 1, Lk), 0 or −10000 as diffusers
        if self.config.center_input_sample:
            x = x * 2.0 - 1.0

        # 1. time (+ class) embedding
        emb = self._embedding(B, timestep, class_labels, dtype, xp)  # (B, E) or (B, 2E)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)

        # 2. down path, skips kept (and ControlNet's residuals added to them)
        h = self.conv_in(x)  # (B, C_0, H, W)
        skips = (h,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, block_skips = block(h, emb, encoder_hidden_states=text, encoder_attention_mask=mask)
            else:
                h, block_skips = block(h, emb)
            skips += block_skips
        down, mid = down_block_additional_residuals, mid_block_additional_residual

        # 3. middle
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                h = self.mid_block(h, emb, text, encoder_attention_mask=mask)
            else:
                h = self.mid_block(h, emb)
        self._check_residuals(down, mid, skips, h)
        if down is not None:
            skips = tuple(s + r for s, r in zip(skips, down))
            h = h + mid

        # 4. up path, one skip per ResNet
        for block in self.up_blocks:
            n = len(block.resnets)
            if getattr(block, "has_cross_attention", False):
                h = block(h, skips[-n:], emb, encoder_hidden_states=text, encoder_attention_mask=mask)
            else:
                h = block(h, skips[-n:], emb)
            skips = skips[:-n]
        out = self.conv_out(nn.norm_act(self.conv_norm_out, self.conv_act, h))  # (B, out_channels, H, W)
        return UNet2DConditionOutput(sample=out) if return_dict else out
