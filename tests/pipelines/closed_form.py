"""The exact ε-predictor of Gaussian data: pipelines tested end to end without a trained network.

For data x₀ ~ N(μ, Σ) the noisy marginal is x_t ~ N(√ᾱ μ, ᾱ Σ + (1 − ᾱ) I), so the optimal
ε-predictor is ε*(x_t) = −√(1 − ᾱ) ∇ log p_t(x_t) = √(1 − ᾱ) (ᾱ Σ + (1 − ᾱ) I)⁻¹ (x_t − √ᾱ μ)
(docs/math.md, "End-to-end proof without a network"). Items of any shape are flattened to D.
"""

import numpy as np


class GaussianEps:
    """``predict(x, t)`` for data N(mean, cov) under the ᾱ table ``alphas_cumprod``.

    Shapes: mean (D,), cov (D, D); x (B, *S) with prod(S) = D. Counts its calls."""

    def __init__(self, mean, cov, alphas_cumprod):
        self.mean, self.cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
        self.alphas_cumprod = np.asarray(alphas_cumprod, np.float64)
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        ab = float(self.alphas_cumprod[int(np.asarray(t).reshape(-1)[0])])
        flat = np.asarray(x, np.float64).reshape(len(x), -1)  # (B, D)
        prec = np.linalg.inv(ab * self.cov + (1.0 - ab) * np.eye(len(self.mean)))  # (D, D)
        eps = np.sqrt(1.0 - ab) * (flat - np.sqrt(ab) * self.mean) @ prec  # (B, D), prec symmetric
        return eps.reshape(np.shape(x)).astype(np.float32)

    def sample(self, n, rng):
        return rng.multivariate_normal(self.mean, self.cov, size=n).astype(np.float32)
