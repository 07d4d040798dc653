"""The sampling loop: noise → data with any scheduler, with classifier-free guidance.

Letters: B batch, S sample shape (C, H, W) or (D,), n inference steps.

The loop is the one diffusers' pipelines run (Ho et al. 2020, Alg. 2, generalised to
any ``scheduler.step``):

    x ~ N(0, σ_init² I)                                     σ_init = scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)            (identity for DDPM/DDIM)
        out  = model(x_in, t, y)                            ε, x₀ or v (the scheduler's prediction_type)
        x    = scheduler.step(out, t, x).prev_sample

Classifier-free guidance (Ho & Salimans 2022, eq. 6): the model is asked twice, with the
class y and with the null class ∅, and the outputs are extrapolated,
out = out_∅ + s · (out_y − out_∅). Both passes run as **one** forward over a batch of
2B (rows 0…B−1 conditional, B…2B−1 unconditional), which is what every reference
pipeline does: one large batch is faster than two small ones. Mixing is done on the raw
model output, which is valid for ε, x₀ and v alike (each is affine in ε at fixed x_t).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field

import numpy as np

from ..autograd import Tensor, no_grad
from ..diffusion import classifier_free_guidance


@dataclass
class SampleOutput:
    """What ``sample`` returns.

    samples:     (B, *S) float32, the final x at t = 0.
    timesteps:   the scheduler timesteps at which the trajectory was recorded.
    trajectory:  (K, B, *S) x_t at those steps (input of the step), or None.
    pred_x0:     (K, B, *S) the scheduler's x̂₀ at those steps, or None.
    """

    samples: np.ndarray
    timesteps: list = field(default_factory=list)
    trajectory: np.ndarray | None = None
    pred_x0: np.ndarray | None = None


def _model_output(model, x, t, class_labels, guidance_scale, null_class):
    """One (possibly guided) model evaluation at timestep t; plain array in, plain array out."""
    b = x.shape[0]
    t_batch = np.full((b,), t, dtype=np.float32 if np.asarray(t).dtype.kind == "f" else np.int64)
    if class_labels is None:
        return np.asarray(model(Tensor(x), t_batch).data)
    if guidance_scale == 1.0:
        return np.asarray(model(Tensor(x), t_batch, class_labels=class_labels).data)
    x2 = np.concatenate([x, x], axis=0)  # (2B, *S): [conditional | unconditional]
    t2 = np.concatenate([t_batch, t_batch])  # (2B,)
    y2 = np.concatenate([class_labels, np.full((b,), null_class, dtype=np.int64)])  # (2B,)
    out = np.asarray(model(Tensor(x2), t2, class_labels=y2).data)
    out_cond, out_uncond = out[:b], out[b:]  # (B, *S) each
    return classifier_free_guidance(out_uncond, out_cond, guidance_scale)


def check_conditioning(b: int, class_labels, guidance_scale: float, null_class):
    """(B,) int64 labels (or None) after checking them against the batch and the guidance settings."""
    if class_labels is None:
        if guidance_scale != 1.0:
            raise ValueError(f"guidance_scale={guidance_scale} needs class_labels (an unconditional model has "
                             "nothing to guide)")
        return None
    class_labels = np.asarray(class_labels, dtype=np.int64).reshape(-1)
    if class_labels.shape != (b,):
        raise ValueError(f"class_labels must have shape ({b},) for a batch of {b}, got {class_labels.shape}")
    if guidance_scale != 1.0 and null_class is None:
        raise ValueError("classifier-free guidance (guidance_scale != 1) needs null_class, the label index "
                         "the model was trained with for 'no class'")
    return class_labels


def denoiser(model, class_labels=None, guidance_scale: float = 1.0, null_class: int | None = None):
    """``predict(x_in, t) -> model output`` (plain arrays): ``model`` with classifier-free guidance.

    Every loop in npdiff.pipelines asks its denoiser through this one signature, so a caller
    may pass any callable instead (a text-conditioned model, classifier guidance, a closed-form
    optimal predictor in tests).
    """
    def predict(x, t):
        return _model_output(model, x, t, class_labels, guidance_scale, null_class)

    return predict


def _record_set(trajectory_steps, n: int) -> set:
    if trajectory_steps is None:
        return set()
    if isinstance(trajectory_steps, (int, np.integer)):
        return set(np.unique(np.round(np.linspace(0, n - 1, max(int(trajectory_steps), 1))).astype(int)).tolist())
    record = {int(i) for i in trajectory_steps}
    if any(i < 0 or i >= n for i in record):
        raise ValueError(f"trajectory_steps must lie in 0 … {n - 1} for {n} scheduler steps, got {sorted(record)}")
    return record


def step_kwargs_for(scheduler, rng, scheduler_kwargs: dict | None = None) -> dict:
    """Extra ``step`` arguments, with ``generator=rng`` for the stochastic samplers (they draw from our seed)."""
    kwargs = dict(scheduler_kwargs or {})
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = rng
    return kwargs


@contextlib.contextmanager
def eval_mode(model):
    """``model.eval()`` for the duration (no-op for plain callables), restoring training mode after."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def denoise(predict, scheduler, x, timesteps, step_kwargs: dict | None = None, trajectory_steps=None,
            progress: bool = False) -> SampleOutput:
    """Run ``x ← scheduler.step(predict(scale_model_input(x, t), t), t, x)`` over ``timesteps``.

    The loop shared by sampling from noise, SDEdit and DDIM editing. ``x`` (B, *S) is the
    sample at the first timestep; ``trajectory_steps`` as in ``sample``. Runs without a tape
    (``predict`` may re-enable it for a gradient, as classifier guidance does).
    """
    n = len(timesteps)
    record = _record_set(trajectory_steps, n)
    step_kwargs = step_kwargs or {}
    x = np.asarray(x, dtype=np.float32)
    kept_t, kept_x, kept_x0 = [], [], []
    steps = range(n)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="sampling", unit="step", leave=False, disable=None)
    with no_grad():
        for i in steps:
            t = timesteps[i]
            out = predict(scheduler.scale_model_input(x, t), t)
            step = scheduler.step(out, t, x, **step_kwargs)
            if i in record:
                kept_t.append(t.item() if hasattr(t, "item") else t)
                kept_x.append(x.copy())
                x0 = step.pred_original_sample
                kept_x0.append(np.full_like(x, np.nan) if x0 is None else np.asarray(x0, dtype=np.float32))
            x = np.asarray(step.prev_sample, dtype=np.float32)
    return SampleOutput(samples=x, timesteps=kept_t,
                        trajectory=np.stack(kept_x) if kept_x else None,
                        pred_x0=np.stack(kept_x0) if kept_x0 else None)


def scheduler_timesteps(scheduler, num_inference_steps: int | None) -> list:
    """``set_timesteps(num_inference_steps)`` when given, then the scheduler's timesteps as a list."""
    if num_inference_steps is not None:
        scheduler.set_timesteps(int(num_inference_steps))
    timesteps = list(np.asarray(scheduler.timesteps))
    if not timesteps:
        raise ValueError("the scheduler has no timesteps; call set_timesteps or pass num_inference_steps")
    return timesteps


def as_generator(generator) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an int seed or None."""
    return generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)


def sample(model, scheduler, shape, class_labels=None, guidance_scale: float = 1.0, generator=None,
           num_inference_steps: int | None = None, null_class: int | None = None, trajectory_steps=None,
           progress: bool = False, scheduler_kwargs: dict | None = None, predict=None) -> SampleOutput:
    """Draw ``shape[0]`` samples from ``model`` with ``scheduler``.

    model:               ``model(x, t, class_labels=None) -> Tensor`` (UNet2DModel, ToyMLPDenoiser).
    scheduler:           any npdiff scheduler; ``set_timesteps(num_inference_steps)`` is called
                         when ``num_inference_steps`` is given, else its current timesteps are used.
    shape:               (B, *S).
    class_labels:        (B,) ints for a class-conditional model, else None.
    guidance_scale:      classifier-free guidance scale s (1: plain conditional sampling,
                         0: unconditional). Needs ``null_class`` when s != 1.
    generator:           ``numpy.random.Generator`` (or an int seed) for the initial noise and
                         every stochastic step, so a seed fixes the result.
    trajectory_steps:    None, an int K (record K evenly spaced steps, first and last included)
                         or a list of step indices (0 … n−1) at which to record x_t and x̂₀.
    scheduler_kwargs:    extra keyword arguments for ``scheduler.step`` (e.g. ``eta`` for DDIM).
    predict:             a ``predict(x_in, t) -> output`` callable used instead of ``model`` with
                         ``class_labels`` / ``guidance_scale`` (e.g. classifier guidance).
    """
    rng = as_generator(generator)
    shape = tuple(int(s) for s in shape)
    class_labels = check_conditioning(shape[0], class_labels, guidance_scale, null_class)
    timesteps = scheduler_timesteps(scheduler, num_inference_steps)
    _record_set(trajectory_steps, len(timesteps))  # bad indices fail before any work
    step_kwargs = step_kwargs_for(scheduler, rng, scheduler_kwargs)
    x = (rng.standard_normal(shape) * float(scheduler.init_noise_sigma)).astype(np.float32)  # x_T
    predict = predict or denoiser(model, class_labels, guidance_scale, null_class)
    with eval_mode(model):
        return denoise(predict, scheduler, x, timesteps, step_kwargs, trajectory_steps, progress)


class DiffusionPipeline:
    """A model and a scheduler bundled: ``pipe(batch_size, num_inference_steps, ...)`` → SampleOutput.

    ``sample_shape`` is one item's shape ((C, H, W) or (D,)); ``null_class`` the label
    the model was trained with for "no class" (classifier-free guidance).
    """

    def __init__(self, model, scheduler, sample_shape, null_class: int | None = None):
        self.model, self.scheduler = model, scheduler
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.null_class = null_class

    def __call__(self, batch_size: int = 1, num_inference_steps: int = 50, class_labels=None,
                 guidance_scale: float = 1.0, generator=None, trajectory_steps=None, progress: bool = False,
                 **scheduler_kwargs) -> SampleOutput:
        return sample(self.model, self.scheduler, (batch_size, *self.sample_shape), class_labels=class_labels,
                      guidance_scale=guidance_scale, generator=generator, num_inference_steps=num_inference_steps,
                      null_class=self.null_class, trajectory_steps=trajectory_steps, progress=progress,
                      scheduler_kwargs=scheduler_kwargs or None)
