"""``DiTTransformer2DModel``: the Diffusion Transformer (Peebles & Xie 2023, "Scalable
Diffusion Models with Transformers"), diffusers' config keys and state-dict keys.

Letters: B batch, C channels, H×W image, p patch size, h = H/p, w = W/p, L = h·w
tokens, E = num_attention_heads · attention_head_dim (token width), C_out output
channels, c the conditioning vector of (t, y).

    tokens = Conv_{p×p, stride p}(x) -> (B, L, E)  +  pos          §3.1 "Patchify"; pos is the
                                                                    fixed 2-D sin-cos code
    c_i    = MLP_i(sinusoid(t)) + Embed_i(y)         (B, E)         each block has its own
    tokens = DiTBlock_i(tokens, c_i)   i = 1 … num_layers           adaLN-Zero (normalization.py)
    [β, γ] = proj_out_1(SiLU(c_1))                   (B, 2E)        the final layer reuses block 0's c
    out    = proj_out_2(LayerNorm(tokens) · (1 + γ) + β)  (B, L, p·p·C_out)
    image  = unpatchify(out)                          (B, C_out, H, W)

The class label y = ``num_embeds_ada_norm`` is the null class ∅ (the extra table row)
used by classifier-free guidance; ``class_labels=None`` means ∅ for every sample.

Initialisation follows the paper (§3.2, adaLN-Zero): each block's modulation Linear is
zero, so every block starts as the identity, and the final layer is zero. Diffusers
keeps PyTorch's default initialisation instead; a loaded checkpoint is unaffected.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from ..autograd import Tensor
from ..backend import get_array_module
from ..nn import functional as F
from .attention import BasicTransformerBlock, FeedForward
from .modeling_utils import ModelMixin, register_to_config
from .normalization import modulate
from .transformer_2d import Transformer2DModelOutput


def get_1d_sincos_pos_embed(embed_dim: int, pos):
    """Vaswani et al. (2017, §3.5) code of positions: (M,) -> (M, D), [sin(pos·ω), cos(pos·ω)]
    with ω_j = 10000^(−j/(D/2)), j < D/2; computed in float64."""
    if embed_dim % 2:
        raise ValueError(f"the sin-cos position code needs an even width, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))  # (D/2,)
    out = np.outer(np.asarray(pos, np.float64).reshape(-1), omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size, base_size: int, interpolation_scale: float = 1.0):
    """The 2-D code of an h×w patch grid (MAE/DiT): the first D/2 columns code the column
    index, the last D/2 the row index; (h·w, D) float32, tokens in row-major order.
    Positions are scaled by base_size / size so that a larger grid spans the same range
    (grid coordinates in float32, as diffusers computes them)."""
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if embed_dim % 4:
        raise ValueError(f"the 2-D sin-cos position code needs a width divisible by 4, got {embed_dim}")
    rows = np.arange(gh, dtype=np.float32) / np.float32(gh / base_size) / np.float32(interpolation_scale)
    cols = np.arange(gw, dtype=np.float32) / np.float32(gw / base_size) / np.float32(interpolation_scale)
    col_of, row_of = np.meshgrid(cols, rows, indexing="xy")  # (h, w) each: token (i, j) -> cols[j], rows[i]
    emb = np.concatenate([get_1d_sincos_pos_embed(embed_dim // 2, col_of),
                          get_1d_sincos_pos_embed(embed_dim // 2, row_of)], axis=1)  # (h·w, D)
    return emb.astype(np.float32)


class PatchEmbed(nn.Module):
    """Patchify (B, C, H, W) -> (B, L, E): a p×p convolution with stride p (key ``proj``),
    flattened to tokens, plus the fixed position code (buffer ``pos_embed`` (1, L, E),
    not in the state dict; recomputed for another image size)."""

    def __init__(self, height: int, width: int, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.height, self.width = height // patch_size, width // patch_size
        self.base_size = height // patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)
        pos = get_2d_sincos_pos_embed(embed_dim, (self.height, self.width), base_size=self.base_size)
        self.register_buffer("pos_embed", pos[None], persistent=False)  # (1, L, E)

    def forward(self, latent):
        B, _, H, W = latent.shape
        h, w = H // self.patch_size, W // self.patch_size
        x = self.proj(latent)  # (B, E, h, w)
        E = x.shape[1]
        x = x.reshape(B, E, h * w).transpose(1, 2)  # (B, L, E)
        if (h, w) == (self.height, self.width):
            pos = self.pos_embed
        else:
            pos = get_2d_sincos_pos_embed(E, (h, w), base_size=self.base_size)[None]  # (1, L, E)
        return x + pos.astype(x.dtype, copy=False)


class DiTTransformer2DModel(ModelMixin):
    """Class-conditional DiT on (B, in_channels, H, W) images or latents.

    Keys: pos_embed.proj, transformer_blocks.{i}.{norm1.emb.timestep_embedder,
    norm1.emb.class_embedder.embedding_table, norm1.linear, attn1, ff}, proj_out_1,
    proj_out_2. ``norm_num_groups`` is a diffusers argument that DiT does not use.
    ``upcast_attention`` only matters for float16 (see ``Attention``)."""

    @register_to_config
    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 72, in_channels: int = 4,
                 out_channels: int | None = None, num_layers: int = 28, dropout: float = 0.0,
                 norm_num_groups: int = 32, attention_bias: bool = True, sample_size: int = 32, patch_size: int = 2,
                 activation_fn: str = "gelu-approximate", num_embeds_ada_norm: int | None = 1000,
                 upcast_attention: bool = False, norm_type: str = "ada_norm_zero",
                 norm_elementwise_affine: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        if norm_type != "ada_norm_zero":
            raise ValueError(f"DiTTransformer2DModel: norm_type={norm_type!r} is not supported; only 'ada_norm_zero'")
        if num_embeds_ada_norm is None or num_embeds_ada_norm < 0:
            raise ValueError(f"DiTTransformer2DModel: num_embeds_ada_norm={num_embeds_ada_norm!r} must be the "
                             "number of classes (>= 0); the null class is the extra index num_embeds_ada_norm")
        if patch_size < 1 or sample_size % patch_size:
            raise ValueError(f"DiTTransformer2DModel: sample_size={sample_size} must be a multiple of "
                             f"patch_size={patch_size}")
        if activation_fn not in FeedForward.ACTIVATIONS:
            raise ValueError(f"DiTTransformer2DModel: activation_fn={activation_fn!r} is not supported; "
                             f"choose from {list(FeedForward.ACTIVATIONS)}")
        E = num_attention_heads * attention_head_dim
        if E % 4:
            raise ValueError(f"DiTTransformer2DModel: num_attention_heads · attention_head_dim = {E} must be "
                             "divisible by 4 (the 2-D sin-cos position code)")
        self.inner_dim = E
        self.patch_size = patch_size
        self.out_channels = in_channels if out_channels is None else out_channels
        self.pos_embed = PatchEmbed(sample_size, sample_size, patch_size, in_channels, E)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(E, num_attention_heads, attention_head_dim, dropout=dropout,
                                  activation_fn=activation_fn, num_embeds_ada_norm=num_embeds_ada_norm,
                                  attention_bias=attention_bias, upcast_attention=upcast_attention,
                                  norm_type=norm_type, norm_elementwise_affine=norm_elementwise_affine,
                                  norm_eps=norm_eps)
            for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(E, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(E, 2 * E)
        self.proj_out_2 = nn.Linear(E, patch_size * patch_size * self.out_channels)
        for p in (self.proj_out_1.weight, self.proj_out_1.bias, self.proj_out_2.weight, self.proj_out_2.bias):
            p.data[...] = 0  # zero final layer (Peebles & Xie 2023, §3.2)

    def forward(self, hidden_states, timestep=None, class_labels=None, cross_attention_kwargs=None,
                return_dict: bool = False):
        """(B, in_channels, H, W), timestep scalar or (B,), class_labels (B,) ints in
        [0, num_embeds_ada_norm] (None: the null class) -> (B, out_channels, H, W)."""
        x = hidden_states if isinstance(hidden_states, Tensor) else Tensor(hidden_states)
        cfg = self.config
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] != x.shape[3] or x.shape[2] % p:
            raise ValueError(f"DiTTransformer2DModel: hidden_states must be (B, {cfg.in_channels}, H, H) with H a "
                             f"multiple of patch_size={p}, got {x.shape}")
        if cross_attention_kwargs:
            raise ValueError(f"DiTTransformer2DModel: cross_attention_kwargs are not supported, got "
                             f"{sorted(cross_attention_kwargs)}")
        B, _, H, W = x.shape
        if timestep is None:
            raise ValueError("DiTTransformer2DModel: timestep is required")
        xp = get_array_module(x.data)  # the time code is made where the sample is (a host t is copied over once)
        t = xp.asarray(timestep.data if isinstance(timestep, Tensor) else timestep)
        t = xp.broadcast_to(t.reshape(-1) if t.size == 1 else t, (B,))
        y = np.full(B, cfg.num_embeds_ada_norm) if class_labels is None else class_labels

        h = self.pos_embed(x)  # (B, L, E)
        for block in self.transformer_blocks:
            h = block(h, timestep=t, class_labels=y)
        c = self.transformer_blocks[0].norm1.emb(t, y, hidden_dtype=h.dtype)  # (B, E)
        shift, scale = self.proj_out_1(F.silu(c)).chunk(2, dim=1)  # (B, E) each
        h = self.proj_out_2(modulate(self.norm_out(h), shift, scale))  # (B, L, p·p·C_out)
        # unpatchify: token (i, j) holds the p×p×C_out pixels of patch (i, j)
        gh, gw, Co = H // p, W // p, self.out_channels
        h = h.reshape(B, gh, gw, p, p, Co)  # (B, h, w, p, q, C_out)
        h = h.permute(0, 5, 1, 3, 2, 4)  # (B, C_out, h, p, w, q)
        out = h.reshape(B, Co, gh * p, gw * p)  # (B, C_out, H, W)
        return Transformer2DModelOutput(sample=out) if return_dict else out
