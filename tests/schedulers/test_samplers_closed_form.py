"""Samplers are right end to end, without any network.

For data N(μ, s²) the optimal ε-predictor is known in closed form,
    ε*(x_t, t) = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ),
and for a Gaussian mixture it is −√(1−ᾱ) ∇ log p_t with p_t = Σ_k w_k N(√ᾱ μ_k, ᾱ s_k² + 1 − ᾱ).
Every scheduler's sampling loop, fed this predictor, must return samples with the data's
moments and CDF. Samples are 1-D and vectorised: n draws run through the loop at once.

First-order samplers (DDIM, Euler, ancestral) shrink a Gaussian's variance by O(1/steps) (DDIM
is Euler's method in σ = √((1−ᾱ)/ᾱ)); they get a looser tolerance at 50 steps and a separate
test that the error shrinks at 250 steps.
"""

import numpy as np
import pytest
from scipy.stats import norm

import npdiff.diffusion as D
import npdiff.schedulers as S
from npdiff.schedulers.sigmas import SigmaSchedulerMixin

N = 20000
GAUSS = dict(weights=[1.0], means=[0.5], stds=[1.0])
MIXTURE = dict(weights=[0.3, 0.7], means=[-1.5, 1.0], stds=[0.5, 0.6])


def mixture_eps(x, ab, weights, means, stds):
    """−√(1−ᾱ) ∇ log p_t(x) for a 1-D Gaussian mixture (exact optimal ε-predictor)."""
    w, m, s = (np.asarray(v, dtype=np.float64)[:, None, None] for v in (weights, means, stds))  # (K, 1, 1)
    var = ab * s**2 + 1 - ab
    logp = np.log(w) - 0.5 * np.log(var) - 0.5 * (x[None] - np.sqrt(ab) * m) ** 2 / var  # (K, n, 1)
    r = np.exp(logp - logp.max(axis=0))
    r /= r.sum(axis=0)
    score = (r * (-(x[None] - np.sqrt(ab) * m) / var)).sum(axis=0)
    return -np.sqrt(1 - ab) * score


def alpha_bar_at(sched, i, t):
    """ᾱ the network sees at loop index i: from σ for σ-schedulers, else from the integer timestep."""
    if isinstance(sched, SigmaSchedulerMixin):
        return 1.0 / (1.0 + float(sched.sigmas[i]) ** 2)
    return float(sched.alphas_cumprod[int(t)])


def run(sched, data, steps, seed=0, prediction_type="epsilon", **step_kw):
    rng = np.random.default_rng(seed)
    sched.set_timesteps(steps)
    x = rng.standard_normal((N, 1)) * sched.init_noise_sigma
    stochastic = "generator" in sched.step.__code__.co_varnames
    for i, t in enumerate(sched.timesteps):
        inp = sched.scale_model_input(x, t)
        ab = alpha_bar_at(sched, i, t)
        out = mixture_eps(inp, ab, **data)
        if prediction_type == "v_prediction":
            out = D.predict_v_from_eps(inp, out, ab)
        kw = dict(step_kw, generator=rng) if stochastic else step_kw
        x = sched.step(out, t, x, **kw).prev_sample
    return x[:, 0]


def check_moments(x, data, tol_std=0.05, tol_ks=0.02):
    """Mean, std and the Kolmogorov–Smirnov distance to the exact (mixture) CDF."""
    w, m, s = (np.asarray(data[k]) for k in ("weights", "means", "stds"))
    mean = (w * m).sum()
    std = np.sqrt((w * (s**2 + m**2)).sum() - mean**2)
    assert np.all(np.isfinite(x))
    assert abs(x.mean() - mean) < 0.03 * std, (x.mean(), mean)
    assert abs(x.std() / std - 1) < tol_std, (x.std(), std)
    xs = np.sort(x)
    cdf = (w[:, None] * norm.cdf((xs[None] - m[:, None]) / s[:, None])).sum(axis=0)
    ks = np.max(np.abs(np.arange(1, len(xs) + 1) / len(xs) - cdf))
    assert ks < tol_ks, ks


FIRST = dict(tol_std=0.10, tol_ks=0.04)  # first-order samplers at 50 steps
SECOND = dict(tol_std=0.05, tol_ks=0.02)
SAMPLERS = {
    "ddpm-1000": (lambda: S.DDPMScheduler(clip_sample=False), 1000, {}, SECOND),
    "ddim-50": (lambda: S.DDIMScheduler(clip_sample=False), 50, {}, FIRST),
    "ddim-50-eta1": (lambda: S.DDIMScheduler(clip_sample=False, timestep_spacing="trailing"), 50, dict(eta=1.0),
                     FIRST),
    "euler-50": (lambda: S.EulerDiscreteScheduler(), 50, {}, FIRST),
    "euler-karras-50": (lambda: S.EulerDiscreteScheduler(use_karras_sigmas=True), 50, {}, FIRST),
    "euler_a-50": (lambda: S.EulerAncestralDiscreteScheduler(), 50, {}, FIRST),
    "heun-20": (lambda: S.HeunDiscreteScheduler(beta_start=0.0001, beta_end=0.02), 20, {}, SECOND),
    "heun-karras-20": (lambda: S.HeunDiscreteScheduler(use_karras_sigmas=True, beta_start=0.0001, beta_end=0.02),
                       20, {}, SECOND),
    "dpm++2m-20": (lambda: S.DPMSolverMultistepScheduler(), 20, {}, SECOND),
    "dpm++3m-20": (lambda: S.DPMSolverMultistepScheduler(solver_order=3), 20, {}, SECOND),
    "dpm++2m-karras-25": (lambda: S.DPMSolverMultistepScheduler(use_karras_sigmas=True), 25, {}, SECOND),
    "dpmsolver-2-25": (lambda: S.DPMSolverMultistepScheduler(algorithm_type="dpmsolver",
                                                             final_sigmas_type="sigma_min"), 25, {}, SECOND),
    "sde-dpm++-50": (lambda: S.DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"), 50, {}, SECOND),
}


@pytest.mark.parametrize("data", [GAUSS, MIXTURE], ids=["gaussian", "mixture"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_recovers_data_distribution(name, data):
    make, steps, kw, tol = SAMPLERS[name]
    check_moments(run(make(), data, steps, **kw), data, **tol)


@pytest.mark.parametrize("name", [k for k, v in SAMPLERS.items() if v[3] is FIRST])
def test_first_order_samplers_converge(name):
    """At 250 steps the first-order samplers are within 2.5% in std and 0.02 in KS distance."""
    make, _, kw, _ = SAMPLERS[name]
    check_moments(run(make(), GAUSS, 250, **kw), GAUSS, tol_std=0.025, tol_ks=0.02)


@pytest.mark.parametrize("cls", [S.DDIMScheduler, S.EulerDiscreteScheduler, S.DPMSolverMultistepScheduler])
def test_v_prediction_sampling(cls):
    """The same optimal predictor, expressed as v, also recovers the data."""
    kw = dict(clip_sample=False) if cls is S.DDIMScheduler else {}
    x = run(cls(prediction_type="v_prediction", **kw), MIXTURE, 50, prediction_type="v_prediction")
    check_moments(x, MIXTURE, **(SECOND if cls is S.DPMSolverMultistepScheduler else FIRST))


def test_wrong_predictor_is_detected():
    """Sanity check of the harness: the seed's 1/(1−ᾱ) score scaling gives visibly wrong samples."""
    sched = S.DDIMScheduler(clip_sample=False)
    rng = np.random.default_rng(0)
    sched.set_timesteps(50)
    x = rng.standard_normal((N, 1))
    for t in sched.timesteps:
        ab = float(sched.alphas_cumprod[t])
        eps = mixture_eps(x, ab, **GAUSS) / np.sqrt(1 - ab)  # ε = −(1−ᾱ)·score instead of −√(1−ᾱ)·score
        x = sched.step(eps, t, x).prev_sample
    with pytest.raises(AssertionError):
        check_moments(x[:, 0], GAUSS)


@pytest.mark.parametrize("data", [GAUSS, MIXTURE], ids=["gaussian", "mixture"])
def test_score_sde_ve_predictor_corrector(data):
    """VE predictor–corrector with the exact score s(x, σ) of data ∗ N(0, σ²) (Song et al. 2021b, Alg. 2)."""
    sched = S.ScoreSdeVeScheduler(num_train_timesteps=500, sigma_max=20.0, sigma_min=0.005, snr=0.16)
    n_steps = 500
    sched.set_timesteps(n_steps)
    sched.set_sigmas(n_steps)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 1)) * sched.init_noise_sigma

    def score(x, sigma):  # VE: x = x₀ + σ z ⇒ ᾱ-free mixture with variances s_k² + σ²
        w, m, s = (np.asarray(data[k])[:, None, None] for k in ("weights", "means", "stds"))
        var = s**2 + sigma**2
        logp = np.log(w) - 0.5 * np.log(var) - 0.5 * (x[None] - m) ** 2 / var
        r = np.exp(logp - logp.max(axis=0))
        r /= r.sum(axis=0)
        return (r * (-(x[None] - m) / var)).sum(axis=0)

    for i, t in enumerate(sched.timesteps):
        sigma = float(sched.sigmas[i])
        for _ in range(sched.config.correct_steps):
            x = sched.step_correct(score(x, sigma), x, generator=rng).prev_sample
        out = sched.step_pred(score(x, sigma), t, x, generator=rng)
        x = out.prev_sample
    check_moments(out.prev_sample_mean[:, 0], data)


def test_annealed_langevin_dynamics():
    """NCSN annealed Langevin (Song & Ermon 2019, Alg. 1) with the exact score of N(μ, s² + σ²)."""
    sched = S.AnnealedLangevinDynamics(sigma_min=0.01, sigma_max=3.0, num_noise_levels=10, steps_per_level=100)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 1)) * sched.init_noise_sigma
    mu, s = GAUSS["means"][0], GAUSS["stds"][0]
    for t in sched.timesteps:
        sigma = sched.sigmas[t]
        x = sched.step(-(x - mu) / (s**2 + sigma**2), t, x, generator=rng).prev_sample
    check_moments(x[:, 0], GAUSS)
