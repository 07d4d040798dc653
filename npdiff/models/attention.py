"""Spatial self-attention block of the diffusion U-Net (diffusers' ``Attention`` as
built by ``AttnDownBlock2D`` / ``AttnUpBlock2D`` / ``UNetMidBlock2D``).

Letters: B batch, C channels, H×W image, L = H·W tokens, n heads, d = C / n head width.

Every pixel is a token; the block mixes information across the whole image
(Ho et al. 2020 use it at the 16×16 resolution; the operation is Vaswani et al.
2017, eq. 1, with multiple heads, §3.2.2):

    h      = GroupNorm(x)                      (optional; the mid block of a
                                                "scale_shift" model has none)
    Q, K, V = h W_qᵀ + b_q,  h W_kᵀ + b_k,  h W_vᵀ + b_v          (L × C per image)
    A_i    = softmax(Q_i K_iᵀ / √d) V_i        for each head i (d columns of Q, K, V)
    out    = ([A_1 … A_n] W_oᵀ + b_o  +  x) / rescale_output_factor

The residual ``+ x`` is ``residual_connection=True`` (always so in the U-Net).
"""

from __future__ import annotations

from .. import nn
from ..nn import functional as F


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a (B, C, H, W) feature map.

    Submodule names are diffusers': ``group_norm``, ``to_q``, ``to_k``, ``to_v``,
    ``to_out.0`` (Linear) and ``to_out.1`` (Dropout). The blocks pass
    ``heads = C // dim_head``; Q, K, V are ``heads · dim_head`` wide (= C when
    dim_head divides C, as diffusers also allows otherwise).
    Computed in the input dtype (diffusers' ``upcast_softmax`` only matters for
    float16, which npdiff does not compute in).
    """

    # diffusers renames query/key/value/proj_attn of old checkpoints for these blocks
    _from_deprecated_attn_block = True

    def __init__(self, query_dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0, bias: bool = True,
                 norm_num_groups: int | None = None, eps: float = 1e-5, rescale_output_factor: float = 1.0,
                 residual_connection: bool = False):
        super().__init__()
        if heads < 1 or dim_head < 1:
            raise ValueError(f"Attention: need heads >= 1 and dim_head >= 1, got heads={heads}, dim_head={dim_head} "
                             f"for query_dim={query_dim} (attention_head_dim larger than the channel count?)")
        self.heads, self.dim_head = heads, dim_head
        inner = heads * dim_head  # = query_dim unless dim_head does not divide it
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.group_norm = nn.GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups is not None else None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(query_dim, inner, bias=bias)
        self.to_v = nn.Linear(query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=True), nn.Dropout(dropout)])

    def forward(self, hidden_states):
        x = hidden_states
        B, C, H, W = x.shape
        n, d = self.heads, self.dim_head
        h = self.group_norm(x) if self.group_norm is not None else x
        h = h.reshape(B, C, H * W).transpose(1, 2)  # (B, L, C)
        q = self.to_q(h).reshape(B, H * W, n, d).transpose(1, 2)  # (B, n, L, d)
        k = self.to_k(h).reshape(B, H * W, n, d).transpose(1, 2)  # (B, n, L, d)
        v = self.to_v(h).reshape(B, H * W, n, d).transpose(1, 2)  # (B, n, L, d)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, n, L, d), scale 1/√d
        a = a.transpose(1, 2).reshape(B, H * W, n * d)  # (B, L, n·d): heads side by side
        out = self.to_out[1](self.to_out[0](a))  # (B, L, C)
        out = out.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        if self.residual_connection:
            out = out + x
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out

    def extra_repr(self):
        return f"heads={self.heads}, dim_head={self.dim_head}"
