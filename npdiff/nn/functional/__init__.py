"""Differentiable operations with torch.nn.functional's names and semantics."""

from .linear import embedding, linear
