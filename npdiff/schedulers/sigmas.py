"""Shared machinery of the σ-parameterised (Karras-style) schedulers: Euler, Euler-ancestral, Heun, DPM-Solver.

Notation (Karras et al. 2022, "EDM", §2 and Table 1; Song et al. 2021, VE SDE):

    σ_t = √((1 − ᾱ_t) / ᾱ_t)          the VE noise level of DDPM timestep t (``sigmas``)
    x_σ = x₀ + σ ε  =  x_t / √ᾱ_t      the VE sample; the model sees x_σ / √(σ² + 1) = x_t
    dx/dσ = (x − x̂₀(x, σ)) / σ        the probability-flow ODE in σ (EDM eq. 3 with s(t) = 1)

Traps: ``timesteps`` are float32 here (they may be fractional under Karras sigmas) and a step
is located by *value* in ``timesteps`` (first match, or the second where a value repeats, as
diffusers does for img2img); ``sigmas`` has one more entry than ``timesteps`` (the final σ).
"""

from __future__ import annotations

import numpy as np

from npdiff.backend import broadcast_coef, get_array_module
from npdiff.schedulers.base import SchedulerMixin, as_scalar, spaced_timesteps


def sigma_to_t(sigmas, log_sigmas_train: np.ndarray) -> np.ndarray:
    """Fractional DDPM timestep of each σ: linear interpolation of t in log σ between train levels.

    ``log_sigmas_train`` ascends with t. σ below the smallest level maps to 0, above the
    largest to T−1. Shapes: sigmas (n,) → (n,).
    """
    log_sigma = np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-10))
    T = len(log_sigmas_train)
    low = np.clip(np.searchsorted(log_sigmas_train, log_sigma, side="right") - 1, 0, T - 2)
    lo, hi = log_sigmas_train[low], log_sigmas_train[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0.0, 1.0)
    return (1.0 - w) * low + w * (low + 1)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0 … n−1 (Karras et al. 2022, eq. 5)."""
    ramp = np.linspace(0.0, 1.0, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training timestep, ascending in t (float64)."""
    return np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)


def zero_snr_alphas_cumprod(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Replace ᾱ_T = 0 by 2⁻²⁴ so σ_T stays finite (diffusers' choice for σ-schedulers)."""
    out = alphas_cumprod.copy()
    out[-1] = 2.0**-24
    return out


class SigmaSchedulerMixin(SchedulerMixin):
    """Step-index bookkeeping, input scaling and VE ``add_noise`` for σ-schedulers."""

    _step_index = None
    _begin_index = None

    def _init_train_sigmas(self, num_train_timesteps: int, rescale_betas_zero_snr: bool) -> None:
        """Training-time timesteps and σ's (descending, with a final 0) before ``set_timesteps``."""
        if rescale_betas_zero_snr:
            self.alphas_cumprod = zero_snr_alphas_cumprod(self.alphas_cumprod)
        self.num_inference_steps = None
        self.is_scale_input_called = False
        self.timesteps = np.arange(num_train_timesteps)[::-1].astype(np.float32)
        self.sigmas = np.concatenate([train_sigmas(self.alphas_cumprod)[::-1], [0.0]])

    def _spaced_sigmas(self, num_inference_steps: int):
        """The start of every σ-scheduler's ``set_timesteps``: the config's spaced timesteps
        (fractional, float32), σ at them by linear interpolation in t, and the training σ's.
        Also resets the step bookkeeping."""
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        self._step_index = None
        self._begin_index = None
        ts = spaced_timesteps(cfg.timestep_spacing, num_inference_steps, cfg.num_train_timesteps, cfg.steps_offset,
                              round_linspace=False).astype(np.float32)
        sig_train = train_sigmas(self.alphas_cumprod)
        return ts, np.interp(ts, np.arange(len(sig_train)), sig_train), sig_train

    @property
    def step_index(self):
        """Index of the current step in ``timesteps`` (None before the first step)."""
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at this index instead of locating the first timestep by value (img2img)."""
        self._begin_index = begin_index

    @property
    def init_noise_sigma(self) -> float:
        """Std of the initial noise: σ_max, or √(σ_max² + 1) for `leading` spacing (as diffusers)."""
        s = float(np.max(self.sigmas))
        return s if self.config.timestep_spacing in ("linspace", "trailing") else (s * s + 1.0) ** 0.5

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        idx = np.nonzero(schedule == np.asarray(as_scalar(timestep), dtype=schedule.dtype))[0]
        if len(idx) == 0:
            raise ValueError(f"timestep {as_scalar(timestep)} is not one of scheduler.timesteps")
        return int(idx[1] if len(idx) > 1 else idx[0])

    def _init_step_index(self, timestep) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def scale_model_input(self, sample, timestep):
        """x_σ / √(σ² + 1): the VP sample x_t the network was trained on (EDM Table 1, c_in)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = float(self.sigmas[self._step_index])
        self.is_scale_input_called = True
        return sample / (sigma * sigma + 1.0) ** 0.5

    def _sigmas_for(self, timesteps) -> np.ndarray:
        ts = np.asarray(timesteps).reshape(-1)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in ts]
        else:
            idx = [self._step_index if self._step_index is not None else self._begin_index] * len(ts)
        return np.asarray(self.sigmas, dtype=np.float64)[idx]

    def add_noise(self, original_samples, noise, timesteps):
        """x_σ = x₀ + σ ε with σ looked up from ``timesteps`` (values of ``self.timesteps``)."""
        return original_samples + broadcast_coef(self._sigmas_for(timesteps), original_samples) * noise


def x0_from_sigma_output(model_output, sample, sigma: float, prediction_type: str):
    """x̂₀ from a model output at VE level σ (sample is x_σ = x₀ + σ ε).

    ε: x̂₀ = x_σ − σ ε̂. v: the network saw x_t = x_σ/√(σ²+1), and x̂₀ = √ᾱ x_t − √(1−ᾱ) v̂ with
    √ᾱ = 1/√(σ²+1), √(1−ᾱ) = σ/√(σ²+1), i.e. x̂₀ = x_σ/(σ²+1) − σ/√(σ²+1) v̂ (Salimans & Ho 2022, §4).
    """
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma * sigma + 1.0) ** 0.5) + sample / (sigma * sigma + 1.0)
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}: expected one of ('epsilon', 'sample', 'v_prediction')")


def check_same_shape(model_output, sample):
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output shape {model_output.shape} does not match sample shape {sample.shape}")
    return get_array_module(sample)
