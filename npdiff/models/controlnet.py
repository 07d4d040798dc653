"""``ControlNetModel``: a trainable copy of a U-Net's encoder that steers the locked U-Net (Zhang et al. 2023).

Same constructor arguments, defaults, submodule names and state-dict keys as diffusers'
``ControlNetModel`` (0.42), so a diffusers ControlNet folder loads unchanged and the
other way round.

Letters: B batch, C_k = block_out_channels[k], K number of down blocks, c the
conditioning image's channels, f_c = 2^(len(conditioning_embedding_out_channels) − 1)
the conditioning embedding's downsampling factor (the conditioning image is f_c times
larger than the sample: pixels for a latent model).

    emb  = TimestepEmbedding(Timesteps(t)) [+ class embedding]                (B, E)
    c    = conv_out(SiLU(… SiLU(conv_s2(SiLU(conv(SiLU(conv_in(cond)))))) …))   (B, C_0, H, W)
           (Zhang et al. 2023, §3.2: the small encoder E(·) of the condition;
            conv_out starts at zero, so c = 0 at initialisation)
    h    = conv_in(x) + c                                                     (B, C_0, H, W)
    down, mid: exactly the U-Net's (the copy), every skip s_i kept
    r_i  = scale_i · Z_i(s_i)        one zero-initialised 1×1 conv Z_i per skip
    r_mid = scale_mid · Z_mid(h_mid)  one for the mid block's output

The U-Net then adds r_i to its skip i and r_mid to its mid-block output
(``down_block_additional_residuals`` / ``mid_block_additional_residual``). Because every
Z starts at zero, a fresh ControlNet returns all-zero residuals and leaves the U-Net's
prediction unchanged (Zhang et al. 2023, eq. 2: y_c = y at the first training step);
the zero convs still receive gradients (∂L/∂W_Z = Σ ∂L/∂r · s ≠ 0), so training moves
them off zero.

Scales: ``conditioning_scale`` for every residual, or in ``guess_mode`` (diffusers'
semantics) the log-spaced 10^(−1 + j/n), j = 0…n, from 0.1 for the shallowest skip to 1
for the mid block (n = number of skips), times ``conditioning_scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import nn
from ..autograd import Tensor
from ..backend import get_array_module
from .embeddings import TimestepEmbedding, Timesteps
from .modeling_utils import register_to_config
from .unet_2d import UNetBase, _block_type, _refuse
from .unet_blocks import (CROSS_ATTN_DOWN_BLOCKS, CrossAttnDownBlock2D, UNetMidBlock2D, UNetMidBlock2DCrossAttn,
                          per_entry)

MODEL = "ControlNetModel"


@dataclass
class ControlNetOutput:
    """What ``forward`` returns (diffusers' return type): one residual per U-Net skip, shallowest
    first, and the mid block's."""

    down_block_res_samples: tuple
    mid_block_res_sample: Tensor

    def __iter__(self):  # ``down, mid = controlnet(...)``
        return iter((self.down_block_res_samples, self.mid_block_res_sample))


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (the "zero convolution" of Zhang et al. 2023)."""
    for p in module.parameters():
        p.data[...] = 0
    return module


class ControlNetConditioningEmbedding(nn.Module):
    """The conditioning image's encoder: conv_in → SiLU, then per step (conv → SiLU, stride-2 conv → SiLU),
    then the zero-initialised conv_out. (B, c, f_c·H, f_c·W) → (B, C_0, H, W).

    Keys as diffusers: ``conv_in``, ``blocks.{2i, 2i+1}``, ``conv_out``."""

    def __init__(self, conditioning_embedding_channels: int, conditioning_channels: int = 3,
                 block_out_channels: tuple[int, ...] = (16, 32, 96, 256)):
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = zero_module(nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3,
                                              padding=1))
        self.act = nn.SiLU()

    def forward(self, conditioning):
        h = self.act(self.conv_in(conditioning))
        for block in self.blocks:
            h = self.act(block(h))
        return self.conv_out(h)


class ControlNetModel(UNetBase):
    """Diffusers' ``ControlNetModel``; see the module docstring for the data flow.

    Built: the down blocks "CrossAttnDownBlock2D" / "DownBlock2D", the mid block
    "UNetMidBlock2DCrossAttn" or "UNetMidBlock2D", class embeddings (labels, "timestep",
    "identity"), ``controlnet_conditioning_channel_order`` "rgb" / "bgr". Refused by key
    name (as the U-Net refuses them):
    ``num_attention_heads`` (diffusers' ``attention_head_dim`` already counts heads),
    ``encoder_hid_dim(_type)``, ``addition_embed_type``, ``class_embed_type``
    "projection", ``global_pool_conditions`` (unused in diffusers, marked TODO),
    ``mid_block_type`` None (diffusers refuses it too), per-block ``layers_per_block``
    or ``cross_attention_dim`` (diffusers' ControlNet takes one int).

    ``controlnet(sample, timestep, encoder_hidden_states, controlnet_cond,
    conditioning_scale=1.0, class_labels=None, guess_mode=False)`` →
    ``ControlNetOutput(down_block_res_samples, mid_block_res_sample)``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                             "DownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        # 1. refuse what we do not build, by config key
        for key, value in (("num_attention_heads", num_attention_heads), ("encoder_hid_dim", encoder_hid_dim),
                           ("encoder_hid_dim_type", encoder_hid_dim_type),
                           ("addition_embed_type", addition_embed_type)):
            if value is not None:
                raise ValueError(f"{key}={value!r} is not supported by npdiff's {MODEL}; supported: [None]")
        _refuse("class_embed_type", class_embed_type, (None, "timestep", "identity"), MODEL)
        _refuse("mid_block_type", mid_block_type, ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"), MODEL)
        _refuse("resnet_time_scale_shift", resnet_time_scale_shift, ("default", "scale_shift"), MODEL)
        _refuse("controlnet_conditioning_channel_order", controlnet_conditioning_channel_order, ("rgb", "bgr"), MODEL)
        # diffusers marks it unused (a TODO); its (B, C, 1, 1) residuals would only broadcast
        _refuse("global_pool_conditions", global_pool_conditions, (False,), MODEL)
        if not isinstance(layers_per_block, int) or layers_per_block < 1:
            raise ValueError(f"layers_per_block must be one positive int for {MODEL} (diffusers' ControlNet has no "
                             f"per-block counts), got {layers_per_block!r}")
        if not isinstance(cross_attention_dim, int):
            raise ValueError(f"cross_attention_dim must be one int for {MODEL}, got {cross_attention_dim!r}")
        if not isinstance(norm_num_groups, int) or norm_num_groups < 1:
            raise ValueError(f"norm_num_groups must be a positive int for npdiff's {MODEL}, got {norm_num_groups!r}")
        block_out_channels = tuple(block_out_channels)
        emb_channels = tuple(conditioning_embedding_out_channels or ())
        if not emb_channels:
            raise ValueError("conditioning_embedding_out_channels must list at least one channel count")
        K = len(down_block_types)
        if len(block_out_channels) != K:
            raise ValueError(f"block_out_channels {list(block_out_channels)} and down_block_types "
                             f"{list(down_block_types)} must have the same length")
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block_out_channels entry; "
                             f"{bad} in {list(block_out_channels)} are not divisible")
        heads = per_entry(attention_head_dim, K, "attention_head_dim", entries="down block")
        depth = per_entry(transformer_layers_per_block, K, "transformer_layers_per_block", entries="down block")
        only_cross = per_entry(only_cross_attention, K, "only_cross_attention", entries="down block")

        # 2. input convolution, time and class embeddings (as the U-Net's, so from_unet can copy them)
        C0 = block_out_channels[0]
        E = 4 * C0
        self.conv_in = nn.Conv2d(in_channels, C0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(C0, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(C0, E, act_fn=act_fn)
        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, E)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(C0, E)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        else:
            self.class_embedding = None

        # 3. the conditioning image's encoder (its conv_out is a zero conv)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(C0, conditioning_channels, emb_channels)

        # 4. the encoder copy, with one zero 1×1 conv per skip (conv_in's output first)
        common = dict(temb_channels=E, dropout=0.0, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, resnet_time_scale_shift=resnet_time_scale_shift)
        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([zero_module(nn.Conv2d(C0, C0, kernel_size=1))])
        for k, name in enumerate(down_block_types):
            cls = _block_type(name, CROSS_ATTN_DOWN_BLOCKS, "down_block_types")
            c_out, last = block_out_channels[k], k == K - 1
            extra = {}
            if cls is CrossAttnDownBlock2D:
                extra = dict(num_attention_heads=heads[k], cross_attention_dim=cross_attention_dim,
                             only_cross_attention=only_cross[k], transformer_layers_per_block=depth[k],
                             use_linear_projection=use_linear_projection, upcast_attention=upcast_attention)
            self.down_blocks.append(cls(in_channels=block_out_channels[max(k - 1, 0)], out_channels=c_out,
                                        num_layers=layers_per_block, add_downsample=not last,
                                        downsample_padding=downsample_padding, **extra, **common))
            for _ in range(layers_per_block + (0 if last else 1)):  # one per ResNet, one for the downsampler
                self.controlnet_down_blocks.append(zero_module(nn.Conv2d(c_out, c_out, kernel_size=1)))

        # 5. the mid block copy and its zero conv (registered before mid_block, as in diffusers)
        C_mid = block_out_channels[-1]
        self.controlnet_mid_block = zero_module(nn.Conv2d(C_mid, C_mid, kernel_size=1))
        if mid_block_type == "UNetMidBlock2DCrossAttn":
            self.mid_block = UNetMidBlock2DCrossAttn(
                in_channels=C_mid, output_scale_factor=mid_block_scale_factor, num_attention_heads=heads[-1],
                cross_attention_dim=cross_attention_dim, transformer_layers_per_block=depth[-1],
                use_linear_projection=use_linear_projection, upcast_attention=upcast_attention, **common)
        else:  # diffusers builds "UNetMidBlock2D" with no attention: one ResNet
            self.mid_block = UNetMidBlock2D(in_channels=C_mid, num_layers=0, add_attention=False,
                                            output_scale_factor=mid_block_scale_factor, **common)

    # -- construction from a U-Net ------------------------------------------------
    @classmethod
    def from_unet(cls, unet, controlnet_conditioning_channel_order: str = "rgb",
                  conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
                  load_weights_from_unet: bool = True, conditioning_channels: int = 3) -> "ControlNetModel":
        """A ControlNet whose encoder is a copy of ``unet``'s (a ``UNet2DConditionModel``): same
        configuration, and with ``load_weights_from_unet`` the same conv_in, time / class embedding,
        down and mid block weights. The zero convs and the conditioning embedding's conv_out are zero.

        U-Net options the ControlNet cannot mirror are refused by key name rather than silently
        dropped (diffusers drops them): ``time_embedding_dim``, ``time_embedding_act_fn``,
        ``class_embeddings_concat``, ``conv_in_kernel`` ≠ 3, per-block ``layers_per_block`` or
        ``cross_attention_dim``, no mid block."""
        cfg = unet.config
        for key, ok in (("time_embedding_dim", cfg.get("time_embedding_dim") is None),
                        ("time_embedding_act_fn", cfg.get("time_embedding_act_fn") is None),
                        ("class_embeddings_concat", not cfg.get("class_embeddings_concat", False)),
                        ("conv_in_kernel", cfg.get("conv_in_kernel", 3) == 3),
                        ("mid_block_type", cfg.get("mid_block_type") is not None)):
            if not ok:
                raise ValueError(f"from_unet: the U-Net's {key}={cfg.get(key)!r} has no ControlNet counterpart "
                                 f"(diffusers' {MODEL} cannot mirror it)")
        layers, cross = cfg.layers_per_block, cfg.cross_attention_dim
        if isinstance(layers, (list, tuple)) and len(set(layers)) == 1:
            layers = layers[0]
        if isinstance(cross, (list, tuple)) and len(set(cross)) == 1:
            cross = cross[0]
        controlnet = cls(
            in_channels=cfg.in_channels, conditioning_channels=conditioning_channels,
            flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift, down_block_types=cfg.down_block_types,
            mid_block_type=cfg.mid_block_type, only_cross_attention=cfg.only_cross_attention,
            block_out_channels=cfg.block_out_channels, layers_per_block=layers,
            downsample_padding=cfg.downsample_padding, mid_block_scale_factor=cfg.mid_block_scale_factor,
            act_fn=cfg.act_fn, norm_num_groups=cfg.norm_num_groups, norm_eps=cfg.norm_eps,
            cross_attention_dim=cross, transformer_layers_per_block=cfg.transformer_layers_per_block,
            attention_head_dim=cfg.attention_head_dim, use_linear_projection=cfg.use_linear_projection,
            class_embed_type=cfg.class_embed_type, num_class_embeds=cfg.num_class_embeds,
            upcast_attention=cfg.upcast_attention, resnet_time_scale_shift=cfg.resnet_time_scale_shift,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels)
        controlnet.to(dtype=unet.dtype)
        if load_weights_from_unet:
            for name in ("conv_in", "time_embedding", "class_embedding", "down_blocks", "mid_block"):
                ours = getattr(controlnet, name)
                if ours is not None:
                    ours.load_state_dict(getattr(unet, name).state_dict())
        return controlnet

    # -- forward ----------------------------------------------------------------------
    def _check_inputs(self, x: Tensor, encoder_hidden_states, controlnet_cond):
        B = x.shape[0]
        c = encoder_hidden_states if isinstance(encoder_hidden_states, Tensor) else Tensor(encoder_hidden_states)
        if c.ndim != 3 or c.shape[0] != B or c.shape[2] != self.config.cross_attention_dim:
            raise ValueError(f"encoder_hidden_states must have shape ({B}, Lk, "
                             f"{self.config.cross_attention_dim}), got {c.shape}")
        f = 2 ** (len(self.config.conditioning_embedding_out_channels) - 1)
        want = (B, self.config.conditioning_channels, x.shape[2] * f, x.shape[3] * f)
        if tuple(controlnet_cond.shape) != want:
            raise ValueError(f"controlnet_cond must have shape {want} (the conditioning embedding downsamples by "
                             f"{f} to the sample's {x.shape[2]}×{x.shape[3]}), got {tuple(controlnet_cond.shape)}")
        bgr = self.config.controlnet_conditioning_channel_order == "bgr"
        if isinstance(controlnet_cond, Tensor) and not bgr:
            return c, controlnet_cond  # kept on the tape: gradients reach the condition
        cond = controlnet_cond.data if isinstance(controlnet_cond, Tensor) else controlnet_cond
        xp = get_array_module(x.data)
        cond = xp.asarray(cond, dtype=self.dtype)
        if bgr:
            cond = cond[:, ::-1]  # diffusers flips to RGB (without a gradient path here)
        return c, Tensor(xp.ascontiguousarray(cond))

    def residual_scales(self, conditioning_scale: float = 1.0, guess_mode: bool = False) -> np.ndarray:
        """The factor of each residual, skips first and the mid block last (see the module docstring)."""
        n = len(self.controlnet_down_blocks)
        if guess_mode:
            return np.logspace(-1, 0, n + 1) * conditioning_scale  # 0.1 … 1, as diffusers
        return np.full(n + 1, float(conditioning_scale))

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale: float = 1.0,
                class_labels=None, guess_mode: bool = False, return_dict: bool = True):
        """Residuals for the U-Net's skips and mid block (see the module docstring). Returns
        ``ControlNetOutput`` (or the pair ``(down_block_res_samples, mid_block_res_sample)``)."""
        x = sample if isinstance(sample, Tensor) else Tensor(sample)
        self._check_sample(x)
        B = x.shape[0]
        text, cond = self._check_inputs(x, encoder_hidden_states, controlnet_cond)

        # 1. time (+ class) embedding
        emb = self._embedding(B, timestep, class_labels, self.conv_in.weight.dtype, get_array_module(x.data))

        # 2. the sample plus the embedded condition, then the encoder copy, every skip kept
        h = self.conv_in(x) + self.controlnet_cond_embedding(cond)  # (B, C_0, H, W)
        skips = (h,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, block_skips = block(h, emb, encoder_hidden_states=text)
            else:
                h, block_skips = block(h, emb)
            skips += block_skips
        if getattr(self.mid_block, "has_cross_attention", False):
            h = self.mid_block(h, emb, text)
        else:
            h = self.mid_block(h, emb)

        # 3. zero convs and scales
        scales = self.residual_scales(conditioning_scale, guess_mode)
        down = [zc(s) * float(a) for s, zc, a in zip(skips, self.controlnet_down_blocks, scales[:-1])]
        mid = self.controlnet_mid_block(h) * float(scales[-1])
        if not return_dict:
            return tuple(down), mid
        return ControlNetOutput(down_block_res_samples=tuple(down), mid_block_res_sample=mid)
