"""Guidance: steering a diffusion model's ε-prediction towards a condition y.

Both forms rest on the link between ε and the score of the noisy marginal
(Song et al. 2021, eq. 4 in VP form; Dhariwal & Nichol 2021, §4.1):

    ∇_{x_t} log p_t(x_t) = −ε(x_t, t) / √(1 − ᾱ_t)

(see ``npdiff.diffusion.score.score_from_eps``). The seed post writes the denominator as
1 − ᾱ_t without the square root (docs/math.md, errata E9).
"""

from __future__ import annotations

from npdiff.diffusion.conversions import _coefs


def classifier_free_guidance(eps_uncond, eps_cond, guidance_scale: float):
    """ε̃ = ε_uncond + s (ε_cond − ε_uncond) (Ho & Salimans 2022, eq. 6 with s = 1 + w).

    s = 0 is the unconditional model, s = 1 the conditional model, s > 1 extrapolates past it;
    this is diffusers' ``guidance_scale``. Works for v- or x₀-predictions alike (they are affine
    in ε at fixed x_t).
    """
    if eps_uncond.shape != eps_cond.shape:
        raise ValueError(f"eps_uncond shape {eps_uncond.shape} must equal eps_cond shape {eps_cond.shape}")
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def classifier_guidance(eps, grad_log_prob, alpha_bar, scale: float = 1.0):
    """ε̂ = ε − s √(1 − ᾱ_t) ∇_{x_t} log p_φ(y | x_t) (Dhariwal & Nichol 2021, Alg. 2 / eq. 14).

    ``grad_log_prob`` is the gradient of a noisy classifier's log-probability of the target
    class with respect to x_t. Shapes: eps, grad_log_prob (B, …); alpha_bar scalar or (B,).
    """
    _, b = _coefs(alpha_bar, eps)
    return eps - scale * b * grad_log_prob
