"""The VAE's maths, proven on DiagonalGaussianDistribution (docs/math.md, "The VAE").

- closed-form KL(N(μ, σ²) ‖ N(0, I)) and KL between two diagonal Gaussians vs Monte Carlo;
- nll is −log N(z; μ, σ²);
- on a linear-Gaussian model (z ~ N(0, I), x | z ~ N(Wz + b, s² I)), where every term is
  exact: log p(x) = ELBO + KL(q(z|x) ‖ p(z|x)), ELBO ≤ log p(x) with equality at the true
  posterior, and p(x) = ∫ p(x|z) p(z) dz;
- reparameterisation: z = μ + σ ε has mean μ and variance σ², ∂z/∂μ = 1 and
  ∂z/∂logσ² = (z − μ)/2; the log-variance clamp [−30, 20]; ``deterministic``.

Monte-Carlo tolerances are 5 standard errors of the estimate itself (its sample
standard deviation / √N); exact identities are checked in float64 to a few ulps
times the magnitude of the terms.
"""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import npdiff as nd
from npdiff.models import DiagonalGaussianDistribution

EPS64 = np.finfo(np.float64).eps
SETTINGS = settings(max_examples=8)


def _params(rng, c, h=1, w=1, batch=1, logvar_scale=1.0):
    mean = rng.standard_normal((batch, c, h, w))
    logvar = logvar_scale * rng.standard_normal((batch, c, h, w))
    return np.concatenate([mean, logvar], axis=1)  # (B, 2c, h, w) = [μ, log σ²]


def _log_std_normal(z):
    return -0.5 * (z * z + math.log(2 * math.pi))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), c=st.integers(1, 3))
def test_kl_to_standard_normal_matches_monte_carlo(seed, c):
    rng = np.random.default_rng(seed)
    post = DiagonalGaussianDistribution(_params(rng, c, 2, 2))
    kl = post.kl().numpy()[0]
    n = 20000
    mean, std = post.mean.numpy(), post.std.numpy()
    z = mean + std * rng.standard_normal((n, *mean.shape[1:]))  # (n, c, 2, 2)
    # KL = E_q[log q(z) − log p(z)] per sample, summed over latent elements
    log_q = -0.5 * (((z - mean) / std) ** 2 + np.log(2 * math.pi) + post.logvar.numpy())
    per_sample = (log_q - _log_std_normal(z)).sum(axis=(1, 2, 3))
    se = per_sample.std(ddof=1) / math.sqrt(n)
    assert abs(per_sample.mean() - kl) <= 5 * se + 1e-12, (per_sample.mean(), kl, se)
    assert kl >= 0


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_kl_between_two_diagonal_gaussians_matches_monte_carlo(seed):
    rng = np.random.default_rng(seed)
    q = DiagonalGaussianDistribution(_params(rng, 2, 1, 3))
    p = DiagonalGaussianDistribution(_params(rng, 2, 1, 3))
    n = 20000
    z = q.mean.numpy() + q.std.numpy() * rng.standard_normal((n, 2, 1, 3))
    per_sample = (p.nll(nd.tensor(z)).numpy() - q.nll(nd.tensor(z)).numpy())  # log q(z) − log p(z), (n,)
    se = per_sample.std(ddof=1) / math.sqrt(n)
    kl = q.kl(p).numpy()[0]
    assert abs(per_sample.mean() - kl) <= 5 * se + 1e-12
    np.testing.assert_allclose(q.kl(q).numpy(), 0.0, atol=1e-12)  # KL(q ‖ q) = 0


def test_nll_is_minus_log_density():
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    post = DiagonalGaussianDistribution(_params(rng, 3, 2, 2, batch=2))
    z = rng.standard_normal((2, 3, 2, 2))
    want = -norm.logpdf(z, post.mean.numpy(), post.std.numpy()).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(post.nll(nd.tensor(z)).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(post.nll(nd.tensor(z), dims=(1,)).numpy(),
                               -norm.logpdf(z, post.mean.numpy(), post.std.numpy()).sum(axis=1), rtol=1e-12)


# ----------------------------------------------------------------------------
# linear-Gaussian model: every term of the ELBO identity in closed form
# ----------------------------------------------------------------------------


def _mvn_logpdf(x, mean, cov):
    d = x - mean
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (d @ np.linalg.solve(cov, d) + logdet + len(x) * math.log(2 * math.pi))


def _linear_gaussian(rng, d, D, diagonal_posterior=False):
    """z ~ N(0, I_d), x | z ~ N(W z + b, s² I_D): W, b, s and one observed x."""
    W = rng.standard_normal((D, d))
    if diagonal_posterior:  # orthogonal columns: WᵀW diagonal, so p(z|x) has a diagonal covariance
        Q, _ = np.linalg.qr(rng.standard_normal((D, d)))
        W = Q * rng.uniform(0.5, 2.0, d)
    b, s = rng.standard_normal(D), rng.uniform(0.3, 1.5)
    x = W @ rng.standard_normal(d) + b + s * rng.standard_normal(D)
    # true posterior p(z|x) = N(m, S): S = (I + WᵀW/s²)⁻¹, m = S Wᵀ (x − b)/s²  (Bishop 2006, eq. 2.116)
    S = np.linalg.inv(np.eye(d) + W.T @ W / s**2)
    m = S @ W.T @ (x - b) / s**2
    log_px = _mvn_logpdf(x, b, W @ W.T + s**2 * np.eye(D))  # p(x) = N(b, WWᵀ + s² I)
    return W, b, s, x, m, S, log_px


def _elbo(W, b, s, x, post):
    """E_q[log p(x|z)] − KL(q ‖ p(z)) for q = N(μ, diag σ²), exactly."""
    mu, var = post.mean.numpy().ravel(), post.var.numpy().ravel()
    D = len(x)
    r = x - W @ mu - b
    # E_q ‖x − Wz − b‖² = ‖x − Wμ − b‖² + tr(W diag σ² Wᵀ)
    expected_loglik = -0.5 * D * math.log(2 * math.pi * s**2) - (r @ r + np.sum(W**2 * var)) / (2 * s**2)
    return expected_loglik - post.kl().numpy()[0]


def _kl_to_full_gaussian(post, m, S):
    mu, var = post.mean.numpy().ravel(), post.var.numpy().ravel()
    Sinv = np.linalg.inv(S)
    d = m - mu
    _, logdet_S = np.linalg.slogdet(S)
    return 0.5 * (np.sum(np.diag(Sinv) * var) + d @ Sinv @ d - len(mu) + logdet_S - np.sum(np.log(var)))


def _q(mu, logvar):
    return DiagonalGaussianDistribution(np.concatenate([mu, logvar]).reshape(1, -1, 1, 1))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 3), D=st.integers(3, 5))
def test_log_evidence_equals_elbo_plus_posterior_kl(seed, d, D):
    rng = np.random.default_rng(seed)
    W, b, s, x, m, S, log_px = _linear_gaussian(rng, d, D)
    post = _q(rng.standard_normal(d), rng.standard_normal(d))  # any diagonal q(z|x)
    elbo, gap = _elbo(W, b, s, x, post), _kl_to_full_gaussian(post, m, S)
    scale = abs(log_px) + abs(elbo) + gap + 1.0
    assert abs(log_px - (elbo + gap)) <= 1e3 * EPS64 * scale
    assert gap >= 0 and elbo <= log_px + 1e3 * EPS64 * scale  # the evidence lower bound


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 3))
def test_elbo_is_tight_at_the_true_posterior(seed, d):
    rng = np.random.default_rng(seed)
    W, b, s, x, m, S, log_px = _linear_gaussian(rng, d, d + 2, diagonal_posterior=True)
    assert np.allclose(S, np.diag(np.diag(S)), atol=1e-12)
    exact = _q(m, np.log(np.diag(S)))
    tol = 1e3 * EPS64 * (abs(log_px) + 1.0)
    assert abs(_elbo(W, b, s, x, exact) - log_px) <= tol
    # any other q is strictly worse
    for shift in (0.1, -0.3):
        assert _elbo(W, b, s, x, _q(m + shift, np.log(np.diag(S)))) < log_px - tol
        assert _elbo(W, b, s, x, _q(m, np.log(np.diag(S)) + shift)) < log_px - tol


def test_marginal_is_the_integral_of_likelihood_times_prior():
    """p(x) = ∫ p(x|z) p(z) dz: a prior-sampling Monte-Carlo estimate matches the closed form."""
    rng = np.random.default_rng(0)
    W, b, s, x, m, S, log_px = _linear_gaussian(rng, 2, 3)
    n = 200000
    z = rng.standard_normal((n, 2))
    r = x - z @ W.T - b  # (n, D)
    lik = np.exp(-0.5 * np.sum(r * r, 1) / s**2 - 1.5 * math.log(2 * math.pi * s**2))  # p(x|z), (n,)
    se = lik.std(ddof=1) / math.sqrt(n)
    assert abs(lik.mean() - math.exp(log_px)) <= 5 * se


# ----------------------------------------------------------------------------
# the reparameterisation trick
# ----------------------------------------------------------------------------


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1))
def test_reparameterised_samples_have_the_posterior_moments(seed):
    rng = np.random.default_rng(seed)
    n, c = 4000, 3
    one = _params(rng, c)  # (1, 2c, 1, 1)
    post = DiagonalGaussianDistribution(np.repeat(one, n, axis=0))
    z = post.sample(generator=np.random.default_rng(seed + 1)).numpy()[:, :, 0, 0]  # (n, c)
    mu, var = one[0, :c, 0, 0], np.exp(one[0, c:, 0, 0])
    assert np.all(np.abs(z.mean(0) - mu) <= 5 * np.sqrt(var / n))
    # Var of the sample variance of a Gaussian: 2σ⁴/(n − 1)
    assert np.all(np.abs(z.var(0, ddof=1) - var) <= 5 * var * np.sqrt(2.0 / (n - 1)))


def test_sample_is_mean_plus_std_times_the_generators_normal_draws():
    rng = np.random.default_rng(1)
    params = _params(rng, 2, 3, 3, batch=2).astype(np.float32)
    post = DiagonalGaussianDistribution(params)
    eps = np.random.default_rng(9).standard_normal((2, 2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(post.sample(generator=np.random.default_rng(9)).numpy(),
                                  (post.mean.numpy() + post.std.numpy() * eps))
    assert post.sample(generator=np.random.default_rng(9)).dtype == np.float32
    nd.manual_seed(3)
    a = post.sample().numpy()
    nd.manual_seed(3)
    np.testing.assert_array_equal(a, post.sample().numpy())  # None: npdiff's global generator


def test_reparameterisation_gradients():
    """∂z/∂μ = 1 and ∂z/∂logσ² = σ ε / 2 = (z − μ)/2, element by element."""
    rng = np.random.default_rng(2)
    params = nd.tensor(_params(rng, 3, 2, 2, batch=2), requires_grad=True)
    post = DiagonalGaussianDistribution(params)
    z = post.sample(generator=np.random.default_rng(4))
    z.sum().backward()
    g = params.grad.numpy()
    np.testing.assert_array_equal(g[:, :3], 1.0)
    want = (z.numpy() - post.mean.numpy()) / 2
    np.testing.assert_allclose(g[:, 3:], want, rtol=4 * EPS64, atol=4 * EPS64 * np.abs(want).max())


def test_logvar_is_clamped_and_deterministic_has_no_spread():
    params = np.zeros((1, 4, 1, 1))
    params[0, 2, 0, 0], params[0, 3, 0, 0] = -50.0, 40.0  # log σ² below and above the clamp
    p = nd.tensor(params, requires_grad=True)
    post = DiagonalGaussianDistribution(p)
    np.testing.assert_array_equal(post.logvar.numpy().ravel(), [-30.0, 20.0])
    post.var.sum().backward()
    np.testing.assert_array_equal(p.grad.numpy()[0, 2:].ravel(), [0.0, 0.0])  # no gradient through the clamp
    det = DiagonalGaussianDistribution(_params(np.random.default_rng(0), 2), deterministic=True)
    np.testing.assert_array_equal(det.std.numpy(), 0.0)
    np.testing.assert_array_equal(det.sample(np.random.default_rng(0)).numpy(), det.mode().numpy())
    assert det.kl().numpy().tolist() == [0.0] and det.nll(det.mean).numpy().tolist() == [0.0]


def test_odd_channel_count_is_refused():
    import pytest

    with pytest.raises(ValueError, match=r"even channel count.*\(1, 3, 2, 2\)"):
        DiagonalGaussianDistribution(np.zeros((1, 3, 2, 2)))
