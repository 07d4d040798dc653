"""Diffusion maths on plain numpy/cupy arrays: schedules, closed forms, posterior, losses.

See docs/math.md for every formula, the function implementing it and the test proving it.
"""

from npdiff.diffusion.conversions import (
    PREDICTION_TYPES,
    model_output_to_x0_eps,
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_v,
    predict_v_from_eps,
    predict_x0_from_eps,
    predict_x0_from_v,
    training_target,
)
from npdiff.diffusion.guidance import classifier_free_guidance, classifier_guidance
from npdiff.diffusion.losses import (
    VARIANCE_TYPES,
    PMeanVariance,
    bits_per_dim,
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    learned_range_log_variance,
    mean_flat,
    min_snr_weights,
    normal_kl,
    p_mean_variance,
    prior_bpd,
    simple_loss,
    vb_terms_bpd,
)
from npdiff.diffusion.schedules import (
    BETA_SCHEDULES,
    NoiseSchedule,
    betas_for_alpha_bar,
    get_beta_schedule,
    rescale_zero_terminal_snr,
)
from npdiff.diffusion.score import eps_from_score, langevin_step, score_from_eps


def get_alphas_cumprod(beta_schedule="linear", num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                       trained_betas=None, rescale_betas_zero_snr=False):
    """ᾱ_t for a diffusers-style schedule config, float64 array of shape (T,)."""
    return NoiseSchedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                         rescale_betas_zero_snr).alphas_cumprod


__all__ = [n for n in dir() if not n.startswith("_")]
