"""Training objectives and the variational bound of a Gaussian diffusion, on plain arrays.

Notation as in ``schedules.py``; x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε, D = number of dimensions per
sample. All per-sample results have shape (B,).

- L_simple = E‖ε − ε_θ(x_t, t)‖² (Ho et al. 2020, eq. 14), and its x₀ / v counterparts.
- min-SNR-γ weights (Hang et al. 2023, §3.4).
- VLB terms L_{t-1} = KL(q(x_{t-1}|x_t,x₀) ‖ p_θ(x_{t-1}|x_t)) and L_0 = −log p_θ(x₀|x₁)
  with a discretised Gaussian decoder (Ho et al. 2020, eqs. 5 and 13), in bits per dimension.
- learned-range variance Σ_θ = exp(v log β_t + (1−v) log β̃_t) (Nichol & Dhariwal 2021, eq. 15)
  for the hybrid loss L_hybrid = L_simple + λ L_vlb, λ = 0.001, with the gradient of L_vlb
  stopped on the mean (Nichol & Dhariwal 2021, eq. 16 and §3.1) — the stop-gradient is the
  trainer's job; here everything is plain arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from npdiff.backend import get_array_module, special
from npdiff.diffusion.conversions import PREDICTION_TYPES, model_output_to_x0_eps, training_target
from npdiff.diffusion.schedules import NoiseSchedule, _gather

#: Values accepted by ``variance_type`` of ``p_mean_variance`` (and DDPMScheduler).
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


def mean_flat(x):
    """Mean over all axes but the first: (B, …) → (B,)."""
    return x.reshape(x.shape[0], -1).mean(axis=1)  # (B, D) → (B,)


def simple_loss(model_output, target):
    """Per-sample mean squared error ‖target − model_output‖² / D (Ho et al. 2020, eq. 14)."""
    if model_output.shape != target.shape:
        raise ValueError(f"model_output shape {model_output.shape} must equal target shape {target.shape}")
    return mean_flat((model_output - target) ** 2)


def min_snr_weights(snr, gamma: float = 5.0, prediction_type: str = "epsilon"):
    """Min-SNR-γ loss weights per timestep (Hang et al. 2023, §3.4).

    Relative to an x₀-MSE the weight is w_t = min(SNR(t), γ). An ε-MSE is SNR(t) times an
    x₀-MSE, so its weight is min(SNR, γ)/SNR; a v-MSE is (SNR+1) times an x₀-MSE, so its
    weight is min(SNR, γ)/(SNR + 1). ``snr`` may be inf (ᾱ = 1) or 0 (zero-terminal SNR).
    """
    snr = np.asarray(snr, dtype=np.float64)
    clipped = np.minimum(snr, gamma)
    with np.errstate(divide="ignore", invalid="ignore"):
        if prediction_type == "epsilon":
            w = np.where(snr > 0, clipped / snr, 1.0)
        elif prediction_type == "sample":
            w = clipped
        elif prediction_type == "v_prediction":
            w = clipped / (snr + 1.0)
        else:
            raise ValueError(f"unknown prediction_type {prediction_type!r}: expected one of {PREDICTION_TYPES}")
    return w


def diffusion_loss(schedule: NoiseSchedule, model_output, x0, noise, t, prediction_type="epsilon", snr_gamma=None):
    """Per-sample training loss: MSE against the ``prediction_type`` target, optionally min-SNR-γ weighted.

    Shapes: model_output, x0, noise (B, …); t (B,) integer timesteps. Returns (B,).
    """
    target = training_target(x0, noise, schedule.alphas_cumprod[np.asarray(t)], prediction_type)
    loss = simple_loss(model_output, target)
    if snr_gamma is not None:
        xp = get_array_module(loss)
        loss = loss * xp.asarray(min_snr_weights(schedule.snr(t), snr_gamma, prediction_type), dtype=loss.dtype)
    return loss


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(μ₁, σ₁²) ‖ N(μ₂, σ₂²)) element-wise, in nats.

    Definition: ½ (log σ₂² − log σ₁² + (σ₁² + (μ₁ − μ₂)²)/σ₂² − 1).
    """
    xp = get_array_module(mean1, mean2)
    return 0.5 * (-1.0 + logvar2 - logvar1 + xp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * xp.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales, num_bins: int = 256):
    """log p(x) of data in [−1, 1] quantised to ``num_bins`` levels under N(means, exp(log_scales)²).

    Definition (Ho et al. 2020, eq. 13): the bin of x is [x − δ, x + δ] with δ = 1/(num_bins − 1),
    except the outermost bins, which extend to ∓∞, so the bins' probabilities sum to 1:
        p(x) = Φ((x + δ − μ)/s) − Φ((x − δ − μ)/s)   (interior bins)
    Tails use log Φ directly for accuracy. Shapes: all (B, …); returns (B, …) in nats.
    """
    xp = get_array_module(x, means)
    ndtr, log_ndtr = special(xp).ndtr, special(xp).log_ndtr
    delta = 1.0 / (num_bins - 1)
    centered = x - means
    inv_std = xp.exp(-log_scales)
    plus_in = inv_std * (centered + delta)
    min_in = inv_std * (centered - delta)
    log_cdf_plus = log_ndtr(plus_in)  # bottom bin: log Φ(plus_in)
    log_one_minus_cdf_min = log_ndtr(-min_in)  # top bin: log(1 − Φ(min_in))
    cdf_delta = ndtr(plus_in) - ndtr(min_in)
    edge = 1.0 - delta / 2
    log_mid = xp.log(xp.maximum(cdf_delta, 1e-12))
    return xp.where(x < -edge, log_cdf_plus, xp.where(x > edge, log_one_minus_cdf_min, log_mid))


@dataclass
class PMeanVariance:
    """p_θ(x_{t-1} | x_t) = N(mean, variance): the reverse step a model's output defines."""

    mean: object
    variance: object
    log_variance: object
    pred_original_sample: object


def learned_range_log_variance(schedule: NoiseSchedule, model_var_values, t):
    """log Σ_θ = v log β_t + (1 − v) log β̃_t with v = (model output + 1)/2 (Nichol & Dhariwal 2021, eq. 15).

    The model outputs values in [−1, 1]; β̃ uses the clipped log (β̃_0 → β̃_1).
    """
    frac = (model_var_values + 1.0) / 2.0
    min_log = _gather(schedule.posterior_log_variance_clipped, t, model_var_values)
    max_log = _gather(np.log(schedule.betas), t, model_var_values)
    return frac * max_log + (1.0 - frac) * min_log


def p_mean_variance(schedule: NoiseSchedule, model_output, x_t, t, prediction_type="epsilon",
                    variance_type="fixed_small", clip_denoised=False) -> PMeanVariance:
    """Mean and variance of p_θ(x_{t-1} | x_t) from a model output.

    The mean is the posterior mean μ̃_t(x_t, x̂₀) at the predicted x̂₀ (Ho et al. 2020, eq. 11 for
    ε; any prediction type goes through x̂₀). For ``learned``/``learned_range`` the model output has
    2C channels on axis 1: the first C are the prediction, the last C the variance values.
    ``fixed_large`` uses β_t, with β̃_1 at t = 0 so the decoder keeps a sensible variance.
    """
    xp = get_array_module(x_t)
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance_type {variance_type!r}: expected one of {VARIANCE_TYPES}")
    if variance_type in ("learned", "learned_range"):
        C = x_t.shape[1]
        if model_output.shape[1] != 2 * C:
            raise ValueError(f"variance_type {variance_type!r} needs model_output with 2*{C} channels, got shape {model_output.shape}")
        model_output, var_values = model_output[:, :C], model_output[:, C:]
        if variance_type == "learned":
            log_var = var_values
        else:
            log_var = learned_range_log_variance(schedule, var_values, t)
        var = xp.exp(log_var)
    elif variance_type in ("fixed_small", "fixed_small_log"):
        var = _gather(schedule.posterior_variance, t, x_t)
        log_var = _gather(schedule.posterior_log_variance_clipped, t, x_t)
    else:
        large = np.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]])
        var, log_var = _gather(large, t, x_t), _gather(np.log(large), t, x_t)
    x0, _ = model_output_to_x0_eps(model_output, x_t, schedule.alphas_cumprod[np.asarray(t)], prediction_type)
    if clip_denoised:
        x0 = xp.clip(x0, -1.0, 1.0)
    mean, _, _ = schedule.q_posterior_mean_variance(x0, x_t, t)
    return PMeanVariance(mean, var, log_var, x0)


def vb_terms_bpd(schedule: NoiseSchedule, p: PMeanVariance, x0, x_t, t):
    """One term of the variational bound in bits/dim, per sample (Ho et al. 2020, eq. 5).

    L_{t-1} = KL(q(x_{t-1}|x_t,x₀) ‖ p_θ(x_{t-1}|x_t)) for t > 0 and the decoder
    L_0 = −log p_θ(x₀|x₁) (discretised, eq. 13) for t = 0; divided by D·ln 2.
    Shapes: x0, x_t (B, …); t (B,). Returns (B,).
    """
    xp = get_array_module(x0)
    true_mean, _, true_log_var = schedule.q_posterior_mean_variance(x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / math.log(2.0)
    log_var = p.log_variance + xp.zeros_like(x0)
    nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p.mean, 0.5 * log_var)) / math.log(2.0)
    return xp.where(xp.asarray(np.asarray(t)) == 0, nll, kl)


def prior_bpd(schedule: NoiseSchedule, x0):
    """L_T = KL(q(x_T | x₀) ‖ N(0, I)) in bits/dim, per sample (Ho et al. 2020, eq. 5). Shape (B,)."""
    t = np.full(x0.shape[0], schedule.num_train_timesteps - 1)
    mean, _, log_var = schedule.q_mean_variance(x0, t)
    xp = get_array_module(x0)
    return mean_flat(normal_kl(mean, log_var + xp.zeros_like(x0), 0.0, 0.0)) / math.log(2.0)


def bits_per_dim(schedule: NoiseSchedule, p_fn, x0, generator: np.random.Generator):
    """The full variational bound −log p(x₀) ≤ L_T + Σ_t L_{t-1} in bits/dim, per sample.

    ``p_fn(x_t, t) -> PMeanVariance`` is the model's reverse step (e.g. ``p_mean_variance`` of a
    network output). Loops over all T timesteps with one fresh q_sample each (Ho et al. 2020, eq. 5;
    Nichol & Dhariwal 2021, §3.1 report this number). Shapes: x0 (B, …) in [−1, 1]; returns (B,).
    """
    xp = get_array_module(x0)
    total = prior_bpd(schedule, x0)
    for t in range(schedule.num_train_timesteps):
        noise = xp.asarray(generator.standard_normal(x0.shape), dtype=x0.dtype)
        tt = np.full(x0.shape[0], t)
        x_t = schedule.q_sample(x0, tt, noise)
        total = total + vb_terms_bpd(schedule, p_fn(x_t, tt), x0, x_t, tt)
    return total
