"""Conversions between the three things a denoiser may predict: ε, x₀ and v.

Notation: x_t = a·x₀ + b·ε with a = √ᾱ_t, b = √(1 − ᾱ_t), a² + b² = 1.
The velocity (Salimans & Ho 2022, §4, "v-parameterisation") is v = a·ε − b·x₀.
Because (a, b) is a rotation, every pair among (x_t, x₀, ε, v) determines the others:

    x₀ = (x_t − b·ε) / a          ε = (x_t − a·x₀) / b        (Ho et al. 2020, eq. 4 solved)
    x₀ = a·x_t − b·v              ε = b·x_t + a·v             (Salimans & Ho 2022, §4)
    v  = a·ε − b·x₀                                         (diffusers' ``get_velocity``)

``alpha_bar`` is a Python float, a 0-d array, or a (B,) array of per-sample ᾱ_t that is
broadcast over the trailing dimensions of x_t (B, …). Coefficients are computed in float64
and cast to x_t's dtype.
"""

from __future__ import annotations

import numpy as np

from npdiff.backend import broadcast_coef, to_device

#: Values accepted by ``prediction_type`` (documented in docs/math.md and the schedulers).
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def _coefs(alpha_bar, x):
    """(a, b) = (√ᾱ, √(1−ᾱ)) shaped to broadcast against x: (B,) → (B, 1, …, 1)."""
    ab = np.asarray(to_device(alpha_bar, "cpu"), dtype=np.float64)
    if ab.ndim == 0:
        return float(np.sqrt(ab)), float(np.sqrt(1.0 - ab))
    return broadcast_coef(np.sqrt(ab), x), broadcast_coef(np.sqrt(1.0 - ab), x)


def predict_x0_from_eps(x_t, eps, alpha_bar):
    """x₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t (Ho et al. 2020, eq. 15)."""
    a, b = _coefs(alpha_bar, x_t)
    return (x_t - b * eps) / a


def predict_eps_from_x0(x_t, x0, alpha_bar):
    """ε = (x_t − √ᾱ_t x₀) / √(1−ᾱ_t) (Ho et al. 2020, eq. 4 solved for ε)."""
    a, b = _coefs(alpha_bar, x_t)
    return (x_t - a * x0) / b


def predict_v(x0, eps, alpha_bar):
    """v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho 2022, §4): the v-objective's target."""
    a, b = _coefs(alpha_bar, x0)
    return a * eps - b * x0


def predict_x0_from_v(x_t, v, alpha_bar):
    """x₀ = √ᾱ_t x_t − √(1−ᾱ_t) v (Salimans & Ho 2022, §4)."""
    a, b = _coefs(alpha_bar, x_t)
    return a * x_t - b * v


def predict_eps_from_v(x_t, v, alpha_bar):
    """ε = √(1−ᾱ_t) x_t + √ᾱ_t v (Salimans & Ho 2022, §4)."""
    a, b = _coefs(alpha_bar, x_t)
    return b * x_t + a * v


def predict_v_from_eps(x_t, eps, alpha_bar):
    """v from (x_t, ε): v = a ε − b x₀ with x₀ = (x_t − b ε)/a, i.e. v = (ε − b x_t)/a."""
    a, b = _coefs(alpha_bar, x_t)
    return (eps - b * x_t) / a


def model_output_to_x0_eps(model_output, x_t, alpha_bar, prediction_type: str = "epsilon"):
    """(x̂₀, ε̂) from a model output of the given ``prediction_type`` (one of PREDICTION_TYPES)."""
    if prediction_type == "epsilon":
        return predict_x0_from_eps(x_t, model_output, alpha_bar), model_output
    if prediction_type == "sample":
        return model_output, predict_eps_from_x0(x_t, model_output, alpha_bar)
    if prediction_type == "v_prediction":
        return predict_x0_from_v(x_t, model_output, alpha_bar), predict_eps_from_v(x_t, model_output, alpha_bar)
    raise ValueError(f"unknown prediction_type {prediction_type!r}: expected one of {PREDICTION_TYPES}")


def training_target(x0, noise, alpha_bar, prediction_type: str = "epsilon"):
    """What a model trained with ``prediction_type`` must output for x_t = √ᾱ x₀ + √(1−ᾱ) ε."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        return predict_v(x0, noise, alpha_bar)
    raise ValueError(f"unknown prediction_type {prediction_type!r}: expected one of {PREDICTION_TYPES}")
