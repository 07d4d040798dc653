"""Adaptive layer norm of DiT blocks (diffusers' ``AdaLayerNormZero``).

Letters: B batch, L tokens, E width, c the conditioning vector (timestep + class).

Peebles & Xie (2023, §3.2, "adaLN-Zero") regress the norm's shift and scale from c
instead of learning them, plus a per-channel gate on each residual branch:

    [β₁, γ₁, α₁, β₂, γ₂, α₂] = Linear(SiLU(c))          (B, 6E), six chunks in this order
    norm1(x) = LayerNorm(x) · (1 + γ₁) + β₁              (B, L, E), no affine, eps 1e-6
    x ← x + α₁ · Attention(norm1(x))
    x ← x + α₂ · MLP(LayerNorm(x) · (1 + γ₂) + β₂)

"Zero": the Linear starts at zero, so α₁ = α₂ = 0 and every block is the identity at
initialisation (``tests/models/test_dit.py::test_zero_adaln_blocks_are_identity``).
"""

from __future__ import annotations

from .. import nn
from .embeddings import CombinedTimestepLabelEmbeddings


class AdaLayerNormZero(nn.Module):
    """Keys: ``emb`` (CombinedTimestepLabelEmbeddings), ``linear`` (E -> 6E), ``norm``.
    ``forward`` returns (norm1(x), α₁, β₂, γ₂, α₂), as diffusers' does; α, β, γ are (B, E)."""

    def __init__(self, embedding_dim: int, num_embeddings: int, zero_init: bool = True):
        super().__init__()
        self.emb = CombinedTimestepLabelEmbeddings(num_embeddings, embedding_dim)
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 6 * embedding_dim, bias=True)
        self.norm = nn.LayerNorm(embedding_dim, elementwise_affine=False, eps=1e-6)
        if zero_init:  # adaLN-Zero (Peebles & Xie 2023, §3.2)
            self.linear.weight.data[...] = 0
            self.linear.bias.data[...] = 0

    def forward(self, x, timestep, class_labels, hidden_dtype=None):
        c = self.emb(timestep, class_labels, hidden_dtype=hidden_dtype)  # (B, E)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(self.silu(c)).chunk(6, dim=1)
        return modulate(self.norm(x), shift_msa, scale_msa), gate_msa, shift_mlp, scale_mlp, gate_mlp


def modulate(h, shift, scale):
    """h · (1 + γ) + β with per-sample (B, E) shift β and scale γ broadcast over the L tokens of h (B, L, E)."""
    return h * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # (B, 1, E) broadcast over L
