"""What every scheduler shares: the config, the output dataclass, noise, spacing and thresholding.

Schedulers follow diffusers' class names, constructor arguments and ``step()`` semantics, on
numpy (or cupy) arrays. Coefficients are float64 (``npdiff.diffusion.NoiseSchedule``) and are
cast to the sample's dtype where they multiply it.
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass

import numpy as np

from npdiff.backend import get_array_module, to_device
from npdiff.configuration_utils import FrozenConfig
from npdiff.diffusion import NoiseSchedule, predict_v

#: Values accepted by ``timestep_spacing`` (documented in docs/math.md and the schedulers).
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


@dataclass
class SchedulerOutput:
    """``prev_sample``: x at the next (less noisy) timestep; ``pred_original_sample``: x̂₀ (may be None)."""

    prev_sample: object
    pred_original_sample: object = None


class SchedulerMixin:
    """Config capture and ``from_config``, shared by all schedulers."""

    order = 1

    def _set_schedule(self, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                      rescale_betas_zero_snr=False) -> None:
        """The float64 coefficient table of a diffusers-style config, and its diffusers attribute names."""
        self.schedule = NoiseSchedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                      rescale_betas_zero_snr)
        self.betas = self.schedule.betas
        self.alphas = self.schedule.alphas
        self.alphas_cumprod = self.schedule.alphas_cumprod

    def _register_config(self, local_vars: dict) -> None:
        """Store the constructor arguments (defaults included) as ``self.config``."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        self.config = FrozenConfig({n: local_vars[n] for n in names})

    @classmethod
    def from_config(cls, config: dict, **overrides):
        """Build from a diffusers-style config dict, ignoring keys this class does not take.

        As diffusers' ``from_config``: keys starting with ``_`` (``_class_name``,
        ``_diffusers_version``) are dropped silently; other unknown keys are dropped with a
        warning unless some npdiff scheduler takes them (a DDIM config loaded into Euler).
        """
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        # keys the source left at its own defaults take this class's defaults (as diffusers)
        defaulted = set(config.get("_use_default_values", ()))
        merged = {**{k: v for k, v in dict(config).items() if k not in defaulted}, **overrides}
        known_elsewhere = set()
        for sub in _all_scheduler_classes():
            known_elsewhere |= set(inspect.signature(sub.__init__).parameters)
        unknown = [k for k in merged if k not in params and not k.startswith("_") and k not in known_elsewhere]
        if unknown:
            warnings.warn(f"config keys {sorted(unknown)} are not used by {cls.__name__} and are ignored", stacklevel=2)
        return cls(**{k: v for k, v in merged.items() if k in params})

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- folders: diffusers' scheduler_config.json ---------------------------------
    config_name = "scheduler_config.json"

    def save_pretrained(self, save_directory) -> None:
        """Write ``scheduler_config.json`` (atomically) as diffusers does: class name + arguments."""
        from npdiff import io as nd_io

        folder = os.fspath(save_directory)
        os.makedirs(folder, exist_ok=True)
        config = {"_class_name": type(self).__name__, "_diffusers_version": "0.42.1", **self.config}
        nd_io.save_json(os.path.join(folder, self.config_name), config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, subfolder: str | None = None, **overrides):
        """Read ``scheduler_config.json`` from a local folder (``subfolder="scheduler"`` in a
        pipeline folder) through ``from_config``: another scheduler's config loads too."""
        from npdiff import io as nd_io

        folder = os.fspath(pretrained_model_name_or_path)
        path = os.path.join(folder, subfolder, cls.config_name) if subfolder else os.path.join(folder, cls.config_name)
        if not os.path.isfile(path):
            raise ValueError(f"scheduler config {path!r} does not exist")
        return cls.from_config(nd_io.load_json(path), **overrides)

    # Defaults for the ᾱ-table (VP) schedulers; the σ-schedulers (sigmas.py) and the VE one override them.

    def scale_model_input(self, sample, timestep=None):
        """The model sees x_t unscaled (DDPM, DDIM; σ-schedulers divide by √(σ² + 1))."""
        return sample

    def add_noise(self, original_samples, noise, timesteps):
        """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε (Ho et al. 2020, eq. 4). timesteps: (B,) integers."""
        return self.schedule.q_sample(original_samples, np.asarray(timesteps).reshape(-1), noise)

    def get_velocity(self, sample, noise, timesteps):
        """v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho 2022, §4), the v-prediction target."""
        return predict_v(sample, noise, self.alphas_cumprod[np.asarray(timesteps).reshape(-1)])


def _all_scheduler_classes():
    def walk(c):
        for sub in c.__subclasses__():
            yield sub
            yield from walk(sub)
    return list(walk(SchedulerMixin))


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported: expected one of {tuple(choices)}")


def spaced_timesteps(spacing: str, num_inference_steps: int, num_train_timesteps: int, steps_offset: int = 0,
                     round_linspace: bool = True):
    """The inference timesteps, descending, as float64 (callers cast to int64 or float32).

    - ``linspace``: linspace(0, T−1, n) reversed, rounded unless ``round_linspace`` is False
      (the σ-schedulers keep fractional timesteps, as diffusers does).
    - ``leading``: k·⌊T/n⌋ for k = 0 … n−1, reversed, plus ``steps_offset`` (DDIM's original).
    - ``trailing``: round(arange(T, 0, −T/n)) − 1 (Lin et al. 2023, §3.3: starts at T−1).
    """
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    if num_inference_steps < 1 or num_inference_steps > num_train_timesteps:
        raise ValueError(f"num_inference_steps={num_inference_steps} must be in 1 … num_train_timesteps={num_train_timesteps}")
    n, T = num_inference_steps, num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n)
        return (ts.round() if round_linspace else ts)[::-1].copy()
    if spacing == "leading":
        return (np.arange(n) * (T // n)).round()[::-1] + steps_offset
    return np.round(np.arange(T, 0, -T / n)) - 1.0


def randn_like(sample, generator: np.random.Generator | None, variance_noise=None):
    """Noise for a stochastic step: ``variance_noise`` if given, else N(0, I) from ``generator``.

    The noise is drawn on the CPU in float64 (numpy ``Generator.standard_normal``) and cast to
    the sample's dtype and array module, so a seeded trajectory is the same on CPU and GPU.
    """
    xp = get_array_module(sample)
    if variance_noise is not None:
        if generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        if tuple(variance_noise.shape) != tuple(sample.shape):
            raise ValueError(f"variance_noise shape {variance_noise.shape} must equal sample shape {sample.shape}")
        return xp.asarray(variance_noise, dtype=sample.dtype)
    gen = generator if generator is not None else np.random.default_rng()
    return xp.asarray(gen.standard_normal(sample.shape), dtype=sample.dtype)


def threshold_sample(sample, ratio: float, max_value: float):
    """Dynamic thresholding (Saharia et al. 2022, §2.3 "Imagen").

    Per sample, s = clip(quantile_ratio(|x|), 1, max_value); x ← clip(x, −s, s) / s.
    Shapes: sample (B, …); the quantile is over all non-batch entries.
    """
    xp = get_array_module(sample)
    B = sample.shape[0]
    flat = sample.reshape(B, -1)  # (B, D)
    s = xp.quantile(xp.abs(flat).astype(xp.float64), ratio, axis=1)
    s = xp.clip(s, 1.0, max_value)[:, None].astype(sample.dtype)  # (B, 1)
    return (xp.clip(flat, -s, s) / s).reshape(sample.shape)


def clip_or_threshold(x0, config):
    """Apply the config's ``thresholding`` or ``clip_sample`` to a predicted x₀."""
    if config.get("thresholding", False):
        return threshold_sample(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    if config.get("clip_sample", False):
        xp = get_array_module(x0)
        r = config.clip_sample_range
        return xp.clip(x0, -r, r)
    return x0


def as_scalar(t):
    """A timestep given as a Python number, a 0-d / 1-element array (numpy or cupy)."""
    a = np.asarray(to_device(t, "cpu") if not isinstance(t, (int, float)) else t)
    if a.size != 1:
        raise ValueError(f"timestep must be a scalar, got shape {a.shape}")
    return a.reshape(()).item()

