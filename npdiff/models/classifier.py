"""``EncoderUNetModel``: a noise-conditional classifier p_φ(y | x_t, t), the encoder half of the U-Net.

Dhariwal & Nichol (2021, §4.1 and App. C) guide an unconditional diffusion model with the
gradient of a classifier trained on noisy images x_t at every t; its architecture is the
U-Net's downsampling trunk with the timestep embedding, followed by a pooled linear head
(guided-diffusion's ``EncoderUNetModel``; diffusers has no counterpart). It is built here from
the same blocks as ``UNet2DModel`` (``unet_blocks``, ``embeddings``), with the same config key
names, so a classifier and a denoiser of the same size share every block definition.

Letters: B batch, C_k = block_out_channels[k], E = 4·C_0 time-embedding width, K levels.

    emb    = TimestepEmbedding(Timesteps(t))                              (B, E)
    h      = conv_in(x)                                                   (B, C_0, H, W)
    down:  K blocks as in UNet2DModel (skips discarded)                   (B, C_{K−1}, H/2^{K−1}, W/2^{K−1})
    mid:   ResNet, attention, ResNet
    logits = classifier(mean_{H,W} SiLU(GroupNorm(h)))                    (B, num_classes)
"""

from __future__ import annotations

from .. import nn
from ..autograd import Tensor
from ..backend import get_array_module
from .embeddings import TimestepEmbedding, Timesteps
from .modeling_utils import ModelMixin, register_to_config
from .unet_2d import UNet2DModel, _block_type
from .unet_blocks import DOWN_BLOCKS, AttnDownBlock2D, UNetMidBlock2D


class EncoderUNetModel(ModelMixin):
    """Noise-conditional classifier: ``model(sample, timestep) -> logits`` (B, num_classes) Tensor.

    The arguments mean what they mean for ``UNet2DModel``; ``num_classes`` is the head's width.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 3,
        num_classes: int = 10,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D"),
        block_out_channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        downsample_padding: int = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 8,
        norm_eps: float = 1e-5,
        add_attention: bool = True,
    ):
        super().__init__()
        block_out_channels = tuple(block_out_channels)
        if len(block_out_channels) != len(down_block_types):
            raise ValueError(f"block_out_channels {list(block_out_channels)} and down_block_types "
                             f"{list(down_block_types)} must have the same length")
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block_out_channels entry "
                             f"{list(block_out_channels)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        C0, E = block_out_channels[0], 4 * block_out_channels[0]
        common = dict(temb_channels=E, dropout=dropout, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups)
        self.conv_in = nn.Conv2d(in_channels, C0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(C0, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(C0, E)
        self.down_blocks = nn.ModuleList()
        for k, name in enumerate(down_block_types):
            cls = _block_type(name, DOWN_BLOCKS, "down_block_types")
            kw = dict(attention_head_dim=attention_head_dim) if cls is AttnDownBlock2D else {}
            self.down_blocks.append(cls(in_channels=block_out_channels[max(k - 1, 0)], out_channels=block_out_channels[k],
                                        num_layers=layers_per_block, add_downsample=k < len(block_out_channels) - 1,
                                        downsample_padding=downsample_padding, **kw, **common))
        self.mid_block = UNetMidBlock2D(in_channels=block_out_channels[-1], attention_head_dim=attention_head_dim,
                                        add_attention=add_attention, **common)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.classifier = nn.Linear(block_out_channels[-1], num_classes)

    def forward(self, sample, timestep) -> Tensor:
        """Logits (B, num_classes) of p_φ(y | x_t, t) for a noisy ``sample`` (B, in_channels, H, W)."""
        x = sample if isinstance(sample, Tensor) else Tensor(sample)
        cfg = self.config
        f = 2 ** (len(cfg.block_out_channels) - 1)
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"sample must have shape (B, {cfg.in_channels}, H, W) with H, W multiples of {f}, "
                             f"got {x.shape}")
        B = x.shape[0]
        t = UNet2DModel._per_sample(timestep, B, get_array_module(x.data), "timestep")
        emb = self.time_embedding(Tensor(self.time_proj(t).data.astype(self.conv_in.weight.dtype, copy=False)))
        h = self.conv_in(x)  # (B, C_0, H, W)
        for block in self.down_blocks:
            h, _ = block(h, emb)
        h = self.mid_block(h, emb)
        h = nn.norm_act(self.conv_norm_out, self.conv_act, h).mean(axis=(2, 3))  # (B, C_{K−1}): global average pool
        return self.classifier(h)
