"""Attention layers of the diffusion U-Nets (diffusers' ``Attention``, ``FeedForward``,
``GEGLU`` and ``BasicTransformerBlock``).

Letters: B batch, C channels, H×W image, Lq query tokens (L = H·W for an image),
Lk key tokens (= Lq for self-attention; the text length for cross-attention),
C_kv key/value input width (``cross_attention_dim``), n heads, d head width.

``Attention`` is Vaswani et al. (2017), eq. 1, with multiple heads (§3.2.2). Given
queries from ``x`` and keys/values from ``c`` (``c = x`` for self-attention, the text
encoder's hidden states for cross-attention; Rombach et al. 2022, eq. 3):

    h      = GroupNorm(x)                      (optional; a (B, C, H, W) input is
                                                flattened to L = H·W tokens)
    Q = h W_qᵀ (+ b_q),  K = c W_kᵀ (+ b_k),  V = c W_vᵀ (+ b_v)      (Lq × n·d, Lk × n·d)
    A_i    = softmax(Q_i K_iᵀ / √d + M) V_i    for each head i (d columns of Q, K, V),
                                                M an additive mask (B, 1 or Lq, Lk)
    out    = ([A_1 … A_n] W_oᵀ + b_o  (+ x)) / rescale_output_factor

The residual ``+ x`` is ``residual_connection=True`` (the U-Net's spatial
self-attention blocks); the transformer blocks add their residuals themselves.
"""

from __future__ import annotations

from .. import nn
from ..autograd import Tensor
from ..nn import functional as F
from .activations import GEGLU, GELU
from .normalization import AdaLayerNormZero, modulate


class Attention(nn.Module):
    """Multi-head attention over a (B, C, H, W) feature map or a (B, Lq, C) sequence.

    Submodule names are diffusers': ``group_norm``, ``to_q``, ``to_k``, ``to_v``,
    ``to_out.0`` (Linear) and ``to_out.1`` (Dropout). Q, K, V are ``heads · dim_head``
    wide (= C when dim_head divides C, as diffusers also allows otherwise); K and V
    read ``cross_attention_dim`` features (default ``query_dim``). ``bias`` is the
    bias of to_q/to_k/to_v, ``out_bias`` that of to_out.0.
    Computed in the input dtype: diffusers' ``upcast_attention`` / ``upcast_softmax``
    only change float16 arithmetic, which npdiff does not compute in, so they are
    accepted and have no effect.

    ``_from_deprecated_attn_block``: this block may come from a pre-0.14 diffusers
    checkpoint whose keys were query/key/value/proj_attn (the U-Net's spatial
    attention); ``ModelMixin`` renames those on load.
    """

    def __init__(self, query_dim: int, cross_attention_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0, bias: bool = False, upcast_attention: bool = False,
                 upcast_softmax: bool = False, norm_num_groups: int | None = None, out_bias: bool = True,
                 eps: float = 1e-5, rescale_output_factor: float = 1.0, residual_connection: bool = False,
                 _from_deprecated_attn_block: bool = False):
        super().__init__()
        if heads < 1 or dim_head < 1:
            raise ValueError(f"Attention: need heads >= 1 and dim_head >= 1, got heads={heads}, dim_head={dim_head} "
                             f"for query_dim={query_dim} (attention_head_dim larger than the channel count?)")
        self.heads, self.dim_head = heads, dim_head
        self.is_cross_attention = cross_attention_dim is not None
        kv_dim = query_dim if cross_attention_dim is None else cross_attention_dim
        inner = heads * dim_head  # = query_dim unless dim_head does not divide it
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self._from_deprecated_attn_block = _from_deprecated_attn_block
        self.group_norm = nn.GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups is not None else None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(kv_dim, inner, bias=bias)
        self.to_v = nn.Linear(kv_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=out_bias), nn.Dropout(dropout)])

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None):
        """hidden_states (B, C, H, W) or (B, Lq, C); encoder_hidden_states (B, Lk, C_kv)
        or None (self-attention); attention_mask: an additive bias (B, 1 or Lq, Lk)
        (diffusers' convention: 0 = attend, −10000 = ignore) or None."""
        x = hidden_states
        image = x.ndim == 4
        if image:
            B, C, H, W = x.shape
            h = self.group_norm(x) if self.group_norm is not None else x
            # (B, Lq, C), Lq = H·W; made contiguous once here, or each of the three projections
            # below (and their backward) would copy the transposed view to rows itself
            h = h.reshape(B, C, H * W).transpose(1, 2).contiguous()
        else:
            if x.ndim != 3:
                raise ValueError(f"Attention: hidden_states must be (B, C, H, W) or (B, L, C), got shape {x.shape}")
            h = x
            if self.group_norm is not None:
                h = self.group_norm(h.transpose(1, 2)).transpose(1, 2)  # normalise over channels, (B, Lq, C)
        B, Lq = h.shape[0], h.shape[1]
        c = h if encoder_hidden_states is None else encoder_hidden_states
        if c.ndim != 3 or c.shape[0] != B or c.shape[2] != self.to_k.in_features:
            raise ValueError(f"Attention: encoder_hidden_states must have shape ({B}, Lk, {self.to_k.in_features}), "
                             f"got {tuple(c.shape)}")
        Lk = c.shape[1]
        n, d = self.heads, self.dim_head
        q = self.to_q(h).reshape(B, Lq, n, d).transpose(1, 2)  # (B, n, Lq, d)
        k = self.to_k(c).reshape(B, Lk, n, d).transpose(1, 2)  # (B, n, Lk, d)
        v = self.to_v(c).reshape(B, Lk, n, d).transpose(1, 2)  # (B, n, Lk, d)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask
            if mask.ndim != 3 or mask.shape[0] != B or mask.shape[1] not in (1, Lq) or mask.shape[2] != Lk:
                raise ValueError(f"Attention: attention_mask must be an additive bias of shape ({B}, 1 or {Lq}, {Lk}), "
                                 f"got {tuple(mask.shape)}")
            mask = mask[:, None]  # (B, 1, 1 or Lq, Lk): the same bias for every head
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, n, Lq, d), scale 1/√d
        a = a.transpose(1, 2).reshape(B, Lq, n * d)  # (B, Lq, n·d): heads side by side
        out = self.to_out[1](self.to_out[0](a))  # (B, Lq, C)
        if image:
            out = out.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        if self.residual_connection:
            out = out + x
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out

    def extra_repr(self):
        return f"heads={self.heads}, dim_head={self.dim_head}, cross={self.is_cross_attention}"


class FeedForward(nn.Module):
    """The transformer's position-wise MLP (Vaswani et al. 2017, eq. 2) with a gated
    activation: ``net.0`` projects C -> inner (GEGLU: C -> 2·inner, then halves),
    ``net.1`` dropout, ``net.2`` projects inner -> C_out; (B, L, C) -> (B, L, C_out).
    ``inner_dim`` defaults to ``mult · dim``. ``activation_fn``: "geglu" (Shazeer 2020),
    "gelu" or "gelu-approximate" (tanh form)."""

    ACTIVATIONS = ("geglu", "gelu", "gelu-approximate")

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0,
                 activation_fn: str = "geglu", final_dropout: bool = False, inner_dim: int | None = None,
                 bias: bool = True):
        super().__init__()
        if activation_fn not in self.ACTIVATIONS:
            raise ValueError(f"activation_fn={activation_fn!r} is not supported; choose from {list(self.ACTIVATIONS)}")
        inner_dim = int(dim * mult) if inner_dim is None else inner_dim
        dim_out = dim if dim_out is None else dim_out
        if activation_fn == "geglu":
            act = GEGLU(dim, inner_dim, bias=bias)
        else:
            act = GELU(dim, inner_dim, approximate="tanh" if activation_fn == "gelu-approximate" else "none", bias=bias)
        self.net = nn.ModuleList([act, nn.Dropout(dropout), nn.Linear(inner_dim, dim_out, bias=bias)])
        if final_dropout:
            self.net.append(nn.Dropout(dropout))

    def forward(self, hidden_states):
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block of Stable Diffusion's U-Net (Rombach et al. 2022, App. E), on (B, L, C):

        x = x + attn1(norm1(x))            self-attention (cross-attention to the text
                                           instead when ``only_cross_attention``)
        x = x + attn2(norm2(x), text)      cross-attention (only when cross_attention_dim
                                           is given or ``double_self_attention``)
        x = x + ff(norm3(x))               GEGLU feed-forward

    Keys as diffusers: norm1, attn1, norm2, attn2, norm3, ff. ``norm_type`` is "layer_norm"
    or "ada_norm_zero" (DiT: norm1 is ``AdaLayerNormZero`` conditioned on the timestep and
    class label, ``num_embeds_ada_norm`` classes, and the attention and feed-forward
    branches are gated, see ``normalization.py``); ``attention_type`` is "default"
    (others are refused by name)."""

    NORM_TYPES = ("layer_norm", "ada_norm_zero")

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, dropout: float = 0.0,
                 cross_attention_dim: int | None = None, activation_fn: str = "geglu", attention_bias: bool = False,
                 only_cross_attention: bool = False, double_self_attention: bool = False,
                 upcast_attention: bool = False, norm_elementwise_affine: bool = True, norm_type: str = "layer_norm",
                 norm_eps: float = 1e-5, final_dropout: bool = False, attention_type: str = "default",
                 ff_inner_dim: int | None = None, ff_bias: bool = True, attention_out_bias: bool = True,
                 num_embeds_ada_norm: int | None = None):
        super().__init__()
        if norm_type not in self.NORM_TYPES:
            raise ValueError(f"norm_type={norm_type!r} is not supported by BasicTransformerBlock; "
                             f"choose from {list(self.NORM_TYPES)}")
        if norm_type == "ada_norm_zero" and num_embeds_ada_norm is None:
            raise ValueError("norm_type='ada_norm_zero' needs num_embeds_ada_norm (the number of classes)")
        self.norm_type = norm_type
        if attention_type != "default":
            raise ValueError(f"attention_type={attention_type!r} is not supported; only 'default'")
        self.only_cross_attention = only_cross_attention
        attn = dict(heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout, bias=attention_bias,
                    upcast_attention=upcast_attention, out_bias=attention_out_bias)
        if norm_type == "ada_norm_zero":
            self.norm1 = AdaLayerNormZero(dim, num_embeds_ada_norm)
        else:
            self.norm1 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = Attention(dim, cross_attention_dim=cross_attention_dim if only_cross_attention else None, **attn)
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
            self.attn2 = Attention(dim, cross_attention_dim=None if double_self_attention else cross_attention_dim,
                                   **attn)  # self-attention when called without encoder_hidden_states
        else:
            self.norm2 = self.attn2 = None
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, final_dropout=final_dropout,
                              inner_dim=ff_inner_dim, bias=ff_bias)

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, class_labels=None):
        """(B, L, C) -> (B, L, C); masks are additive biases (B, 1 or L, Lk) (see ``Attention``);
        timestep and class_labels (B,) feed the adaLN-Zero norm (``norm_type="ada_norm_zero"``)."""
        x = hidden_states
        ada = self.norm_type == "ada_norm_zero"
        if ada:
            h, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, timestep, class_labels, hidden_dtype=x.dtype)
        else:
            h = self.norm1(x)
        a = self.attn1(h, encoder_hidden_states if self.only_cross_attention else None, attention_mask)
        x = x + (gate_msa.unsqueeze(1) * a if ada else a)  # α₁ (B, 1, C) gates the branch
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), encoder_hidden_states, encoder_attention_mask)
        h = self.norm3(x)
        if ada:
            return x + gate_mlp.unsqueeze(1) * self.ff(modulate(h, shift_mlp, scale_mlp))
        return x + self.ff(h)
