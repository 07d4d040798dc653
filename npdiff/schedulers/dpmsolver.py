"""Multistep DPM-Solver and DPM-Solver++ (Lu et al. 2022a, 2022b), with diffusers'
``DPMSolverMultistepScheduler`` semantics.

Notation (VP form; s = current time, t = next time, h = λ_t − λ_s > 0):

    α_t = 1/√(σ²+1),  σ_t = σ α_t    (VP signal/noise scales from the VE σ; α_t² + σ_t² = 1)
    λ_t = log(α_t/σ_t)               half log-SNR, increasing as sampling proceeds
    m_k                              the model output converted to x̂₀ (++) or ε̂ (plain), newest last

First order (= DDIM):
    ++ :  x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x̂₀            (Lu et al. 2022b, eq. 9 / Alg. 1)
    ε  :  x_t = (α_t/α_s) x_s − σ_t (e^{h} − 1) ε̂              (Lu et al. 2022a, eq. 3.7)
Second order multistep, r₀ = h₀/h, D₀ = m₀, D₁ = (m₀ − m₁)/r₀:
    ++ midpoint: x_t = (σ_t/σ_s) x_s − α_t(e^{−h}−1) D₀ − ½ α_t(e^{−h}−1) D₁   (Lu et al. 2022b, Alg. 2)
Third order uses two divided differences (Lu et al. 2022b, App. B / Lu et al. 2022a, Alg. 5).
``lower_order_final`` drops to first/second order at the last steps when fewer than 15
steps are used — which keeps few-step sampling stable.

Trap: the VE ``sigmas`` array stores σ = σ_t/α_t, not σ_t.
"""

from __future__ import annotations

import math

import numpy as np

from npdiff.backend import broadcast_coef
from npdiff.diffusion import PREDICTION_TYPES
from npdiff.schedulers.base import (
    SchedulerOutput,
    TIMESTEP_SPACINGS,
    check_choice,
    randn_like,
    threshold_sample,
)
from npdiff.schedulers.sigmas import (
    SigmaSchedulerMixin,
    karras_sigmas,
    sigma_to_t,
    train_sigmas,
    zero_snr_alphas_cumprod,
)

ALGORITHM_TYPES = ("dpmsolver++", "dpmsolver", "sde-dpmsolver++")


def _alpha_sigma(sigma: float):
    """(α_t, σ_t) of a VE σ: α_t = 1/√(σ²+1), σ_t = σ α_t."""
    a = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return a, sigma * a


def _lambda(alpha: float, sigma: float) -> float:
    return math.log(alpha) - math.log(sigma) if sigma > 0 else math.inf


class DPMSolverMultistepScheduler(SigmaSchedulerMixin):
    """Multistep DPM-Solver(++) of order 1, 2 or 3.

    Options:
    - beta_schedule: one of `linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`; ``trained_betas`` overrides it.
    - prediction_type: one of `epsilon`, `sample`, `v_prediction`.
    - timestep_spacing: one of `linspace`, `leading`, `trailing`.
    - algorithm_type: one of `dpmsolver++`, `dpmsolver`, `sde-dpmsolver++`.
    - solver_type: `midpoint` or `heun`; solver_order: 1, 2 or 3; use_karras_sigmas; use_lu_lambdas.

    As in diffusers, ``algorithm_type="dpmsolver"`` needs ``final_sigmas_type="sigma_min"``
    (its ε-form update divides by σ_t, which is 0 at the end otherwise).
    """

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint", lower_order_final: bool = True,
                 euler_at_final: bool = False, use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, use_lu_lambdas: bool = False, use_flow_sigmas: bool = False,
                 flow_shift: float = 1.0, final_sigmas_type: str = "zero", lambda_min_clipped: float = -float("inf"),
                 variance_type: str | None = None, timestep_spacing: str = "linspace", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential"):
        self._register_config(locals())
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES)
        check_choice("solver_type", solver_type, ("midpoint", "heun"))
        check_choice("solver_order", solver_order, (1, 2, 3))
        check_choice("final_sigmas_type", final_sigmas_type, ("zero", "sigma_min"))
        if variance_type is not None:
            check_choice("variance_type", variance_type, ("learned", "learned_range"))
        if use_exponential_sigmas or use_beta_sigmas or use_flow_sigmas or use_dynamic_shifting:
            raise ValueError("exponential / beta / flow sigmas and dynamic shifting are not supported")
        if algorithm_type == "dpmsolver" and final_sigmas_type == "zero":
            raise ValueError("final_sigmas_type='zero' is not supported for algorithm_type='dpmsolver'; "
                             "use final_sigmas_type='sigma_min'")
        self._set_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                           rescale_betas_zero_snr)
        if rescale_betas_zero_snr:
            self.alphas_cumprod = zero_snr_alphas_cumprod(self.alphas_cumprod)
        self.alpha_t = np.sqrt(self.alphas_cumprod)
        self.sigma_t = np.sqrt(1.0 - self.alphas_cumprod)
        self.lambda_t = np.log(self.alpha_t) - np.log(self.sigma_t)
        self.sigmas = train_sigmas(self.alphas_cumprod)
        self.num_inference_steps = None
        self.timesteps = np.arange(num_train_timesteps)[::-1].astype(np.int64)
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Timesteps spaced over [0, T_clip) where λ ≥ ``lambda_min_clipped``; σ at each (+ final σ)."""
        cfg = self.config
        T = cfg.num_train_timesteps
        if num_inference_steps < 1 or num_inference_steps > T:
            raise ValueError(f"num_inference_steps={num_inference_steps} must be in 1 … num_train_timesteps={T}")
        n = num_inference_steps
        last = T - int(np.searchsorted(self.lambda_t[::-1], cfg.lambda_min_clipped))
        # DPM-Solver spaces n+1 points and drops the final 0 (differs from spaced_timesteps)
        if cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            ts = (np.arange(n + 1) * (last // (n + 1))).round()[::-1][:-1].astype(np.int64) + cfg.steps_offset
        else:
            ts = np.arange(last, 0, -T / n).round().astype(np.int64) - 1
        sig_train = train_sigmas(self.alphas_cumprod)
        log_sig = np.log(sig_train)
        if cfg.use_karras_sigmas:
            sigmas = karras_sigmas(sig_train[0], sig_train[-1], n)
            ts = sigma_to_t(sigmas, log_sig)
            if cfg.beta_schedule != "squaredcos_cap_v2":
                ts = ts.round()
        elif cfg.use_lu_lambdas:
            # uniform in log σ = −λ (Lu et al. 2022b, §3.3 "uniform λ")
            sigmas = np.exp(np.linspace(log_sig[-1], log_sig[0], n))
            ts = sigma_to_t(sigmas, log_sig)
            if cfg.beta_schedule != "squaredcos_cap_v2":
                ts = ts.round()
        else:
            sigmas = np.interp(ts, np.arange(T), sig_train)
        final = sig_train[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [final]])
        self.timesteps = np.asarray(ts).astype(np.int64)
        self.num_inference_steps = len(self.timesteps)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """Position of ``timestep``; the last index when absent (as diffusers)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        idx = np.nonzero(schedule == int(round(float(np.asarray(timestep).reshape(())))))[0]
        if len(idx) == 0:
            return len(schedule) - 1
        return int(idx[1] if len(idx) > 1 else idx[0])

    def scale_model_input(self, sample, *args, **kwargs):
        """DPM-Solver works on VP samples: no input scaling."""
        return sample

    def add_noise(self, original_samples, noise, timesteps):
        """x_t = α_t x₀ + σ_t ε with (α_t, σ_t) from the σ at ``timesteps``."""
        sig = self._sigmas_for(timesteps)
        a = 1.0 / np.sqrt(sig**2 + 1.0)
        return broadcast_coef(a, original_samples) * original_samples + broadcast_coef(sig * a, original_samples) * noise

    def convert_model_output(self, model_output, sample):
        """x̂₀ for the ++ algorithms, ε̂ for plain DPM-Solver (Lu et al. 2022b, §4 "data prediction")."""
        cfg = self.config
        if cfg.variance_type in ("learned", "learned_range"):
            model_output = model_output[:, : sample.shape[1]]
        alpha, sigma = _alpha_sigma(float(self.sigmas[self._step_index]))
        if cfg.prediction_type == "epsilon":
            x0, eps = None, model_output
        elif cfg.prediction_type == "sample":
            x0, eps = model_output, None
        else:  # v: x̂₀ = α x − σ v, ε̂ = α v + σ x (Salimans & Ho 2022, §4)
            x0, eps = alpha * sample - sigma * model_output, alpha * model_output + sigma * sample
        if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            x0 = (sample - sigma * eps) / alpha if x0 is None else x0
            return threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value) if cfg.thresholding else x0
        eps = (sample - alpha * x0) / sigma if eps is None else eps
        if cfg.thresholding:
            x0 = threshold_sample((sample - sigma * eps) / alpha, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
            eps = (sample - alpha * x0) / sigma
        return eps

    def _update(self, order: int, sample, noise):
        """The order-1/2/3 multistep update from σ_{i} to σ_{i+1} (formulas in the module docstring)."""
        cfg, i = self.config, self._step_index
        sig = [float(self.sigmas[i + 1])] + [float(self.sigmas[i - k]) for k in range(order)]
        (a_t, s_t), *prev = [_alpha_sigma(s) for s in sig]
        a_s0, s_s0 = prev[0]
        lam_t = _lambda(a_t, s_t)
        lams = [_lambda(a, s) for a, s in prev]
        h = lam_t - lams[0]
        # a repeated timestep (rounding repeats t = 500 among 1,000 linspace steps) is an interval
        # of zero length: its step is the identity (the order-1 update at h = 0), and a difference
        # across it is undefined, so the order drops to what distinct λ's support (diffusers: NaN)
        if h == 0 or (order >= 2 and lams[0] == lams[1]):
            order = 1
        elif order == 3 and lams[1] == lams[2]:
            order = 2
        m = self.model_outputs
        plus = cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++")
        sde = cfg.algorithm_type == "sde-dpmsolver++"
        em = math.exp(-h) if math.isfinite(h) else 0.0  # e^{−h}; h = ∞ when σ_t = 0
        # 1. differences D₀, D₁, D₂ of the stored outputs
        D0 = m[-1]
        D1 = D2 = None
        if order == 2:
            r0 = (lams[0] - lams[1]) / h
            D1 = (m[-1] - m[-2]) * (1.0 / r0)
        elif order == 3:
            r0, r1 = (lams[0] - lams[1]) / h, (lams[1] - lams[2]) / h
            D1_0, D1_1 = (m[-1] - m[-2]) * (1.0 / r0), (m[-2] - m[-3]) * (1.0 / r1)
            D1 = D1_0 + (D1_0 - D1_1) * (r0 / (r0 + r1))
            D2 = (D1_0 - D1_1) * (1.0 / (r0 + r1))
        # 2. the update
        if sde:  # SDE-DPM-Solver++ (Lu et al. 2022b, §5 / App. C)
            em2 = em * em
            x = (s_t / s_s0 * em) * sample + (a_t * (1.0 - em2)) * D0
            if order == 2:
                c = 0.5 * a_t * (1.0 - em2) if cfg.solver_type == "midpoint" else a_t * ((1.0 - em2) / (-2.0 * h) + 1.0)
                x = x + c * D1
            elif order == 3:
                x = x + (a_t * ((1.0 - em2) / (-2.0 * h) + 1.0)) * D1 \
                    + (a_t * ((1.0 - em2 - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * D2
            return x + (s_t * math.sqrt(max(1.0 - em2, 0.0))) * noise
        if plus:
            phi1 = em - 1.0  # e^{−h} − 1
            x = (s_t / s_s0) * sample - (a_t * phi1) * D0
            if order == 2:
                c = -0.5 * a_t * phi1 if cfg.solver_type == "midpoint" else a_t * (phi1 / h + 1.0)
                x = x + c * D1
            elif order == 3:
                x = x + (a_t * (phi1 / h + 1.0)) * D1 - (a_t * ((phi1 + h) / h**2 - 0.5)) * D2
            return x
        phi1 = math.expm1(h)  # e^{h} − 1
        x = (a_t / a_s0) * sample - (s_t * phi1) * D0
        if order == 2:
            c = -0.5 * s_t * phi1 if cfg.solver_type == "midpoint" else -s_t * (phi1 / h - 1.0)
            x = x + c * D1
        elif order == 3:
            x = x - (s_t * (phi1 / h - 1.0)) * D1 - (s_t * ((phi1 - h) / h**2 - 0.5)) * D2
        return x

    def step(self, model_output, timestep, sample, generator: np.random.Generator | None = None,
             variance_noise=None, return_dict: bool = True):
        """One multistep update; the order grows 1 → solver_order as outputs accumulate."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self._step_index is None:
            self._init_step_index(timestep)
        cfg, n, i = self.config, len(self.timesteps), self._step_index
        # 1. lower the order at the end (few steps, or σ_final = 0 where higher orders blow up)
        lower_final = i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15)
                                      or cfg.final_sigmas_type == "zero")
        lower_second = i == n - 2 and cfg.lower_order_final and n < 15

        # 2. convert and push the model output (newest last)
        converted = self.convert_model_output(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [converted]

        # 3. noise for the SDE variant
        noise = randn_like(sample, generator, variance_noise) if cfg.algorithm_type == "sde-dpmsolver++" else None

        # 4. pick the order and update
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or lower_final:
            order = 1
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or lower_second:
            order = 2
        else:
            order = 3
        prev_sample = self._update(order, sample, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)

        # 5. x̂₀ for the output
        alpha, sigma = _alpha_sigma(float(self.sigmas[i]))
        x0 = converted if cfg.algorithm_type != "dpmsolver" else (sample - sigma * converted) / alpha
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
