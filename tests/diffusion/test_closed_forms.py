"""Property tests of the forward process, the posterior and the ε / x₀ / v conversions.

Each test proves a closed form in npdiff/diffusion against an independent computation
(composition of single steps, Monte Carlo, numerical quadrature of a Gaussian product), and
the ``seed_*`` tests show that the seed blog post's versions of the same formulas fail them.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npdiff.diffusion as D

schedules = st.builds(
    lambda name, T, start, ratio, zsnr: D.NoiseSchedule(T, start, start * ratio, name, rescale_betas_zero_snr=zsnr),
    st.sampled_from(D.BETA_SCHEDULES),
    st.integers(10, 1000),
    st.floats(1e-5, 1e-3),
    st.floats(2.0, 200.0),
    st.booleans(),
)
plain_schedules = st.builds(
    lambda name, T, start, ratio: D.NoiseSchedule(T, start, start * ratio, name),
    st.sampled_from(D.BETA_SCHEDULES), st.integers(10, 1000), st.floats(1e-5, 1e-3), st.floats(2.0, 200.0),
)


def gaussian_logpdf(x, mean, var):
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


# 1. forward process --------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(schedules, st.data())
def test_composed_single_steps_equal_closed_form(sched, data):
    """Composing q(x_s|x_{s-1}) for s ≤ t gives mean √ᾱ_t x₀ and variance 1 − ᾱ_t (float64)."""
    t = data.draw(st.integers(0, sched.num_train_timesteps - 1))
    x0 = np.array([[1.0]])
    mean, var = x0, 0.0
    for s in range(t + 1):  # x_s = √α_s x_{s-1} + √β_s ε: means scale, variances add
        mean, step_var = sched.q_step_mean_variance(mean, s)
        var = sched.alphas[s] * var + step_var
    want_mean, want_var, _ = sched.q_mean_variance(x0, t)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(var, want_var, rtol=1e-10, atol=1e-15)


@settings(max_examples=15, deadline=None)
@given(plain_schedules, st.data())
def test_q_sample_moments_match_q_mean_variance(sched, data):
    """Monte Carlo: q_sample draws have the closed-form mean and variance (5-σ bounds)."""
    t = data.draw(st.integers(0, sched.num_train_timesteps - 1))
    x0 = np.float64(data.draw(st.floats(-2.0, 2.0)))
    n = 40000
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    draws = sched.q_sample(np.full((n, 1), x0), np.full(n, t), rng.standard_normal((n, 1)))
    mean, var, _ = sched.q_mean_variance(np.array([[x0]]), t)
    assert abs(draws.mean() - mean.item()) < 5 * np.sqrt(var / n)
    assert abs(draws.var() - var) < 5 * var * np.sqrt(2.0 / n)


def test_q_sample_keeps_dtype_and_per_sample_timesteps():
    sched = D.NoiseSchedule()
    x0 = np.ones((3, 2, 4, 4), np.float32)
    out = sched.q_sample(x0, np.array([0, 10, 999]), np.zeros_like(x0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0, 0], sched.sqrt_alphas_cumprod[[0, 10, 999]], rtol=1e-6)
    with pytest.raises(ValueError, match="noise shape"):
        sched.q_sample(x0, 0, np.zeros((3, 2)))


# 2. posterior --------------------------------------------------------------------------------

def numerical_posterior(sched, x0, xt, t):
    """Moments of q(x_t|x_{t-1}) q(x_{t-1}|x_0) over a fine grid of x_{t-1} (Bayes' rule by quadrature)."""
    a, b = sched.alphas[t], sched.betas[t]
    m_prior, v_prior = np.sqrt(sched.alphas_cumprod[t - 1]) * x0, 1.0 - sched.alphas_cumprod[t - 1]
    m_lik, v_lik = xt / np.sqrt(a), b / a  # q(x_t|x_{t-1}) as a density of x_{t-1}, up to a constant
    s = np.sqrt(min(v_prior, v_lik))
    grid = np.linspace(min(m_prior, m_lik) - 10 * s, max(m_prior, m_lik) + 10 * s, 400001)
    logp = gaussian_logpdf(xt, np.sqrt(a) * grid, b) + gaussian_logpdf(grid, m_prior, v_prior)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    mean = (w * grid).sum()
    return mean, (w * (grid - mean) ** 2).sum()


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(D.BETA_SCHEDULES), st.integers(20, 1000), st.data())
def test_posterior_is_gaussian_product(name, T, data):
    """μ̃_t and β̃_t equal the moments of the normalised product of the two Gaussians (Bayes)."""
    sched = D.NoiseSchedule(T, beta_schedule=name)
    t = data.draw(st.integers(1, T - 1))
    x0 = data.draw(st.floats(-1.0, 1.0))
    xt = data.draw(st.floats(-2.0, 2.0))
    mean, var, logvar = sched.q_posterior_mean_variance(np.array([[x0]]), np.array([[xt]]), t)
    num_mean, num_var = numerical_posterior(sched, x0, xt, t)
    s = np.sqrt(var)
    assert abs(mean.item() - num_mean) < 1e-4 * s
    np.testing.assert_allclose(var, num_var, rtol=1e-4)
    np.testing.assert_allclose(logvar, np.log(var), rtol=1e-12)


def test_seed_posterior_mean_without_square_roots_is_wrong():
    """Errata E4: the seed's μ̃ = α_t(1−ᾱ_{t-1})/(1−ᾱ_t) x_t + ᾱ_{t-1}β_t/(1−ᾱ_t) x_0 fails Bayes."""
    sched = D.NoiseSchedule(1000, beta_schedule="linear")
    t, x0, xt = 600, 0.7, -0.4
    num_mean, _ = numerical_posterior(sched, x0, xt, t)
    a, ab, ab_prev, b = sched.alphas[t], sched.alphas_cumprod[t], sched.alphas_cumprod[t - 1], sched.betas[t]
    seed = a * (1 - ab_prev) / (1 - ab) * xt + ab_prev * b / (1 - ab) * x0
    ours, _, _ = sched.q_posterior_mean_variance(np.array([[x0]]), np.array([[xt]]), t)
    assert abs(ours.item() - num_mean) < 1e-6
    assert abs(seed - num_mean) > 1e-3


@settings(max_examples=40, deadline=None)
@given(plain_schedules, st.data())
def test_posterior_mean_eps_form_equals_x0_form(sched, data):
    """μ̃_t(x_t, x_0) = (x_t − β_t/√(1−ᾱ_t) ε)/√α_t when x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Ho eq. 10-11)."""
    t = data.draw(st.integers(1, sched.num_train_timesteps - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    x0, eps = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    xt = sched.q_sample(x0, t, eps)
    mean_x0, _, _ = sched.q_posterior_mean_variance(x0, xt, t)
    np.testing.assert_allclose(sched.posterior_mean_from_eps(xt, eps, t), mean_x0, rtol=1e-9, atol=1e-10)
    # Errata E5: the seed's (x_{t-1} − α_t/√(1−ᾱ_t) ε)/α_t is not μ̃ (not even a function of x_t)
    seed = (xt - sched.alphas[t] / np.sqrt(1 - sched.alphas_cumprod[t]) * eps) / sched.alphas[t]
    assert not np.allclose(seed, mean_x0, atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(schedules)
def test_posterior_variance_below_beta_and_clipped_log(sched):
    """β̃_t ≤ β_t, β̃_0 = 0 and the clipped log-variance replaces index 0 by log β̃_1."""
    assert np.all(sched.posterior_variance <= sched.betas * (1 + 1e-12))
    assert sched.posterior_variance[0] == 0.0
    assert sched.posterior_log_variance_clipped[0] == pytest.approx(np.log(sched.posterior_variance[1]))
    np.testing.assert_allclose(sched.posterior_log_variance_clipped[1:], np.log(sched.posterior_variance[1:]))


# 3. conversions and schedules ------------------------------------------------------------------

arrays = st.integers(0, 2**32 - 1).map(lambda s: np.random.default_rng(s).standard_normal((5, 2, 3)))


@settings(max_examples=40, deadline=None)
@given(arrays, arrays, st.floats(1e-4, 1 - 1e-4), st.booleans())
def test_eps_x0_v_round_trips(x0, eps, ab, per_sample):
    """ε → x₀ → ε and (x₀, ε) → v → (x₀, ε) are identities, with scalar or per-sample ᾱ."""
    ab = np.full(x0.shape[0], ab) if per_sample else ab
    xt = np.sqrt(ab).reshape(-1, 1, 1) * x0 + np.sqrt(1 - np.asarray(ab)).reshape(-1, 1, 1) * eps
    tol = dict(rtol=1e-7, atol=1e-6 / np.sqrt(np.min(ab) * np.min(1 - np.asarray(ab))))
    np.testing.assert_allclose(D.predict_x0_from_eps(xt, eps, ab), x0, **tol)
    np.testing.assert_allclose(D.predict_eps_from_x0(xt, x0, ab), eps, **tol)
    v = D.predict_v(x0, eps, ab)
    np.testing.assert_allclose(D.predict_x0_from_v(xt, v, ab), x0, **tol)
    np.testing.assert_allclose(D.predict_eps_from_v(xt, v, ab), eps, **tol)
    np.testing.assert_allclose(D.predict_v_from_eps(xt, eps, ab), v, **tol)
    for kind, out in (("epsilon", eps), ("sample", x0), ("v_prediction", v)):
        got_x0, got_eps = D.model_output_to_x0_eps(out, xt, ab, kind)
        np.testing.assert_allclose(got_x0, x0, **tol)
        np.testing.assert_allclose(got_eps, eps, **tol)
        np.testing.assert_allclose(D.training_target(x0, eps, ab, kind), out, **tol)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(D.BETA_SCHEDULES), st.integers(2, 2000), st.floats(1e-5, 1e-3), st.floats(2.0, 200.0))
def test_alphas_cumprod_strictly_decreasing_and_zero_snr(name, T, start, ratio):
    """ᾱ_t decreases strictly; zero-terminal-SNR rescaling gives ᾱ_T = 0 and keeps ᾱ_1 (Lin et al. 2023)."""
    sched = D.NoiseSchedule(T, start, start * ratio, name)
    assert np.all(np.diff(sched.alphas_cumprod) < 0)
    assert np.all((sched.betas > 0) & (sched.betas < 1))
    z = D.NoiseSchedule(T, start, start * ratio, name, rescale_betas_zero_snr=True)
    assert z.alphas_cumprod[-1] == pytest.approx(0.0, abs=1e-15)
    assert z.alphas_cumprod[0] == pytest.approx(sched.alphas_cumprod[0], rel=1e-12)
    assert np.all(np.diff(z.alphas_cumprod) < 0)
    assert z.snr(T - 1) == pytest.approx(0.0, abs=1e-15)


def test_cosine_schedule_is_nichol_dhariwal():
    """squaredcos_cap_v2: ᾱ_t = f(t)/f(0) with f = cos²(((t/T)+s)/(1+s) π/2), β ≤ 0.999."""
    T = 1000
    sched = D.NoiseSchedule(T, beta_schedule="squaredcos_cap_v2")
    f = np.cos(((np.arange(T + 1) / T) + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    np.testing.assert_allclose(sched.betas, betas, rtol=1e-12)
    assert sched.betas.max() == pytest.approx(0.999)


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="beta_schedule"):
        D.get_beta_schedule("cosine")
    with pytest.raises(ValueError, match="trained_betas"):
        D.get_beta_schedule(trained_betas=[0.1, 1.5])
    with pytest.raises(ValueError, match="prediction_type"):
        D.model_output_to_x0_eps(np.zeros(2), np.zeros(2), 0.5, "x0")
    np.testing.assert_allclose(D.get_alphas_cumprod("linear", 10), np.cumprod(1 - np.linspace(1e-4, 0.02, 10)))
