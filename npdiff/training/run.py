"""The run-folder factory shared by every trainer: plan a run, build its model, open a finished run.

A run folder (written by ``npdiff train``) holds ``config.json`` = the ``TrainConfig``
plus a ``RunInfo`` (which model class, its constructor config, the scheduler config for
diffusion runs, the sample shape and the classes), and ``checkpoint.safetensors``. This
module turns a config and a dataset into a ``RunInfo`` (``plan_run``), a ``RunInfo`` into
a model (``RunInfo.build_model``), and a folder back into a model with its plan
(``load_run``); ``trainer_class`` / ``resume`` pick the trainer of a run's model kind
(the DDPM ``Trainer`` or the ``VAETrainer``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from .. import io as nd_io
from ..data import Dataset, load_dataset
from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, load_checkpoint
from .config import TrainConfig


def model_classes() -> dict:
    """Model class names that may appear in a run's config.json."""
    from ..models.autoencoder_kl import AutoencoderKL
    from ..models.classifier import EncoderUNetModel
    from ..models.clip import CLIPModel
    from ..models.dit import DiTTransformer2DModel
    from ..models.toy import ToyMLPDenoiser
    from ..models.unet_2d import UNet2DModel
    from ..models.unet_2d_condition import UNet2DConditionModel

    return {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel, "CLIPModel": CLIPModel, "ToyMLPDenoiser": ToyMLPDenoiser, "AutoencoderKL": AutoencoderKL,
            "EncoderUNetModel": EncoderUNetModel, "DiTTransformer2DModel": DiTTransformer2DModel}


def unet_config(config: TrainConfig, channels: int, size: int, num_class_embeds: int | None) -> dict:
    """UNet2DModel keyword arguments for a TrainConfig: plain ResNet levels, attention at the lowest one."""
    n = len(config.block_out_channels)
    lowest = "AttnDownBlock2D" if config.attention else "DownBlock2D"
    return dict(
        sample_size=size, in_channels=channels, out_channels=channels,
        block_out_channels=list(config.block_out_channels), layers_per_block=config.layers_per_block,
        down_block_types=["DownBlock2D"] * (n - 1) + [lowest],
        up_block_types=[lowest.replace("Down", "Up")] + ["UpBlock2D"] * (n - 1),
        norm_num_groups=config.norm_num_groups, attention_head_dim=min(32, config.block_out_channels[-1]),
        num_class_embeds=num_class_embeds,
    )


def dit_config(config: TrainConfig, channels: int, size: int, num_classes: int) -> dict:
    """DiTTransformer2DModel keyword arguments: patch ``patch_size`` (None: 2 on pixels, 1 on a
    VAE's latents), width hidden_dim in heads of 32 (one head if it is not a multiple of 32),
    num_blocks blocks; class ∅ = num_classes."""
    patch = config.patch_size or (1 if config.latent else 2)
    if size % patch:
        raise ValueError(f"the DiT's input side {size} must be a multiple of its patch size {patch}")
    heads = config.hidden_dim // 32 if config.hidden_dim % 32 == 0 else 1
    return dict(sample_size=size, in_channels=channels, out_channels=channels, patch_size=patch,
                num_attention_heads=heads, attention_head_dim=config.hidden_dim // heads,
                num_layers=config.num_blocks, num_embeds_ada_norm=num_classes)


def vae_config(config: TrainConfig, channels: int, size: int) -> dict:
    """AutoencoderKL keyword arguments for a TrainConfig: one level per block_out_channels entry
    (downsampling factor 2^(levels − 1)), ``latent_channels`` latent channels, mid-block attention
    when ``attention``. ``scaling_factor`` starts at 1; the trainer measures it (see VAETrainer)."""
    n = len(config.block_out_channels)
    return dict(
        in_channels=channels, out_channels=channels, sample_size=size,
        down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(config.block_out_channels), layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels, norm_num_groups=config.norm_num_groups,
        mid_block_add_attention=config.attention, scaling_factor=1.0,
    )


def scheduler_config(config: TrainConfig) -> dict:
    """The diffusers-style scheduler config matching the training noise schedule.

    ``clip_sample`` is off: with classifier-free guidance the guided x̂₀ leaves [-1, 1] at
    high noise, and DDIM clips x̂₀ without recomputing ε̂ (diffusers semantics), so its
    update mixes an x̂₀ and an ε̂ that no longer fit together and the samples come out
    blotchy. Images are clipped once, when they are saved or scored.
    """
    return dict(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                beta_start=config.beta_start, beta_end=config.beta_end, prediction_type=config.prediction_type,
                clip_sample=False)


def make_scheduler(name: str, sched_config: dict):
    """A scheduler by short name ("ddpm", "ddim", "euler", "euler_a", "heun", "dpm++") from a config dict."""
    from ..schedulers import SCHEDULERS

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: expected one of {sorted(SCHEDULERS)}")
    import warnings

    with warnings.catch_warnings():  # e.g. clip_sample is a DDPM/DDIM option that Euler ignores
        warnings.simplefilter("ignore")
        return SCHEDULERS[name].from_config(sched_config)


@dataclass
class RunInfo:
    """What ``config.json`` holds besides the TrainConfig: how to rebuild the model and scheduler."""

    model_class: str
    model_config: dict
    scheduler_config: dict | None  # None for a VAE run
    sample_shape: tuple
    num_classes: int
    null_class: int | None
    class_names: list | None

    @property
    def is_points(self) -> bool:
        """A 2-D toy run: samples are points (scatter plots, MMD), not images."""
        return len(self.sample_shape) == 1

    def default_sample_count(self, per_class: int | None, otherwise: int) -> int:
        """How many samples a command draws when not told: 2,000 points for a toy run (its
        scatter plots and distances need many), ``per_class`` of each class for a
        class-conditional image run (None: not by class), else ``otherwise``."""
        if self.is_points:
            return 2000
        if per_class is not None and self.null_class is not None:
            return per_class * self.num_classes
        return otherwise

    def to_dict(self) -> dict:
        return {"model_class": self.model_class, "model_config": dict(self.model_config),
                "scheduler_config": self.scheduler_config, "sample_shape": list(self.sample_shape),
                "num_classes": self.num_classes, "null_class": self.null_class, "class_names": self.class_names}

    @classmethod
    def from_dict(cls, d: dict) -> "RunInfo":
        return cls(d["model_class"], d["model_config"], d["scheduler_config"], tuple(d["sample_shape"]),
                   int(d["num_classes"]), d["null_class"], d.get("class_names"))

    def build_model(self):
        classes = model_classes()
        if self.model_class not in classes:
            raise ValueError(f"unknown model class {self.model_class!r} in run config; expected one of {sorted(classes)}")
        return classes[self.model_class].from_config(self.model_config)


def _check_image_size(dataset: Dataset, config: TrainConfig, what: str) -> tuple[int, int]:
    c, h, w = dataset.sample_shape
    if h != w:
        raise ValueError(f"the {what} needs square images, got {h}×{w}")
    factor = 2 ** (len(config.block_out_channels) - 1)
    if h % factor:
        raise ValueError(f"image size {h} must be divisible by {factor} for {len(config.block_out_channels)} "
                         f"{what} levels (block_out_channels={config.block_out_channels})")
    return c, h


def plan_run(config: TrainConfig, dataset: Dataset) -> RunInfo:
    """Decide model type, conditioning and shapes from the config and the data."""
    if config.model == "classifier":
        from .classifier import plan_classifier

        return plan_classifier(config, dataset)
    if config.model == "clip":
        from .clip_trainer import plan_clip

        return plan_clip(config, dataset)
    if config.latent:  # "ldm", or "dit" on a VAE's latents
        from .latent_trainer import plan_latent

        return plan_latent(config, dataset)
    kind = config.model or ("mlp" if dataset.is_toy else "unet")
    if kind == "mlp" and not dataset.is_toy:
        raise ValueError(f"model 'mlp' needs 2-D toy points, but {dataset.name!r} holds images {dataset.sample_shape}")
    if kind in ("unet", "dit", "vae") and dataset.is_toy:
        raise ValueError(f"model {kind!r} needs images, but {dataset.name!r} holds 2-D points; use --model mlp")
    if kind == "vae":  # the labels only colour the latent picture; the VAE never sees them
        c, h = _check_image_size(dataset, config, "VAE")
        return RunInfo("AutoencoderKL", vae_config(config, c, h), None, dataset.sample_shape,
                       dataset.num_classes, None, dataset.class_names)
    conditional = config.class_conditional
    if conditional is None:
        conditional = dataset.labels is not None and dataset.num_classes > 1
    if conditional and (dataset.labels is None or dataset.num_classes < 1):
        raise ValueError(f"class_conditional=True but dataset {dataset.name!r} has no labels")
    num_classes = dataset.num_classes if conditional else 0
    embeds = num_classes + 1 if conditional else None  # the extra index is the null class ∅
    if kind == "unet":
        c, h = _check_image_size(dataset, config, "UNet")
        model_class, model_config = "UNet2DModel", unet_config(config, c, h, embeds)
    elif kind == "dit":
        c, h, w = dataset.sample_shape
        if h != w:
            raise ValueError(f"the DiT needs square images, got {h}×{w}")
        model_class, model_config = "DiTTransformer2DModel", dit_config(config, c, h, num_classes)
    else:
        model_class = "ToyMLPDenoiser"
        model_config = dict(in_dim=dataset.sample_shape[0], hidden_dim=config.hidden_dim,
                            num_blocks=config.num_blocks, num_class_embeds=embeds)
    return RunInfo(model_class, model_config, scheduler_config(config), dataset.sample_shape,
                   num_classes, num_classes if conditional else None,
                   dataset.class_names if conditional else None)


def load_train_data(config: TrainConfig, split: str = "train") -> Dataset:
    """The run's data (``split`` "test" for held-out evaluation); the training split cut to its
    first ``config.subset`` items when that is set."""
    data = load_dataset(config.data, split, size=config.image_size, n=config.toy_samples, seed=config.seed)
    if split != "train" or config.subset is None or config.subset >= len(data):
        return data
    k = config.subset
    cut = (lambda a: None if a is None else a[:k])
    return dataclasses.replace(data, images=data.images[:k], labels=cut(data.labels), attributes=cut(data.attributes),
                               masks=cut(data.masks), captions=cut(data.captions))


def trainer_class(config: TrainConfig):
    """The trainer of a config's model kind: ``VAETrainer`` for "vae", ``ClassifierTrainer`` for
    "classifier", ``CLIPTrainer`` for "clip", ``LatentTrainer`` for latent runs ("ldm", "dit" with a
    VAE), else the DDPM ``Trainer``."""
    if config.model == "vae":
        from .vae_trainer import VAETrainer

        return VAETrainer
    if config.model == "classifier":
        from .classifier import ClassifierTrainer

        return ClassifierTrainer
    if config.model == "clip":
        from .clip_trainer import CLIPTrainer

        return CLIPTrainer
    if config.latent:
        from .latent_trainer import LatentTrainer

        return LatentTrainer
    from .trainer import Trainer

    return Trainer


def read_run_config(run_dir: str, what: str) -> dict:
    """A run folder's config.json; ValueError if the folder, its config or its checkpoint is missing."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise ValueError(f"run folder {run_dir!r} does not exist")
    for name in (CONFIG_NAME, CHECKPOINT_NAME):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise ValueError(f"{run_dir!r} is not {what}: {name} is missing "
                             f"(expected a folder written by `npdiff train`)")
    saved = nd_io.load_json(os.path.join(run_dir, CONFIG_NAME))
    if not isinstance(saved, dict) or "train" not in saved or "model_class" not in saved:
        raise ValueError(f"{os.path.join(run_dir, CONFIG_NAME)} is not an npdiff run config")
    return saved


def resume(run_dir: str, *, steps: int | None = None, progress: bool = True, device: str | None = None):
    """Reopen a run folder with the trainer of its model kind, exactly where it stopped (on ``device``
    when given, else the run's own)."""
    saved = read_run_config(run_dir, "a resumable run folder")
    return trainer_class(TrainConfig.from_dict(saved["train"])).resume(run_dir, steps=steps, progress=progress,
                                                                       device=device)


# ----------------------------------------------------------------------------
# loading a finished (or interrupted) run for sampling and evaluation
# ----------------------------------------------------------------------------


@dataclass
class Run:
    """A run folder opened for sampling: the model (EMA weights by default), its plan and config."""

    model: object
    info: RunInfo
    config: TrainConfig
    step: int
    run_dir: str


def load_run(run_dir: str, use_ema: bool = True) -> Run:
    """Open a run folder written by ``npdiff train``; ValueError says what is missing."""
    run_dir = os.fspath(run_dir)
    saved = read_run_config(run_dir, "a run folder")
    info = RunInfo.from_dict(saved)
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT_NAME))
    model = info.build_model()
    model.load_state_dict(state.model)
    if use_ema:
        model.load_state_dict({**state.model, **state.ema})
    return Run(model.eval(), info, TrainConfig.from_dict(saved["train"]), state.step, run_dir)
