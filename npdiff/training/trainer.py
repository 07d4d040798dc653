"""The DDPM trainer: data → noisy samples → denoiser → loss → AdamW, with EMA, logs and checkpoints.

One training step (Ho et al. 2020, Alg. 1, with the usual modern additions):

    1. x₀, y ← next batch                                    (seeded, resumable DataLoader)
    2. t ~ U{0, …, T−1},  ε ~ N(0, I)                         (the trainer's generator)
    3. y ← ∅ with probability p                              (label dropout, Ho & Salimans 2022)
    4. x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε                            (Ho et al. 2020, eq. 4)
    5. L = mean_b w_t ‖f_θ(x_t, t, y) − target‖² / D          target ε, x₀ or v; w_t = 1 or
                                                              min-SNR-γ (Hang et al. 2023)
    6. stop if L is NaN/Inf (the last good checkpoint is kept)
    7. backward, clip the global grad norm, AdamW step, LR schedule step, EMA update

Every random draw comes from a generator whose state is checkpointed (the trainer's
generator for steps 2-3, the DataLoader's (seed, epoch, batch) for step 1, npdiff's
global generator for init/dropout), so training N steps straight and N/2 + resume N/2
give identical weights.

A run folder holds:
    config.json               TrainConfig + what is needed to rebuild model and scheduler
    checkpoint.safetensors    model, EMA, optimizer, step and RNG states (see checkpoint.py)
    log.jsonl                 one record per ``log_every`` steps: loss, grad norm, lr, step time
    loss.png                  the loss curve
    samples/step_XXXXXX.png   periodic sample grids (EMA weights)
    ema_model/                the EMA weights as a diffusers-layout model folder
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from .. import backend
from .. import io as nd_io
from ..autograd import Tensor
from ..data import DataLoader, Dataset, load_dataset
from ..diffusion import NoiseSchedule, diffusion_loss
from ..optim import EMA, AdamW, clip_grad_norm_, cosine_with_warmup
from .checkpoint import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    LOG_NAME,
    ema_model_state_dict,
    load_checkpoint,
    restore_ema,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/Inf; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------
# building blocks shared by training and sampling
# ----------------------------------------------------------------------------


def model_classes() -> dict:
    """Model class names that may appear in a run's config.json."""
    from ..models.classifier import EncoderUNetModel
    from ..models.dit import DiTTransformer2DModel
    from ..models.toy import ToyMLPDenoiser
    from ..models.unet_2d import UNet2DModel

    return {"UNet2DModel": UNet2DModel, "ToyMLPDenoiser": ToyMLPDenoiser, "EncoderUNetModel": EncoderUNetModel,
            "DiTTransformer2DModel": DiTTransformer2DModel}


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
    """DiTTransformer2DModel keyword arguments: patch 2, width hidden_dim in heads of 32 (one
    head if it is not a multiple of 32), num_blocks blocks; class ∅ = num_classes."""
    heads = config.hidden_dim // 32 if config.hidden_dim % 32 == 0 else 1
    return dict(sample_size=size, in_channels=channels, out_channels=channels, patch_size=2,
                num_attention_heads=heads, attention_head_dim=config.hidden_dim // heads,
                num_layers=config.num_blocks, num_embeds_ada_norm=num_classes)


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
    scheduler_config: dict
    sample_shape: tuple
    num_classes: int
    null_class: int | None
    class_names: list | None

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


def plan_run(config: TrainConfig, dataset: Dataset) -> RunInfo:
    """Decide model type, conditioning and shapes from the config and the data."""
    if config.model == "classifier":
        from .classifier import plan_classifier

        return plan_classifier(config, dataset)
    kind = config.model or ("mlp" if dataset.is_toy else "unet")
    if kind == "mlp" and not dataset.is_toy:
        raise ValueError(f"model 'mlp' needs 2-D toy points, but {dataset.name!r} holds images {dataset.sample_shape}")
    if kind in ("unet", "dit") and dataset.is_toy:
        raise ValueError(f"model {kind!r} needs images, but {dataset.name!r} holds 2-D points; use --model mlp")
    conditional = config.class_conditional
    if conditional is None:
        conditional = dataset.labels is not None and dataset.num_classes > 1
    if conditional and (dataset.labels is None or dataset.num_classes < 1):
        raise ValueError(f"class_conditional=True but dataset {dataset.name!r} has no labels")
    num_classes = dataset.num_classes if conditional else 0
    embeds = num_classes + 1 if conditional else None  # the extra index is the null class ∅
    if kind == "unet":
        c, h, w = dataset.sample_shape
        if h != w:
            raise ValueError(f"the UNet needs square images, got {h}×{w}")
        factor = 2 ** (len(config.block_out_channels) - 1)
        if h % factor:
            raise ValueError(f"image size {h} must be divisible by {factor} for {len(config.block_out_channels)} "
                             f"UNet levels (block_out_channels={config.block_out_channels})")
        model_class, model_config = "UNet2DModel", unet_config(config, c, h, embeds)
    elif kind == "dit":
        c, h, w = dataset.sample_shape
        if h != w or h % 2:
            raise ValueError(f"the DiT needs square images of even size (patch 2), got {h}×{w}")
        model_class, model_config = "DiTTransformer2DModel", dit_config(config, c, h, num_classes)
    else:
        model_class = "ToyMLPDenoiser"
        model_config = dict(in_dim=dataset.sample_shape[0], hidden_dim=config.hidden_dim,
                            num_blocks=config.num_blocks, num_class_embeds=embeds)
    return RunInfo(model_class, model_config, scheduler_config(config), dataset.sample_shape,
                   num_classes, num_classes if conditional else None,
                   dataset.class_names if conditional else None)


def load_train_data(config: TrainConfig) -> Dataset:
    return load_dataset(config.data, "train", size=config.image_size, n=config.toy_samples, seed=config.seed)


class _Progress:
    """tqdm bar on a terminal; occasional plain lines when output is redirected (CI logs, files)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled, self.total = enabled, total
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="training", unit="step", dynamic_ncols=True)
        self.every = max(1, total // 20)
        self.t0, self.s0 = time.perf_counter(), initial

    def update(self, step: int, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        elif self.enabled and (step % self.every == 0 or step == self.total):
            rate = (step - self.s0) / max(time.perf_counter() - self.t0, 1e-9)
            print(f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {rate:.2f} steps/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------


class Trainer:
    """Trains a denoiser as described by a ``TrainConfig`` and writes a run folder.

    ``Trainer(config, run_dir)`` starts a new run (refusing a folder that already holds a
    checkpoint); ``Trainer.resume(run_dir)`` continues one exactly. ``train()`` runs until
    ``config.steps`` (or ``stop_after`` more steps), writing logs, grids and checkpoints.
    """

    def __init__(self, config: TrainConfig, run_dir: str, *, progress: bool = True, _resuming: bool = False):
        self.config, self.run_dir, self.progress = config, os.fspath(run_dir), progress
        if not _resuming and os.path.exists(os.path.join(self.run_dir, CHECKPOINT_NAME)):
            raise ValueError(f"{self.run_dir!r} already holds a training run; use --resume to continue it "
                             f"or choose another --output folder")
        self.dataset = load_train_data(config)
        self.info = plan_run(config, self.dataset)
        self.schedule = NoiseSchedule(config.num_train_timesteps, config.beta_start, config.beta_end,
                                      config.beta_schedule)
        backend.manual_seed(config.seed)  # parameter init (and dropout) draw from npdiff's global generator
        self.model = self.info.build_model()
        self.model.train()
        params = list(self.model.parameters())
        self.optimizer = AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.lr_schedule = cosine_with_warmup(self.optimizer, config.warmup_steps, config.steps,
                                              min_lr=config.min_lr_ratio * config.lr)
        self.ema = EMA(params, decay=config.ema_decay, warmup=True)
        labels = self.dataset.labels if self.info.null_class is not None else None
        self.loader = DataLoader(self.dataset.images, labels, min(config.batch_size, len(self.dataset)),
                                 shuffle=True, drop_last=True, hflip=config.hflip, seed=config.seed)
        self.rng = np.random.default_rng([config.seed, 1])  # timesteps, noise, label dropout
        self.step = 0
        self._stop_requested = False

    # -- run folder ------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def write_config(self) -> None:
        nd_io.save_json(self.path(CONFIG_NAME), {"train": self.config.to_dict(), **self.info.to_dict()})

    def save(self) -> None:
        """Write the checkpoint (atomically), the EMA model folder and the loss curve."""
        meta = {
            "step": self.step,
            "lr_schedule": self.lr_schedule.state_dict(),
            "trainer_rng": rng_state(self.rng),
            "loader": self.loader.state_dict(),
            "global_rng": backend.get_rng_state(),
        }
        save_checkpoint(self.path(CHECKPOINT_NAME), model=self.model, ema=self.ema, optimizer=self.optimizer, meta=meta)
        self.export_ema_model(self.path("ema_model"))
        self.plot_loss()

    def export_ema_model(self, folder: str) -> None:
        """The EMA weights as a diffusers-layout folder (``from_pretrained`` loads it)."""
        model = self.info.build_model()
        model.load_state_dict(ema_model_state_dict(self.model, self.ema))
        model.save_pretrained(folder)

    def plot_loss(self) -> None:
        if not os.path.isfile(self.path(LOG_NAME)):
            return
        records = [r for r in nd_io.read_jsonl(self.path(LOG_NAME)) if "loss" in r]
        if len(records) >= 2:
            nd_io.save_loss_curve(self.path("loss.png"), [r["step"] for r in records], [r["loss"] for r in records],
                                  smoothing=0.9, title=f"training loss ({self.config.prediction_type})")

    @classmethod
    def resume(cls, run_dir: str, *, steps: int | None = None, progress: bool = True) -> "Trainer":
        """Rebuild a trainer from a run folder and its checkpoint, exactly where it stopped.

        ``steps`` may raise the total step count; the cosine LR schedule then stretches to
        the new total, so the result differs from a run started with that total.
        """
        run_dir = os.fspath(run_dir)
        if not os.path.isdir(run_dir):
            raise ValueError(f"run folder {run_dir!r} does not exist")
        for name in (CONFIG_NAME, CHECKPOINT_NAME):
            if not os.path.isfile(os.path.join(run_dir, name)):
                raise ValueError(f"{run_dir!r} is not a resumable run folder: {name} is missing")
        saved = nd_io.load_json(os.path.join(run_dir, CONFIG_NAME))
        config = TrainConfig.from_dict(saved["train"])
        if steps is not None:
            config = config.replace(steps=int(steps))
        trainer = cls(config, run_dir, progress=progress, _resuming=True)
        state = load_checkpoint(os.path.join(run_dir, CHECKPOINT_NAME))
        trainer.model.load_state_dict(state.model)
        restore_ema(trainer.model, trainer.ema, state.ema, state.meta["ema_hyper"])
        trainer.optimizer.load_state_dict(state.optimizer)
        trainer.lr_schedule.load_state_dict(state.meta["lr_schedule"])
        set_rng_state(trainer.rng, state.meta["trainer_rng"])
        trainer.loader.load_state_dict(state.meta["loader"])
        backend.set_rng_state(state.meta["global_rng"])
        trainer.step = state.step
        trainer._truncate_log()
        return trainer

    def _truncate_log(self) -> None:
        """Drop log records written after the checkpoint (a crash between log and checkpoint)."""
        path = self.path(LOG_NAME)
        if os.path.isfile(path):
            kept = [r for r in nd_io.read_jsonl(path) if r.get("step", 0) <= self.step]
            nd_io.atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))

    # -- one step ----------------------------------------------------------------
    def train_step(self, x0: np.ndarray, y: np.ndarray | None) -> dict:
        """One optimisation step on a batch (steps 2-7 of the module docstring)."""
        cfg, b = self.config, len(x0)
        # 2. timesteps and noise
        t = self.rng.integers(0, cfg.num_train_timesteps, size=b)
        noise = self.rng.standard_normal(x0.shape, dtype=np.float32)
        # 3. label dropout: y ← ∅ (index num_classes) with probability p
        if y is not None:
            drop = self.rng.random(b) < cfg.label_dropout
            y = np.where(drop, self.info.null_class, y)
        # 4. forward process
        x_t = self.schedule.q_sample(x0, t, noise).astype(np.float32)
        # 5. per-sample loss against the prediction target, optionally min-SNR-γ weighted
        out = self.model(Tensor(x_t), t, class_labels=y)
        loss = diffusion_loss(self.schedule, out, x0, noise, t, cfg.prediction_type, cfg.snr_gamma).mean()
        return self._optimise(loss)

    def _optimise(self, loss, **extra) -> dict:
        """Stop on a NaN/Inf loss, then backward, clip, AdamW step, LR schedule step, EMA update.

        ``extra`` (plain floats, e.g. the terms of the loss) joins the returned record."""
        loss_value = float(loss.item())
        if not math.isfinite(loss_value):  # before anything is updated
            raise TrainingDiverged(f"loss is {loss_value} at step {self.step + 1}")
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = clip_grad_norm_(self.optimizer.params, self.config.grad_clip)
        if not math.isfinite(grad_norm):
            raise TrainingDiverged(f"gradient norm is {grad_norm} at step {self.step + 1}")
        lr = self.optimizer.lr
        self.optimizer.step()
        self.lr_schedule.step()
        self.ema.update()
        self.step += 1
        return {"loss": loss_value, **extra, "grad_norm": grad_norm, "lr": lr}

    # -- the loop ------------------------------------------------------------------
    def _on_sigint(self, signum, frame):
        if self._stop_requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True
        print("\nCtrl-C: finishing this step and saving a checkpoint (press again to abort without saving)",
              file=sys.stderr, flush=True)

    def train(self, stop_after: int | None = None, callback=None) -> dict:
        """Train until ``config.steps`` (or for ``stop_after`` more steps); returns a summary.

        Checkpoints every ``checkpoint_every`` steps and at the end. Ctrl-C (SIGINT) or a
        KeyboardInterrupt saves a checkpoint at the last completed step and re-raises
        KeyboardInterrupt. NaN/Inf raises TrainingDiverged without saving. ``callback(trainer,
        record)`` is called after every step (tests use it).
        """
        cfg = self.config
        os.makedirs(self.run_dir, exist_ok=True)
        self.write_config()
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + int(stop_after))
        if self.step == 0 and not os.path.exists(self.path(CHECKPOINT_NAME)):
            self.save()  # step 0: resuming is possible from the very start
        bar = _Progress(cfg.steps, self.step, self.progress)
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        window = {"loss": [], "grad_norm": [], "time": []}
        t_start = time.perf_counter()
        batches = self.loader.infinite()
        try:
            while self.step < end and not self._stop_requested:
                snapshot = (rng_state(self.rng), self.loader.state_dict())
                t0 = time.perf_counter()
                try:
                    x0, y = next(batches)
                    record = self.train_step(x0, y)
                except KeyboardInterrupt:
                    # the interrupted step is discarded: rewind its random draws
                    set_rng_state(self.rng, snapshot[0])
                    self.loader.load_state_dict(snapshot[1])
                    raise
                window["loss"].append(record["loss"])
                window["grad_norm"].append(record["grad_norm"])
                window["time"].append(time.perf_counter() - t0)
                bar.update(self.step, record["loss"], record["lr"])
                if self.step % cfg.log_every == 0 or self.step == end:
                    nd_io.append_jsonl(self.path(LOG_NAME), {
                        "step": self.step, "loss": float(np.mean(window["loss"])),
                        "grad_norm": float(np.mean(window["grad_norm"])), "lr": record["lr"],
                        "step_time": float(np.mean(window["time"])), "elapsed": time.perf_counter() - t_start})
                    window = {"loss": [], "grad_norm": [], "time": []}
                if self.step % cfg.sample_every == 0 or self.step == cfg.steps:
                    self.sample_grid()
                if self.step % cfg.checkpoint_every == 0:
                    self.save()
                if callback is not None:
                    callback(self, record)
        except TrainingDiverged as e:
            bar.close()
            raise TrainingDiverged(
                f"{e}; training stopped. The last good checkpoint (step {self._checkpoint_step()}) is kept in "
                f"{self.path(CHECKPOINT_NAME)}. Try a lower --lr, a smaller --grad-clip or another --prediction-type."
            ) from None
        except KeyboardInterrupt:
            bar.close()
            self.save()
            print(f"\ninterrupted: checkpoint saved at step {self.step} in {self.run_dir} "
                  f"(continue with: npdiff train --resume {self.run_dir})", file=sys.stderr, flush=True)
            raise
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        bar.close()
        self.save()
        if self._stop_requested:
            print(f"stopped at step {self.step}: checkpoint saved in {self.run_dir} "
                  f"(continue with: npdiff train --resume {self.run_dir})", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        return {"step": self.step, "seconds": time.perf_counter() - t_start, "run_dir": self.run_dir}

    def _checkpoint_step(self) -> int | str:
        try:
            return load_checkpoint(self.path(CHECKPOINT_NAME)).step
        except ValueError:
            return "none"

    # -- samples during training ---------------------------------------------------
    def ema_model(self):
        """A copy of the model holding the EMA weights (for sampling)."""
        model = self.info.build_model()
        model.load_state_dict(ema_model_state_dict(self.model, self.ema))
        return model.eval()

    def sample_grid(self, rows: int = 4) -> str:
        """Sample with the EMA weights (fixed seed) and save ``samples/step_XXXXXX.png``.

        Class-conditional image runs: ``rows`` samples of each class, one class per column,
        drawn with ``guidance_scale``. Toy runs: a scatter plot of 2,000 points over the data.
        """
        from ..pipelines import sample

        cfg, info = self.config, self.info
        scheduler = make_scheduler(cfg.sample_scheduler, info.scheduler_config)
        gen = np.random.default_rng([cfg.seed, 2])  # separate stream: never disturbs training draws
        path = self.path(os.path.join("samples", f"step_{self.step:06d}.png"))
        model = self.ema_model()
        conditional = info.null_class is not None
        if len(info.sample_shape) == 1:
            n = 2000
            labels = np.arange(n) % info.num_classes if conditional else None
            out = sample(model, scheduler, (n, *info.sample_shape), class_labels=labels,
                         guidance_scale=cfg.guidance_scale if conditional else 1.0, null_class=info.null_class,
                         generator=gen, num_inference_steps=cfg.sample_steps)
            nd_io.save_scatter(path, out.samples, self.dataset.images[:n], title=f"step {self.step}", lim=3.0)
            return path
        # class-conditional: one class per column, ``rows`` rows; else an 8-wide grid
        ncol = info.num_classes if conditional else 8
        labels = np.tile(np.arange(ncol), rows) if conditional else None
        out = sample(model, scheduler, (rows * ncol, *info.sample_shape), class_labels=labels,
                     guidance_scale=cfg.guidance_scale if conditional else 1.0, null_class=info.null_class,
                     generator=gen, num_inference_steps=cfg.sample_steps)
        nd_io.save_image_grid(path, out.samples, nrow=ncol, scale=2)
        return path


def train(config: TrainConfig, run_dir: str, progress: bool = True, stop_after: int | None = None) -> Trainer:
    """Start a new run and train it; returns the trainer."""
    trainer = Trainer(config, run_dir, progress=progress)
    trainer.train(stop_after=stop_after)
    return trainer


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
    if not os.path.isdir(run_dir):
        raise ValueError(f"run folder {run_dir!r} does not exist")
    for name in (CONFIG_NAME, CHECKPOINT_NAME):
        if not os.path.isfile(os.path.join(run_dir, name)):
            raise ValueError(f"{run_dir!r} is not a run folder: {name} is missing "
                             f"(expected a folder written by `npdiff train`)")
    saved = nd_io.load_json(os.path.join(run_dir, CONFIG_NAME))
    if not isinstance(saved, dict) or "train" not in saved or "model_class" not in saved:
        raise ValueError(f"{os.path.join(run_dir, CONFIG_NAME)} is not an npdiff run config")
    info = RunInfo.from_dict(saved)
    state = load_checkpoint(os.path.join(run_dir, CHECKPOINT_NAME))
    model = info.build_model()
    model.load_state_dict(state.model)
    if use_ema:
        model.load_state_dict({**state.model, **state.ema})
    return Run(model.eval(), info, TrainConfig.from_dict(saved["train"]), state.step, run_dir)
