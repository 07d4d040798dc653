"""Samplers with diffusers' class names, constructor arguments and ``step()`` semantics, on numpy/cupy.

``SCHEDULERS`` maps the short names used by the CLI and trainer to classes; build one from a
diffusers config with ``SCHEDULERS[name].from_config(config_dict)``.
"""

from npdiff.schedulers.base import TIMESTEP_SPACINGS, SchedulerMixin, SchedulerOutput, spaced_timesteps
from npdiff.schedulers.ddim import DDIMInverseScheduler, DDIMScheduler
from npdiff.schedulers.ddpm import DDPMScheduler
from npdiff.schedulers.dpmsolver import DPMSolverMultistepScheduler
from npdiff.schedulers.euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from npdiff.schedulers.heun import HeunDiscreteScheduler
from npdiff.schedulers.score_sde_ve import AnnealedLangevinDynamics, ScoreSdeVeScheduler, SdeVeOutput

SCHEDULERS = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
}

__all__ = [
    "SCHEDULERS", "SchedulerMixin", "SchedulerOutput", "SdeVeOutput", "TIMESTEP_SPACINGS", "spaced_timesteps",
    "DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
    "ScoreSdeVeScheduler", "AnnealedLangevinDynamics",
]
