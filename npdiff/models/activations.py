"""Projection + activation layers of the transformer feed-forward (diffusers' ``activations``).

Letters: L tokens, C input width, D output width.

    GELU:   y = gelu(x Wᵀ + b)                                    (L, C) -> (L, D)
    GEGLU:  [a, g] = x Wᵀ + b  (W: 2D × C);   y = a ⊙ gelu(g)       (L, C) -> (L, D)

GEGLU is the gated linear unit with a GELU gate (Shazeer 2020, "GLU Variants Improve
Transformer", eq. 5 with a bias); the first half of the projection is the value, the
second half the gate, as in diffusers (a checkpoint's ``proj`` rows follow that order).
"""

from __future__ import annotations

from .. import nn
from ..nn import functional as F


class GELU(nn.Module):
    """Linear (``proj``) then GELU, exact erf form or ``approximate="tanh"``."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states):
        return F.gelu(self.proj(hidden_states), approximate=self.approximate)


class GEGLU(nn.Module):
    """Linear (``proj``, C -> 2·D), split into value and gate, value · gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states):
        value, gate = self.proj(hidden_states).chunk(2, dim=-1)  # (..., D) each
        return value * F.gelu(gate)
