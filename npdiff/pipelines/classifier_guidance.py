"""Classifier guidance (Dhariwal & Nichol 2021): steer an unconditional model with ∇ log p_φ(y | x_t).

Letters: B batch, s the classifier scale, ᾱ_t the scheduler's ``alphas_cumprod[t]``.

Bayes' rule on the noisy marginal, ∇ log p_t(x_t | y) = ∇ log p_t(x_t) + ∇ log p_φ(y | x_t),
and ∇ log p_t(x_t) = −ε(x_t, t)/√(1 − ᾱ_t) give the guided noise prediction
(Dhariwal & Nichol 2021, §4.2, Alg. 2; ``npdiff.diffusion.classifier_guidance``):

    ε̂ = ε_θ(x_t, t) − s √(1 − ᾱ_t) ∇_{x_t} log p_φ(y | x_t, t)

The seed post scales the gradient by 1 − ᾱ_t (no square root): errata E9, proven by
``tests/pipelines/test_classifier_guidance.py``. ε̂ replaces ε in the DDIM step (Alg. 2) and,
here, in the DDPM step too (Alg. 1's mean shift s Σ ∇ log p_φ is the same to first order in
β_t). Models predicting x₀ or v are converted to ε, guided, and converted back. The gradient
is taken through npdiff's autograd: one classifier forward and backward per step.
"""

from __future__ import annotations

import numpy as np

import npdiff.nn.functional as F

from ..autograd import Tensor, set_grad_enabled
from ..diffusion import classifier_guidance, model_output_to_x0_eps, predict_x0_from_eps, training_target
from ..schedulers import DDIMScheduler, DDPMScheduler
from .sampling import SampleOutput, eval_mode, sample


def log_prob_grad(classifier, x, t, labels) -> np.ndarray:
    """∇_x log p_φ(y | x, t) for each sample: x (B, *S), labels (B,) ints -> (B, *S) in x's float dtype.

    Σ_b log p_φ(y_b | x_b) is differentiated once; the samples do not interact in the
    classifier (GroupNorm, not BatchNorm), so row b of the gradient is sample b's own.
    """
    x = np.asarray(x)
    xt = Tensor(x if x.dtype in (np.float32, np.float64) else x.astype(np.float32), requires_grad=True)
    labels = np.asarray(labels, dtype=np.int64)
    params = [p for p in getattr(classifier, "parameters", lambda: [])() if p.requires_grad]
    for p in params:  # only ∂/∂x is wanted: leave the classifier's weights off the tape
        p.requires_grad = False
    try:
        return _log_prob_grad(classifier, xt, t, labels)
    finally:
        for p in params:
            p.requires_grad = True


def _log_prob_grad(classifier, xt, t, labels) -> np.ndarray:
    with set_grad_enabled(True):
        logits = classifier(xt, np.full((len(labels),), int(t), dtype=np.int64))  # (B, K)
        if logits.shape != (len(labels), logits.shape[1]) or labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise ValueError(f"labels must lie in 0 … {logits.shape[1] - 1} for classifier logits of shape "
                             f"{logits.shape}, got {labels.tolist()}")
        onehot = np.eye(logits.shape[1], dtype=np.float32)[labels]  # (B, K)
        (F.log_softmax(logits, dim=1) * onehot).sum().backward()
    return np.asarray(xt.grad.data)


class NullClassModel:
    """A class-conditional model always asked with the null class ∅: its unconditional half.

    A model trained with label dropout (Ho & Salimans 2022, §3.2) learns p(x) at y = ∅, so it
    can stand in for an unconditional model under classifier guidance: ``model(x, t)``.
    """

    def __init__(self, model, null_class: int):
        self.model, self.null_class = model, int(null_class)

    def eval(self):
        self.model.eval()
        return self

    def __call__(self, x, t, class_labels=None):
        return self.model(x, t, class_labels=np.full((x.shape[0],), self.null_class, dtype=np.int64))


class ClassifierGuidedPredictor:
    """``predict(x, t)`` = the model's output with ε replaced by ε̂ (module docstring).

    model:       unconditional ``model(x, t) -> Tensor``, predicting the scheduler's prediction_type.
    classifier:  ``classifier(x, t) -> logits`` (e.g. ``EncoderUNetModel``).
    scheduler:   a DDPM or DDIM scheduler (its ᾱ_t and prediction_type are used).
    """

    def __init__(self, model, classifier, scheduler, class_labels, classifier_scale: float):
        if not isinstance(scheduler, (DDPMScheduler, DDIMScheduler)):
            raise ValueError(f"classifier guidance needs a DDPM or DDIM scheduler, got {type(scheduler).__name__}")
        self.model, self.classifier, self.scheduler = model, classifier, scheduler
        self.class_labels = np.asarray(class_labels, dtype=np.int64).reshape(-1)
        self.scale = float(classifier_scale)

    def __call__(self, x, t):
        b = x.shape[0]
        t_batch = np.full((b,), int(t), dtype=np.int64)
        out = np.asarray(self.model(Tensor(x), t_batch).data)
        if self.scale == 0.0:
            return out
        ab = float(self.scheduler.alphas_cumprod[int(t)])
        kind = self.scheduler.config.prediction_type
        _, eps = model_output_to_x0_eps(out, x, ab, kind)
        eps_hat = classifier_guidance(eps, log_prob_grad(self.classifier, x, t, self.class_labels), ab, self.scale)
        return training_target(predict_x0_from_eps(x, eps_hat, ab), eps_hat, ab, kind).astype(np.float32)


def classifier_guided_sample(model, classifier, scheduler, class_labels, classifier_scale: float = 1.0, *,
                             shape, num_inference_steps: int | None = None, generator=None, trajectory_steps=None,
                             progress: bool = False, scheduler_kwargs: dict | None = None) -> SampleOutput:
    """Samples of class ``class_labels`` (B,) from an unconditional ``model`` guided by ``classifier``.

    ``shape`` (B, *S); scale 0 is plain unconditional sampling with the same generator.
    """
    labels = np.asarray(class_labels, dtype=np.int64).reshape(-1)
    if labels.shape != (shape[0],):
        raise ValueError(f"class_labels must have shape ({shape[0]},) for samples of shape {tuple(shape)}, "
                         f"got {labels.shape}")
    predict = ClassifierGuidedPredictor(model, classifier, scheduler, labels, classifier_scale)
    with eval_mode(classifier):
        return sample(model, scheduler, shape, generator=generator, num_inference_steps=num_inference_steps,
                      trajectory_steps=trajectory_steps, progress=progress, scheduler_kwargs=scheduler_kwargs,
                      predict=predict)
