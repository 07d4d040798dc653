"""Beta schedules and the precomputed coefficient table of a Gaussian diffusion.

Notation (Ho et al. 2020, "DDPM"; code indices follow diffusers):

    β_t          noise variance added at step t            ``betas[t]``
    α_t          1 − β_t                                    ``alphas[t]``
    ᾱ_t          Π_{s≤t} α_s  (signal fraction kept)        ``alphas_cumprod[t]``
    ᾱ_{t-1}      previous cumulative product, ᾱ_{-1} = 1    ``alphas_cumprod_prev[t]``
    SNR(t)       ᾱ_t / (1 − ᾱ_t)                            ``snr(t)``

Traps:
- Index ``t`` runs over 0 … T−1 (diffusers), so array index t is the paper's step t+1;
  ``alphas_cumprod_prev[0]`` is 1 (the clean data), not ᾱ_0 of some earlier step.
- diffusers names 1 − ᾱ_t ``beta_prod_t``: it is *not* a product of betas.
- Everything here is float64; cast to the model dtype where it is used.
"""

from __future__ import annotations

import math

import numpy as np

from npdiff.backend import broadcast_coef, to_device

#: Values accepted by ``beta_schedule`` (documented in docs/math.md and the schedulers).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def betas_for_alpha_bar(num_train_timesteps: int, alpha_bar_fn=None, max_beta: float = 0.999) -> np.ndarray:
    """Betas whose cumulative product follows a continuous ``alpha_bar_fn(s)``, s ∈ [0, 1].

    Definition: β_t = min(1 − ᾱ((t+1)/T) / ᾱ(t/T), max_beta)  (Nichol & Dhariwal 2021, eq. 17
    and the clipping below it). The default ``alpha_bar_fn`` is the cosine schedule
    ᾱ(s) = cos²(((s + 0.008) / 1.008) · π/2)  (Nichol & Dhariwal 2021, eq. 17, offset 0.008).
    """
    if alpha_bar_fn is None:
        def alpha_bar_fn(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    T = num_train_timesteps
    betas = [min(1.0 - alpha_bar_fn((i + 1) / T) / alpha_bar_fn(i / T), max_beta) for i in range(T)]
    return np.asarray(betas, dtype=np.float64)


def get_beta_schedule(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas=None,
) -> np.ndarray:
    """β_1 … β_T as a float64 array of shape (T,).

    - ``linear``: evenly spaced from beta_start to beta_end (Ho et al. 2020, §4).
    - ``scaled_linear``: evenly spaced in √β, then squared (Stable Diffusion / LDM).
    - ``squaredcos_cap_v2``: cosine ᾱ, β clipped at 0.999 (Nichol & Dhariwal 2021, eq. 17).
    - ``sigmoid``: beta_start + (beta_end − beta_start)·sigmoid(linspace(−6, 6, T)) (GeoDiff).
    - ``trained_betas`` (any array of length T) overrides the named schedule.
    """
    if trained_betas is not None:
        betas = np.asarray(trained_betas, dtype=np.float64).reshape(-1)
        if betas.size == 0 or np.any(betas <= 0) or np.any(betas >= 1):
            raise ValueError(f"trained_betas must be a non-empty array with values in (0, 1), got shape {betas.shape}")
        return betas
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    T = int(num_train_timesteps)
    if beta_schedule == "linear":
        return np.linspace(beta_start, beta_end, T, dtype=np.float64)
    if beta_schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(T)
    if beta_schedule == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T, dtype=np.float64)))
        return s * (beta_end - beta_start) + beta_start
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}: expected one of {BETA_SCHEDULES}")


def rescale_zero_terminal_snr(betas) -> np.ndarray:
    """Rescale betas so that ᾱ_T = 0 (SNR(T) = 0) while keeping ᾱ_1 (Lin et al. 2023, Alg. 1).

    Definition: with a_t = √ᾱ_t, the new a'_t = (a_t − a_T) · a_1 / (a_1 − a_T), a linear map
    sending a_T ↦ 0 and a_1 ↦ a_1; then α'_t = ᾱ'_t / ᾱ'_{t-1} and β'_t = 1 − α'_t.
    The last beta becomes exactly 1.
    """
    betas = np.asarray(betas, dtype=np.float64)
    a = np.sqrt(np.cumprod(1.0 - betas))
    a_first, a_last = a[0], a[-1]
    a = (a - a_last) * (a_first / (a_first - a_last))  # Lin et al. 2023, Alg. 1, lines 6-7
    alphas_cumprod = a**2
    alphas = np.concatenate([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1.0 - alphas


def _gather(coef: np.ndarray, t, x):
    """coef[t] shaped to broadcast against x: (B,) → (B, 1, …, 1); a scalar t gives a scalar.

    Shapes: coef (T,), t () or (B,), x (B, …).
    """
    t = np.asarray(to_device(t, "cpu"))
    if t.ndim == 0:
        return float(coef[int(t)])
    return broadcast_coef(coef[t.astype(np.int64)], x)


class NoiseSchedule:
    """A Gaussian diffusion's coefficients, precomputed once in float64.

    Build it from a diffusers-style config (``NoiseSchedule(beta_schedule="linear")``) or
    from betas (``NoiseSchedule(trained_betas=betas)``). Methods take integer timesteps
    ``t`` (a scalar or a (B,) array, index 0 … T−1) and arrays x of shape (B, …); they
    work on numpy or cupy arrays and return arrays of x's dtype.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, rescale_betas_zero_snr: bool = False):
        betas = get_beta_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas)
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.num_train_timesteps = len(betas)
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.concatenate([[1.0], self.alphas_cumprod[:-1]])
        # q(x_t | x_0) (Ho et al. 2020, eq. 4)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        # posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0, so log β̃ is clipped by replacing index 0 with β̃_1 (Nichol & Dhariwal 2021, §3.1)
        pv1 = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.concatenate([[pv1], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)

    def snr(self, t) -> np.ndarray:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021, eq. 2), float64; inf where ᾱ_t = 1."""
        ab = self.alphas_cumprod[np.asarray(t, dtype=np.int64)]
        with np.errstate(divide="ignore"):
            return ab / (1.0 - ab)

    def q_step_mean_variance(self, x_prev, t):
        """q(x_t | x_{t-1}) = N(√α_t x_{t-1}, β_t I) (Ho et al. 2020, eq. 2). Returns (mean, variance)."""
        return _gather(np.sqrt(self.alphas), t, x_prev) * x_prev, _gather(self.betas, t, x_prev)

    def q_mean_variance(self, x0, t):
        """q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Ho et al. 2020, eq. 4).

        Returns (mean, variance, log_variance); variance terms broadcast against x0.
        """
        var = 1.0 - self.alphas_cumprod
        with np.errstate(divide="ignore"):
            log_var = np.log(var)
        return _gather(self.sqrt_alphas_cumprod, t, x0) * x0, _gather(var, t, x0), _gather(log_var, t, x0)

    def q_sample(self, x0, t, noise):
        """Draw x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Ho et al. 2020, eq. 4 reparameterised).

        Shapes: x0, noise (B, …); t () or (B,). Same as diffusers' ``add_noise``.
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {noise.shape} must equal x0 shape {x0.shape}")
        return _gather(self.sqrt_alphas_cumprod, t, x0) * x0 + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior_mean_variance(self, x0, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I) (Ho et al. 2020, eqs. 6-7).

        μ̃_t = √ᾱ_{t-1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t-1}) / (1 − ᾱ_t) · x_t
        β̃_t = (1 − ᾱ_{t-1}) / (1 − ᾱ_t) · β_t
        Returns (mean, variance, log_variance_clipped). The seed post drops the square
        roots on α_t and ᾱ_{t-1} (docs/math.md, errata E4; test_posterior_is_gaussian_product).
        """
        mean = _gather(self.posterior_mean_coef1, t, x_t) * x0 + _gather(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _gather(self.posterior_variance, t, x_t), _gather(self.posterior_log_variance_clipped, t, x_t)

    def posterior_mean_from_eps(self, x_t, eps, t):
        """μ̃_t = (x_t − β_t / √(1 − ᾱ_t) · ε) / √α_t (Ho et al. 2020, eq. 11).

        The seed post writes (x_{t-1} − α_t/√(1−ᾱ_t) ε)/α_t (errata E5; test_posterior_mean_eps_form_equals_x0_form).
        """
        coef_eps = _gather(self.betas / self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return (x_t - coef_eps * eps) * _gather(1.0 / np.sqrt(self.alphas), t, x_t)
