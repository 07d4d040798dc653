"""Heun's 2nd-order method on the probability-flow ODE in σ (Karras et al. 2022, Alg. 1), with
diffusers' ``HeunDiscreteScheduler`` semantics. Notation in ``sigmas.py``.

Each σ_i → σ_{i+1} interval costs two model calls, so ``timesteps`` lists every interior
timestep twice and ``sigmas`` is [σ_0, σ_1, σ_1, σ_2, σ_2, …, σ_{n-1}, σ_{n-1}, 0]:

    call 1 (first order):  d_i = (x_i − x̂₀(x_i, σ_i))/σ_i;  x̃ = x_i + d_i (σ_{i+1} − σ_i)
    call 2 (correction):   d' = (x̃ − x̂₀(x̃, σ_{i+1}))/σ_{i+1};  x_{i+1} = x_i + ½(d_i + d')(σ_{i+1} − σ_i)

The last interval ends at σ = 0, where the correction is undefined: it is a plain Euler step
(EDM Alg. 1, line 7 "if σ_{i+1} ≠ 0").
"""

from __future__ import annotations

import numpy as np

from npdiff.diffusion import PREDICTION_TYPES
from npdiff.schedulers.base import SchedulerOutput, TIMESTEP_SPACINGS, check_choice
from npdiff.schedulers.sigmas import (
    SigmaSchedulerMixin,
    check_same_shape,
    karras_sigmas,
    sigma_to_t,
    x0_from_sigma_output,
)


class HeunDiscreteScheduler(SigmaSchedulerMixin):
    """Heun sampler (Karras et al. 2022, Alg. 1 with S_churn = 0).

    Options:
    - beta_schedule: one of `linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`; ``trained_betas`` overrides it.
    - prediction_type: one of `epsilon`, `sample`, `v_prediction`.
    - timestep_spacing: one of `linspace`, `leading`, `trailing`.
    - use_karras_sigmas: EDM eq. 5 (ρ = 7) between the spaced σ_min and σ_max.
    """

    order = 2

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, clip_sample: bool = False, clip_sample_range: float = 1.0,
                 timestep_spacing: str = "linspace", steps_offset: int = 0):
        self._register_config(locals())
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if use_exponential_sigmas or use_beta_sigmas:
            raise ValueError("use_exponential_sigmas / use_beta_sigmas are not supported; use use_karras_sigmas")
        self._set_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.use_karras_sigmas = use_karras_sigmas
        self.set_timesteps(num_train_timesteps)

    @property
    def state_in_first_order(self) -> bool:
        """True when the next call is the first (Euler) evaluation of an interval."""
        return self.dt is None

    def set_timesteps(self, num_inference_steps: int, device=None):
        cfg = self.config
        ts, sigmas, sig_train = self._spaced_sigmas(num_inference_steps)
        if cfg.use_karras_sigmas:
            sigmas = karras_sigmas(sigmas[-1], sigmas[0], num_inference_steps)
            ts = sigma_to_t(sigmas, np.log(sig_train)).astype(np.float32)
        sigmas = np.concatenate([sigmas, [0.0]])
        # interior σ's and timesteps twice: one per model call
        self.sigmas = np.concatenate([sigmas[:1], np.repeat(sigmas[1:-1], 2), sigmas[-1:]])
        self.timesteps = np.concatenate([ts[:1], np.repeat(ts[1:], 2)]).astype(np.float32)
        self.prev_derivative = None
        self.dt = None
        self.sample = None

    def step(self, model_output, timestep, sample, return_dict: bool = True):
        """One of the two evaluations of a Heun interval (see the module docstring)."""
        xp = check_same_shape(model_output, sample)
        if self._step_index is None:
            self._init_step_index(timestep)
        # 1. the interval's ends: on the correction call we sit at σ_{i+1}
        if self.state_in_first_order:
            sigma, sigma_next = float(self.sigmas[self._step_index]), float(self.sigmas[self._step_index + 1])
            sigma_in = sigma
        else:
            sigma, sigma_next = float(self.sigmas[self._step_index - 1]), float(self.sigmas[self._step_index])
            sigma_in = sigma_next

        # 2. x̂₀ at the σ where the model was evaluated
        x0 = x0_from_sigma_output(model_output, sample, sigma_in, self.config.prediction_type)

        # 3. optional clipping
        if self.config.clip_sample:
            x0 = xp.clip(x0, -self.config.clip_sample_range, self.config.clip_sample_range)

        # 4. Euler predictor, or trapezoidal corrector from the stored start (EDM Alg. 1, lines 5-8)
        if self.state_in_first_order:
            derivative = (sample - x0) / sigma
            dt = sigma_next - sigma
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
        else:
            derivative = 0.5 * (self.prev_derivative + (sample - x0) / sigma_next)
            dt, sample = self.dt, self.sample
            self.prev_derivative, self.dt, self.sample = None, None, None
        prev_sample = sample + derivative * dt

        self._step_index += 1
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
