"""Scores and Langevin dynamics.

The score of a density is s(x) = ∇_x log p(x). A denoiser's ε-prediction is a scaled score of
the noisy marginal p_t (Vincent 2011; Song et al. 2021, §3.2 / eq. 4 for the VP SDE):

    s(x_t, t) = −ε(x_t, t) / √(1 − ᾱ_t)          (VP, x_t = √ᾱ x₀ + √(1−ᾱ) ε)
    s(x_σ, σ) = −ε / σ                             (VE, x_σ = x₀ + σ ε)

Langevin dynamics draws from p using only s (Welling & Teh 2011; Song & Ermon 2019, Alg. 1):

    x ← x + (δ/2) s(x) + √δ z,   z ~ N(0, I)

whose stationary law is p as δ → 0 and the number of steps → ∞ (the *distribution* of x tends
to p; x is a sample, not the density, as the seed post puts it — errata E8).
"""

from __future__ import annotations

from npdiff.diffusion.conversions import _coefs


def score_from_eps(eps, alpha_bar):
    """∇ log p_t(x_t) = −ε / √(1 − ᾱ_t) (Song et al. 2021, eq. 4 with VP marginals)."""
    _, b = _coefs(alpha_bar, eps)
    return -eps / b


def eps_from_score(score, alpha_bar):
    """ε = −√(1 − ᾱ_t) ∇ log p_t(x_t): the inverse of ``score_from_eps``."""
    _, b = _coefs(alpha_bar, score)
    return -b * score


def langevin_step(x, score, step_size: float, noise):
    """One Langevin update x + (δ/2) s(x) + √δ z (Song & Ermon 2019, Alg. 1, line 6)."""
    if noise.shape != x.shape:
        raise ValueError(f"noise shape {noise.shape} must equal x shape {x.shape}")
    return x + 0.5 * step_size * score + step_size**0.5 * noise
