"""``UNet2DModel``: the diffusion U-Net of Ho et al. (2020), built as diffusers builds it.

Same constructor arguments, defaults, submodule names and state-dict keys as
diffusers' ``UNet2DModel`` (0.42), so a diffusers checkpoint folder loads
unchanged (``UNet2DModel.from_pretrained(folder)``) and computes the same function.

Letters: B batch, C_k = block_out_channels[k], E = time-embedding width
(``time_embedding_dim`` or 4·C_0), K = number of resolutions.

    emb  = TimestepEmbedding(Timesteps(t)) [+ class embedding]        (B, E)
    h    = conv_in(x)                                                  (B, C_0, H, W)
    down: K blocks; block k maps C_{k-1} -> C_k and halves H, W (not the last);
          every intermediate map is kept as a skip
    mid:  ResNet, attention, ResNet at (B, C_{K-1}, H/2^{K-1}, W/2^{K-1})
    up:   K blocks mirroring the down path; each ResNet eats one skip
          (concatenated along C); every block but the last doubles H, W
    out  = conv_out(SiLU(GroupNorm(h)))                                (B, out_channels, H, W)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import nn
from ..autograd import Tensor
from ..backend import get_array_module
from .embeddings import TimestepEmbedding, Timesteps
from .modeling_utils import ModelMixin, register_to_config
from .unet_blocks import DOWN_BLOCKS, UP_BLOCKS, AttnDownBlock2D, AttnUpBlock2D, UNetMidBlock2D


@dataclass
class UNet2DOutput:
    """What ``forward(..., return_dict=True)`` returns (diffusers' return type)."""

    sample: Tensor


def _block_type(name: str, table: dict, key: str) -> type:
    base = name[7:] if isinstance(name, str) and name.startswith("UNetRes") else name  # diffusers' alias prefix
    if base not in table:
        raise ValueError(f"{key}: block type {name!r} is not supported; choose from {sorted(table)}")
    return table[base]


def _refuse(key: str, value, supported, model: str = "UNet2DModel") -> None:
    if value not in supported:
        raise ValueError(f"{key}={value!r} is not supported by npdiff's {model}; supported: {list(supported)}")


class UNetBase(ModelMixin):
    """What the diffusion U-Nets share: input checks and the time (+ class) embedding.

    A subclass builds ``time_proj``, ``time_embedding`` and ``class_embedding`` (or
    None) and has the config keys ``in_channels``, ``block_out_channels``,
    ``class_embed_type`` and ``num_class_embeds``."""

    def _check_sample(self, x: Tensor) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"sample must have shape (B, {cfg.in_channels}, H, W), got {x.shape}")
        f = 2 ** (len(cfg.block_out_channels) - 1)
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"sample height and width must be multiples of {f} (2^(number of down blocks - 1)), "
                             f"got shape {x.shape}")

    @staticmethod
    def _per_sample(value, B: int, xp, what: str):
        """A scalar, (1,) or (B,) timestep / label -> a (B,) array."""
        a = xp.asarray(value.data if isinstance(value, Tensor) else value)
        if a.ndim == 0 or a.shape == (1,):
            return xp.broadcast_to(a.reshape(1), (B,))
        if a.shape != (B,):
            raise ValueError(f"{what} must be a scalar or have shape ({B},) for a batch of {B}, got shape {a.shape}")
        return a

    def _embedding(self, B: int, timestep, class_labels, dtype, xp) -> Tensor:
        t = self._per_sample(timestep, B, xp, "timestep")
        emb = self.time_embedding(Tensor(self.time_proj(t).data.astype(dtype, copy=False)))  # (B, E)
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError("class_labels were given but the model has no class embedding "
                                 "(set num_class_embeds or class_embed_type)")
            return emb
        if class_labels is None:
            raise ValueError("class_labels are required: the model is class-conditional "
                             f"(class_embed_type={self.config.class_embed_type!r}, "
                             f"num_class_embeds={self.config.num_class_embeds!r})")
        kind = self.config.class_embed_type
        if kind == "identity":
            c = class_labels if isinstance(class_labels, Tensor) else Tensor(xp.asarray(class_labels, dtype=dtype))
            if c.shape != emb.shape:
                raise ValueError(f"identity class embedding: class_labels must have shape {emb.shape}, got {c.shape}")
        elif kind == "timestep":
            labels = self._per_sample(class_labels, B, xp, "class_labels")
            c = self.class_embedding(Tensor(self.time_proj(labels).data.astype(dtype, copy=False)))
        else:
            # integer labels stay where they are (on the host, usually): the lookup checks their range there
            # and sends them to the table's device
            c = self.class_embedding(self._per_sample(class_labels, B, get_array_module(class_labels), "class_labels"))
        return self._combine_class_embedding(emb, c)

    def _combine_class_embedding(self, emb: Tensor, class_emb: Tensor) -> Tensor:
        return emb + class_emb

    @property
    def dtype(self):
        return np.dtype(self.conv_in.weight.dtype)


class UNet2DModel(UNetBase):
    """Diffusers' ``UNet2DModel``; see the module docstring for the data flow.

    Supported options: everything the constructor takes, except
    ``time_embedding_type`` other than "positional" and ``downsample_type`` /
    ``upsample_type`` other than "conv" (refused by name). ``num_train_timesteps``
    only matters for the "learned" embedding and is ignored.

    ``model(sample, timestep, class_labels=None)`` -> Tensor (B, out_channels, H, W);
    ``timestep`` is a scalar or one value per sample (int or float), as a number,
    array or Tensor. ``class_labels``: integer labels (B,) for ``num_class_embeds``,
    timesteps (B,) for ``class_embed_type="timestep"``, or a (B, E) Tensor for
    ``"identity"``.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
    ):
        super().__init__()
        # 1. refuse what we do not build, by config key
        _refuse("time_embedding_type", time_embedding_type, ("positional",))
        _refuse("downsample_type", downsample_type, ("conv",))
        _refuse("upsample_type", upsample_type, ("conv",))
        _refuse("mid_block_type", mid_block_type, ("UNetMidBlock2D", None))
        _refuse("resnet_time_scale_shift", resnet_time_scale_shift, ("default", "scale_shift"))
        _refuse("class_embed_type", class_embed_type, (None, "timestep", "identity"))
        if not isinstance(norm_num_groups, int) or norm_num_groups < 1:
            raise ValueError(f"norm_num_groups must be a positive int, got {norm_num_groups!r}")
        block_out_channels = tuple(block_out_channels)
        if len(down_block_types) != len(up_block_types):
            raise ValueError(f"down_block_types {list(down_block_types)} and up_block_types {list(up_block_types)} "
                             "must have the same length")
        if len(block_out_channels) != len(down_block_types):
            raise ValueError(f"block_out_channels {list(block_out_channels)} and down_block_types "
                             f"{list(down_block_types)} must have the same length")
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block_out_channels entry; "
                             f"{bad} in {list(block_out_channels)} are not divisible")
        self.sample_size = sample_size
        C0 = block_out_channels[0]
        E = time_embedding_dim or 4 * C0
        head_dim = {k: attention_head_dim if attention_head_dim is not None else c  # None: one head per block
                    for k, c in enumerate(block_out_channels)}
        common = dict(temb_channels=E, dropout=dropout, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, resnet_time_scale_shift=resnet_time_scale_shift)

        # 2. input convolution, time and class embeddings
        self.conv_in = nn.Conv2d(in_channels, C0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(C0, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(C0, E)
        if class_embed_type is None and num_class_embeds is not None:
            self.class_embedding = nn.Embedding(num_class_embeds, E)
        elif class_embed_type == "timestep":
            self.class_embedding = TimestepEmbedding(C0, E)
        elif class_embed_type == "identity":
            self.class_embedding = nn.Identity()
        else:
            self.class_embedding = None

        # 3. down path: block k maps C_{k-1} -> C_k, all but the last halve H, W
        self.down_blocks = nn.ModuleList()
        for k, name in enumerate(down_block_types):
            cls = _block_type(name, DOWN_BLOCKS, "down_block_types")
            kw = dict(attention_head_dim=head_dim[k]) if cls is AttnDownBlock2D else {}
            self.down_blocks.append(cls(in_channels=block_out_channels[max(k - 1, 0)], out_channels=block_out_channels[k],
                                        num_layers=layers_per_block, add_downsample=k < len(block_out_channels) - 1,
                                        downsample_padding=downsample_padding, **kw, **common))

        # 4. up path (registered before mid_block, as in diffusers, so parameter order matches)
        self.up_blocks = nn.ModuleList()
        rev = block_out_channels[::-1]
        for i, name in enumerate(up_block_types):
            cls = _block_type(name, UP_BLOCKS, "up_block_types")
            kw = dict(attention_head_dim=head_dim[len(rev) - 1 - i]) if cls is AttnUpBlock2D else {}
            self.up_blocks.append(cls(in_channels=rev[min(i + 1, len(rev) - 1)], prev_output_channel=rev[max(i - 1, 0)],
                                      out_channels=rev[i], num_layers=layers_per_block + 1,
                                      add_upsample=i < len(rev) - 1, **kw, **common))

        # 5. middle
        self.mid_block = None
        if mid_block_type is not None:
            self.mid_block = UNetMidBlock2D(in_channels=block_out_channels[-1], output_scale_factor=mid_block_scale_factor,
                                            attention_head_dim=head_dim[len(block_out_channels) - 1],
                                            attn_groups=attn_norm_num_groups, add_attention=add_attention, **common)

        # 6. output head
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, C0, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(C0, out_channels, kernel_size=3, padding=1)

    def forward(self, sample, timestep, class_labels=None, return_dict: bool = False):
        """Predict (B, out_channels, H, W) from a noisy sample at ``timestep``.

        Returns a Tensor (or ``UNet2DOutput`` with ``return_dict=True``)."""
        x = sample if isinstance(sample, Tensor) else Tensor(sample)
        self._check_sample(x)
        B = x.shape[0]
        if self.config.center_input_sample:
            x = x * 2.0 - 1.0
        emb = self._embedding(B, timestep, class_labels, self.conv_in.weight.dtype, get_array_module(x.data))

        h = self.conv_in(x)  # (B, C_0, H, W)
        skips = (h,)
        for block in self.down_blocks:
            h, block_skips = block(h, emb)
            skips += block_skips
        if self.mid_block is not None:
            h = self.mid_block(h, emb)
        for block in self.up_blocks:
            n = len(block.resnets)
            h = block(h, skips[-n:], emb)
            skips = skips[:-n]
        out = self.conv_out(nn.norm_act(self.conv_norm_out, self.conv_act, h))  # (B, out_channels, H, W)
        return UNet2DOutput(sample=out) if return_dict else out
