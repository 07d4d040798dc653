"""Classifier guidance: the guided ε̂ = ε − s √(1−ᾱ_t) ∇ log p(y | x_t) (sign and factor, errata E9),
the gradient through npdiff's autograd against finite differences, and guided sampling of a
Gaussian mixture with its exact noisy classifier landing in the asked-for component."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npdiff as nd
import npdiff.nn as nn
from npdiff.autograd import Tensor
from npdiff.diffusion import model_output_to_x0_eps
from npdiff.models import EncoderUNetModel
from npdiff.pipelines import ClassifierGuidedPredictor, classifier_guided_sample, log_prob_grad
from npdiff.schedulers import DDIMScheduler, DDPMScheduler
from tests.gradcheck import numeric_grad
from tests.pipelines.closed_form import GaussianEps

COV = np.array([[1.0, 0.3], [0.3, 0.5]])
MEAN = np.array([0.2, -0.4])


class Linear2Class(nn.Module):
    """logits = x W + b for 2-D points: an analytic ∇ log p(y|x) = W[:, y] − Σ_k softmax_k W[:, k]."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 3)

    def forward(self, x, t):
        return self.fc(x)

    def grad_log_prob(self, x, y):
        w = np.asarray(self.fc.weight.data, np.float64).T  # (2, K)
        logits = x @ w + np.asarray(self.fc.bias.data, np.float64)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return w[:, y].T - p @ w.T  # (B, 2)


def as_model(eps):
    return lambda x, t, class_labels=None: Tensor(eps(x.data, t))


@settings(max_examples=10)
@given(t=st.integers(50, 950), scale=st.floats(0.5, 8.0), prediction_type=st.sampled_from(["epsilon", "v_prediction"]))
def test_guided_eps_is_the_scaled_score_of_the_tilted_density(t, scale, prediction_type):
    """ε̂ = −√(1−ᾱ) ∇ log [p_t(x) p(y|x)^s]: with the exact ε* of Gaussian data and a linear classifier,
    both terms are closed forms. The seed's 1−ᾱ factor (E9) misses by (√(1−ᾱ) − (1−ᾱ)) s ‖∇ log p‖."""
    sched = DDIMScheduler(clip_sample=False, prediction_type=prediction_type)
    eps_star = GaussianEps(MEAN, COV, sched.alphas_cumprod)
    ab = float(sched.alphas_cumprod[t])

    def model(x, tt, class_labels=None):  # the exact predictor in the scheduler's parameterisation
        e = eps_star(x.data, tt)
        return Tensor(e if prediction_type == "epsilon" else ((e - np.sqrt(1 - ab) * x.data) / np.sqrt(ab)))

    nd.manual_seed(1)
    clf = Linear2Class()
    x = np.random.default_rng(t).standard_normal((6, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    out = ClassifierGuidedPredictor(model, clf, sched, y, scale)(x, t)
    _, eps_hat = model_output_to_x0_eps(out.astype(np.float64), x.astype(np.float64), ab, prediction_type)

    score = -(x - np.sqrt(ab) * MEAN) @ np.linalg.inv(ab * COV + (1 - ab) * np.eye(2))  # ∇ log p_t
    g = clf.grad_log_prob(x.astype(np.float64), y)
    expected = -np.sqrt(1 - ab) * (score + scale * g)
    # float32 arithmetic on O(1) values, a few operations deep (the v round trip divides by √ᾱ ≥ 0.2)
    tol = 1e-4 * (1 + np.abs(expected).max())
    np.testing.assert_allclose(eps_hat, expected, atol=tol)
    seed = -np.sqrt(1 - ab) * score - (1 - ab) * scale * g  # E9: the seed's factor
    assert np.abs(seed - expected).max() > (np.sqrt(1 - ab) - (1 - ab)) * scale * np.abs(g).max() * 0.5


def test_log_prob_grad_matches_finite_differences():
    """Through the whole EncoderUNetModel (conv, GroupNorm, attention, time embedding), in float64."""
    nd.manual_seed(0)
    clf = EncoderUNetModel(sample_size=8, in_channels=1, num_classes=4, block_out_channels=(8, 16),
                           norm_num_groups=4, attention_head_dim=8).double()
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    y, t = np.array([1, 3]), 300
    g = log_prob_grad(clf, x, t, y)

    def log_p():
        with nd.no_grad():
            logits = np.asarray(clf(Tensor(x), np.full(2, t)).data, np.float64)
        logits = logits - logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return float(logp[np.arange(2), y].sum())

    rng = np.random.default_rng(1)
    for _ in range(12):
        idx = tuple(int(rng.integers(0, s)) for s in x.shape)
        fd = numeric_grad(log_p, x, idx, eps=1e-5)
        # central differences in float64: truncation O(eps²) and rounding O(1e-16 / eps) on O(1) values
        assert abs(g[idx] - fd) <= 1e-6 + 1e-4 * abs(fd), (idx, g[idx], fd)
    assert all(p.requires_grad and p.grad is None for p in clf.parameters())  # weights left off the tape


MIX_W, MIX_MU, MIX_S = np.array([0.5, 0.5]), np.array([-1.5, 1.5]), np.array([0.4, 0.4])


def mixture_terms(x, ab):
    """Per-component log w_k N(x; √ᾱ μ_k, ᾱ s_k² + 1 − ᾱ) for 1-D points x (B, 1): (B, K)."""
    var = ab * MIX_S**2 + 1 - ab
    return np.log(MIX_W) - 0.5 * np.log(var) - 0.5 * (x - np.sqrt(ab) * MIX_MU) ** 2 / var


class ExactMixtureClassifier:
    """p(k | x_t) of the Gaussian mixture at x_t's noise level, as Tensor ops (differentiable in x)."""

    def __init__(self, alphas_cumprod):
        self.alphas_cumprod = alphas_cumprod

    def __call__(self, x, t):
        ab = float(self.alphas_cumprod[int(np.asarray(t).reshape(-1)[0])])
        var = ab * MIX_S**2 + 1 - ab  # (K,)
        d = x - Tensor(np.sqrt(ab) * MIX_MU[None].astype(np.float32))  # (B, K) by broadcasting (B, 1)
        return d * d * Tensor((-0.5 / var)[None].astype(np.float32)) + Tensor(
            (np.log(MIX_W) - 0.5 * np.log(var))[None].astype(np.float32))


def mixture_eps_model(alphas_cumprod):
    def model(x, t, class_labels=None):
        ab = float(alphas_cumprod[int(np.asarray(t).reshape(-1)[0])])
        logp = mixture_terms(x.data.astype(np.float64), ab)
        r = np.exp(logp - logp.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        score = (r * -(x.data - np.sqrt(ab) * MIX_MU) / (ab * MIX_S**2 + 1 - ab)).sum(1, keepdims=True)
        return Tensor((-np.sqrt(1 - ab) * score).astype(np.float32))
    return model


@pytest.mark.parametrize("make, steps", [(lambda: DDIMScheduler(clip_sample=False), 50),
                                         (lambda: DDPMScheduler(clip_sample=False), 200)])
def test_guided_sampling_with_the_exact_classifier_samples_the_class(make, steps):
    """At scale 1 the guided score is ∇ log p_t(x | y): the samples fall in the asked-for component."""
    sched = make()
    n = 2000
    y = np.arange(n) % 2
    out = classifier_guided_sample(mixture_eps_model(sched.alphas_cumprod), ExactMixtureClassifier(sched.alphas_cumprod),
                                   sched, y, 1.0, shape=(n, 1), num_inference_steps=steps, generator=0).samples[:, 0]
    in_class = np.where(y == 1, out > 0, out < 0)
    assert in_class.mean() > 0.99
    for k in (0, 1):  # and with the component's spread, not collapsed onto its mean
        assert abs(out[y == k].mean() - MIX_MU[k]) < 0.1 and abs(out[y == k].std() / MIX_S[k] - 1) < 0.15
    free = classifier_guided_sample(mixture_eps_model(sched.alphas_cumprod), ExactMixtureClassifier(sched.alphas_cumprod),
                                    sched, y, 0.0, shape=(n, 1), num_inference_steps=steps, generator=0).samples[:, 0]
    assert 0.4 < np.where(y == 1, free > 0, free < 0).mean() < 0.6  # scale 0: unguided, the class is a coin flip


def test_errors():
    clf = Linear2Class()
    with pytest.raises(ValueError, match="labels must lie in 0 … 2"):
        log_prob_grad(clf, np.zeros((2, 2)), 10, np.array([0, 3]))
    from npdiff.schedulers import EulerDiscreteScheduler

    with pytest.raises(ValueError, match="needs a DDPM or DDIM scheduler"):
        ClassifierGuidedPredictor(None, clf, EulerDiscreteScheduler(), [0], 1.0)
    with pytest.raises(ValueError, match=r"class_labels must have shape \(3,\)"):
        classifier_guided_sample(None, clf, DDIMScheduler(), [0, 1], 1.0, shape=(3, 2), num_inference_steps=2)
