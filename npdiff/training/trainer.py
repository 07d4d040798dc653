"""The training loop shared by every trainer, and the DDPM trainer built on it.

``BaseTrainer`` owns what every run needs: AdamW with linear warm-up and cosine decay,
EMA weights, global-norm gradient clipping, the NaN/Inf stop, atomic safetensors
checkpoints with every RNG state (bit-exact ``resume``), Ctrl-C saving, the JSONL log,
the loss curve and the exported diffusers-layout model folder. A subclass supplies
``train_step`` (the loss of one batch, handed to ``_optimise``) and ``sample_grid``
(the pictures); ``VAETrainer`` (vae_trainer.py) is the other one.

The DDPM ``Trainer``: data → noisy samples → denoiser → loss → AdamW.

One training step (Ho et al. 2020, Alg. 1, with the usual modern additions):

    1. x₀, y ← next batch                                    (seeded, resumable DataLoader)
    2. t ~ U{0, …, T−1},  ε ~ N(0, I)                         (the trainer's generator)
    3. y ← ∅ with probability p                              (label dropout, Ho & Salimans 2022)
    4. x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε                            (Ho et al. 2020, eq. 4)
    5. L = mean_b w_t ‖f_θ(x_t, t, y) − target‖² / D          target ε, x₀ or v; w_t = 1 or
                                                              min-SNR-γ (Hang et al. 2023)
    6. backward, clip the global grad norm, AdamW step, LR schedule step, EMA update
    7. at each log line (and before a grid or a checkpoint): read the pending steps' L and
       ‖g‖ in one device → host copy; stop at the first NaN/Inf (the last good checkpoint
       is kept: none is written before that read)

On ``--device cuda`` (``TrainConfig.device``) the weights, AdamW's moments, the EMA and each
batch live on the GPU; the draws of steps 1-3 stay on the host generators and go over with
the batch, and nothing is read back inside a step (docs/device.md).

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

import numpy as np

from .. import backend
from .. import io as nd_io
from ..autograd import Tensor
from ..data import DataLoader
from ..diffusion import NoiseSchedule, diffusion_loss
from ..kernels import precompile
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
from .distributed import DistributedError, get_world
from .run import load_train_data, make_scheduler, plan_run, read_run_config, trainer_class


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/Inf; the last good checkpoint is kept."""


def _is_array(v) -> bool:
    """A record value still on its device (a 0-d array), not a host number."""
    return hasattr(v, "shape") and hasattr(v, "dtype")


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

    def update(self, step: int, loss: float | None, lr: float) -> None:
        """``loss``: the last one read from the device (None before the first read)."""
        shown = "…" if loss is None else f"{loss:.4f}"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=shown, lr=f"{lr:.2e}", refresh=False)
        elif self.enabled and (step % self.every == 0 or step == self.total):
            rate = (step - self.s0) / max(time.perf_counter() - self.t0, 1e-9)
            print(f"step {step}/{self.total}  loss {shown}  lr {lr:.2e}  {rate:.2f} steps/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------


class BaseTrainer:
    """Trains ``plan_run``'s model as described by a ``TrainConfig`` and writes a run folder.

    ``Cls(config, run_dir)`` starts a new run (refusing a folder that already holds a
    checkpoint); ``Cls.resume(run_dir)`` continues one exactly. ``train()`` runs until
    ``config.steps`` (or ``stop_after`` more steps), writing logs, grids and checkpoints.
    Subclasses implement ``train_step(x, y) -> record`` and ``sample_grid()``.
    """

    model_folder = "ema_model"  # the EMA weights as a diffusers-layout folder, in the run folder
    devices = ("cpu",)  # where this trainer's train_step can run (its batches moved with ``to_device``)
    divergence_hint = "Try a lower --lr or a smaller --grad-clip."

    def __init__(self, config: TrainConfig, run_dir: str, *, progress: bool = True, _resuming: bool = False):
        self.config, self.run_dir, self.progress = config, os.fspath(run_dir), progress
        self.dist = dist = get_world()  # one rank, or this process's place under mpiexec (distributed.py)
        # where weights, optimizer state, EMA and batches live; a clear error before anything is built when
        # "cuda" is asked for and there is no GPU (nor the simulator)
        self.device = backend.check_device(config.device)
        if self.device not in self.devices:
            raise ValueError(f"{type(self).__name__} (model {config.model!r}) trains on {' or '.join(self.devices)} "
                             f"only for now, not --device {self.device}; the diffusion models' Trainer runs on cuda")
        if self.device != "cpu" and dist.distributed:
            raise ValueError(f"--device {self.device} with {dist.world_size} MPI ranks is not supported: "
                             f"data-parallel training all-reduces host buffers; train on one GPU, or on CPUs")
        if self.device == "cpu":  # a cold start: the Winograd driver compiles in a second process meanwhile
            precompile.start()
        exists = os.path.exists(os.path.join(self.run_dir, CHECKPOINT_NAME))
        if not _resuming and dist.broadcast_flag(exists, "the run-folder check"):  # rank 0's view of the folder
            raise ValueError(f"{self.run_dir!r} already holds a training run; use --resume to continue it "
                             f"or choose another --output folder")
        self.dataset = load_train_data(config)
        self.info = plan_run(config, self.dataset)
        backend.manual_seed(config.seed)  # parameter init (and dropout) draw from npdiff's global generator
        self.model = self.info.build_model().to(self.device)  # initialised on the host (same draws), then moved
        self.model.train()
        params = list(self.model.parameters())
        dist.broadcast_arrays([p.data for p in params] + list(self.model.buffers()))  # rank 0's initial weights
        self.optimizer = AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.lr_schedule = cosine_with_warmup(self.optimizer, config.warmup_steps, config.steps,
                                              min_lr=config.min_lr_ratio * config.lr)
        self.ema = EMA(params, decay=config.ema_decay, warmup=True)
        labels = self.dataset.labels if self.info.null_class is not None else None
        self.loader = self.make_loader(labels)
        # the step's random draws (noise, t, label dropout); under MPI each rank keeps its slice of the
        # global batch's draws (distributed.ShardedGenerator)
        self.rng = dist.sharded(np.random.default_rng([config.seed, 1]))
        self.step = 0
        self._stop_requested = False  # Ctrl-C seen by this process
        self._stop_agreed = False  # ... by any rank, agreed in the step's all-reduce: every rank stops together

    def to_device(self, array):
        """A host array (a batch, its noise) on the run's device: one host → device copy on a GPU."""
        return backend.to_device(array, self.device)

    def make_loader(self, labels) -> DataLoader:
        """The seeded, resumable loader: this rank's shard of global batches of ranks × batch_size."""
        n = self.dist.world_size
        return DataLoader(self.dataset.images, labels, min(self.config.batch_size, len(self.dataset) // n or 1),
                          shuffle=True, drop_last=True, hflip=self.config.hflip, seed=self.config.seed,
                          num_replicas=n, rank=self.dist.rank)

    # -- run folder ------------------------------------------------------------
    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def write_config(self) -> None:
        if not self.dist.is_root:  # rank 0 alone writes
            return
        ranks = {"world_size": self.dist.world_size,
                 "global_batch_size": self.dist.world_size * self.loader.batch_size}
        nd_io.save_json(self.path(CONFIG_NAME), {"train": self.config.to_dict(), **self.info.to_dict(),
                                                  "distributed": ranks})

    def replica_arrays(self) -> list:
        """Everything that must be identical on every rank: weights, EMA, optimizer moments."""
        moments = [v for st in self.optimizer.state.values() for v in st.values()
                   if isinstance(v, np.ndarray) and v.shape != ()]
        return [p.data for p in self.optimizer.params] + list(self.ema.shadow) + moments

    def save(self) -> None:
        """Write the checkpoint (atomically), the EMA model folder and the loss curve (rank 0 only)."""
        self._read_pending()  # never write the weights of a step whose loss was NaN/Inf
        if not self.dist.is_root:
            return
        meta = {
            "step": self.step,
            "world_size": self.dist.world_size,
            "lr_schedule": self.lr_schedule.state_dict(),
            "trainer_rng": rng_state(self.rng),
            "loader": self.loader.state_dict(),
            "global_rng": backend.get_rng_state(),
        }
        save_checkpoint(self.path(CHECKPOINT_NAME), model=self.model, ema=self.ema, optimizer=self.optimizer, meta=meta)
        self.export_ema_model(self.path(self.model_folder))
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
                                  smoothing=0.9, title=self.loss_title())

    def loss_title(self) -> str:
        return "training loss"

    @classmethod
    def resume(cls, run_dir: str, *, steps: int | None = None, progress: bool = True,
               device: str | None = None) -> "BaseTrainer":
        """Rebuild a trainer from a run folder and its checkpoint, exactly where it stopped.

        ``steps`` may raise the total step count; the cosine LR schedule then stretches to
        the new total, so the result differs from a run started with that total. ``device``
        moves the run to another device (the checkpoint holds host copies); the draws continue
        exactly, the arithmetic is the other device's kernels'.
        """
        run_dir = os.fspath(run_dir)
        config = TrainConfig.from_dict(read_run_config(run_dir, "a resumable run folder")["train"])
        if not issubclass(trainer_class(config), cls):
            raise ValueError(f"{run_dir!r} is a {config.model or 'diffusion'} run: resume it with "
                             f"{trainer_class(config).__name__}, not {cls.__name__}")
        if steps is not None:
            config = config.replace(steps=int(steps))
        if device is not None:
            config = config.replace(device=device)
        trainer = cls(config, run_dir, progress=progress, _resuming=True)
        trainer.restore(run_dir)
        return trainer

    def restore(self, run_dir: str) -> None:
        """Load the run's checkpoint into this freshly built trainer: weights, EMA, optimizer, LR
        schedule, every RNG state, the loader's place and the step; then agree across ranks."""
        state = load_checkpoint(os.path.join(run_dir, CHECKPOINT_NAME))
        self.model.load_state_dict(state.model)
        restore_ema(self.model, self.ema, state.ema, state.meta["ema_hyper"])
        self.optimizer.load_state_dict(state.optimizer)
        self.lr_schedule.load_state_dict(state.meta["lr_schedule"])
        set_rng_state(self.rng, state.meta["trainer_rng"])
        self.loader.load_state_dict(state.meta["loader"])
        backend.set_rng_state(state.meta["global_rng"])
        self.step = state.step
        self._agree_on_resume(run_dir, state.meta)

    def _agree_on_resume(self, run_dir: str, meta: dict) -> None:
        """After a checkpoint is loaded: refuse another number of ranks than the run's, put rank 0's
        state on every rank (whatever each rank read) and check that all agree, drop stale log lines."""
        saved_ranks = int(meta.get("world_size", 1))
        if saved_ranks != self.dist.world_size:
            raise ValueError(
                f"{run_dir!r} was trained by {saved_ranks} process(es) (global batch {saved_ranks} × "
                f"{self.loader.batch_size}); resume it with the same number (mpiexec -n {saved_ranks}), "
                f"not {self.dist.world_size}, so that the batches and random draws continue exactly")
        self.dist.broadcast_arrays(self.replica_arrays(), "the resume broadcast")
        self.dist.check_replicas(self.replica_arrays(), "resumed state")
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log records written after the checkpoint (a crash between log and checkpoint)."""
        path = self.path(LOG_NAME)
        if self.dist.is_root and os.path.isfile(path):
            kept = [r for r in nd_io.read_jsonl(path) if r.get("step", 0) <= self.step]
            nd_io.atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))

    # -- one step ----------------------------------------------------------------
    def train_step(self, x0: np.ndarray, y: np.ndarray | None) -> dict:
        """One optimisation step on a batch; returns at least loss, grad_norm and lr."""
        raise NotImplementedError

    def _optimise(self, loss, **extra) -> dict:
        """Backward, clip, AdamW step, LR schedule step, EMA update; returns the step's record.

        Nothing is read back to the host: the record's loss and grad norm stay 0-d arrays on the
        device until ``_read_pending`` reads the pending steps' values in one copy (at log,
        sample and checkpoint steps), checks them and stops on the first NaN/Inf; no checkpoint
        is written before that check, so the last good one is kept. ``extra`` (plain floats, e.g.
        the terms of the loss) joins the record. Under MPI the gradients, the loss and ``extra``
        are averaged over the ranks (and a Ctrl-C on any rank stops all of them after this step)."""
        self.optimizer.zero_grad()
        loss.backward()
        terms, stop = self.dist.average_gradients(self.optimizer.params, {"loss": loss.data, **extra},
                                                  stop=self._stop_requested)
        self._stop_agreed = stop
        grad_norm = clip_grad_norm_(self.optimizer.params, self.config.grad_clip)  # 0-d, on the device
        lr = self.optimizer.lr
        self.optimizer.step()
        self.lr_schedule.step()
        self.ema.update()
        self.step += 1
        return {**terms, "grad_norm": grad_norm, "lr": lr}

    def _read_pending(self) -> None:
        """Read the loss and grad norm of the steps since the last read in one device → host copy,
        stop on the first NaN/Inf (``TrainingDiverged`` naming its step), and add the host values
        to the log window."""
        if not getattr(self, "_pending", None):
            return
        xp = backend.get_array_module(*[v for _, rec in self._pending for v in rec.values()])
        on_device = [(i, k) for i, (_, rec) in enumerate(self._pending) for k, v in rec.items() if _is_array(v)]
        values = backend.to_device(xp.stack([xp.asarray(self._pending[i][1][k], dtype=np.float64).reshape(())
                                             for i, k in on_device]), "cpu") if on_device else []
        records = [dict(rec) for _, rec in self._pending]
        for (i, k), v in zip(on_device, values):
            records[i][k] = float(v)
        steps = [s for s, _ in self._pending]
        self._pending = []
        for step, rec in zip(steps, records):
            if not math.isfinite(rec["loss"]):
                raise TrainingDiverged(f"loss is {rec['loss']} at step {step}")
            if not math.isfinite(rec["grad_norm"]):
                raise TrainingDiverged(f"gradient norm is {rec['grad_norm']} at step {step}")
            for key, value in rec.items():
                self._window.setdefault(key, []).append(value)
        self._last_loss = records[-1]["loss"]

    # -- the loop ------------------------------------------------------------------
    def _on_sigint(self, signum, frame):
        if self._stop_requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.dist.is_root:
            print("\nCtrl-C: finishing this step and saving a checkpoint (press again to abort without saving)",
                  file=sys.stderr, flush=True)

    def train(self, stop_after: int | None = None, callback=None) -> dict:
        """Train until ``config.steps`` (or for ``stop_after`` more steps); returns a summary.

        Checkpoints every ``checkpoint_every`` steps and at the end. Ctrl-C (SIGINT) or a
        KeyboardInterrupt saves a checkpoint at the last completed step and re-raises
        KeyboardInterrupt. NaN/Inf raises TrainingDiverged without saving. ``callback(trainer,
        record)`` is called after every step (tests use it); the record's loss and grad_norm are
        0-d arrays on the run's device (``float()`` reads one back).
        """
        cfg = self.config
        os.makedirs(self.run_dir, exist_ok=True)
        self.write_config()
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + int(stop_after))
        if self.step == 0 and not os.path.exists(self.path(CHECKPOINT_NAME)):
            self.save()  # step 0: resuming is possible from the very start
        root = self.dist.is_root  # rank 0 alone writes logs, grids, checkpoints and the progress bar
        bar = _Progress(cfg.steps, self.step, self.progress and root)
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        # the records of the steps since the last host read: their loss and grad norm stay on the device
        # (reading them is a device → host copy and a synchronisation); ``_read_pending`` reads them all at once
        self._pending: list = []
        self._window: dict = {}  # host values of the steps since the last log line
        self._last_loss: float | None = None
        t_start = time.perf_counter()
        batches = self.loader.infinite()
        try:
            while self.step < end and not self._stop_agreed:
                snapshot = (rng_state(self.rng), self.loader.state_dict())
                t0 = time.perf_counter()
                self.dist.seed_step(cfg.seed, self.step)  # per-rank dropout stream (no-op for one process)
                try:
                    x0, y = next(batches)
                    record = self.train_step(x0, y)
                except (KeyboardInterrupt, DistributedError):
                    # the interrupted step is discarded: rewind its random draws
                    set_rng_state(self.rng, snapshot[0])
                    self.loader.load_state_dict(snapshot[1])
                    raise
                self._pending.append((self.step, {**record, "step_time": time.perf_counter() - t0}))
                log = self.step % cfg.log_every == 0 or self.step == end
                grid = self.step % cfg.sample_every == 0 or self.step == cfg.steps
                if log or grid or self.step % cfg.checkpoint_every == 0:
                    self._read_pending()  # one device → host copy for all steps since the last one
                bar.update(self.step, self._last_loss, record["lr"])
                if root and log:
                    # window means of every term (the learning rate: its last value)
                    means = {k: float(np.mean(v)) for k, v in self._window.items() if k != "lr"}
                    nd_io.append_jsonl(self.path(LOG_NAME), {"step": self.step, **means, "lr": record["lr"],
                                                             "elapsed": time.perf_counter() - t_start})
                if log:
                    self._window = {}
                if root and grid:
                    self.sample_grid()
                if self.step % cfg.checkpoint_every == 0:
                    self.dist.check_replicas(self.replica_arrays(), "weights, EMA and optimizer state")
                    self.save()
                if callback is not None:
                    callback(self, record)
        except TrainingDiverged as e:
            bar.close()
            raise TrainingDiverged(
                f"{e}; training stopped. The last good checkpoint (step {self._checkpoint_step()}) is kept in "
                f"{self.path(CHECKPOINT_NAME)}. {self.divergence_hint}"
            ) from None
        except (KeyboardInterrupt, DistributedError) as e:
            # every rank holds the state of the last completed step: rank 0 saves it
            bar.close()
            self.save()
            if root:
                what = "interrupted" if isinstance(e, KeyboardInterrupt) else "another rank failed"
                print(f"\n{what}: checkpoint saved at step {self.step} in {self.run_dir} "
                      f"(continue with: npdiff train --resume {self.run_dir})", file=sys.stderr, flush=True)
            raise
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        bar.close()
        if self.step % cfg.checkpoint_every:  # (the loop checked the replicas at checkpoint steps)
            self.dist.check_replicas(self.replica_arrays(), "weights, EMA and optimizer state")
        self.save()
        if self._stop_agreed and root:
            print(f"stopped at step {self.step}: checkpoint saved in {self.run_dir} "
                  f"(continue with: npdiff train --resume {self.run_dir})", file=sys.stderr, flush=True)
        if self._stop_agreed:
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

    def sample_grid(self) -> str:
        """Draw the run's pictures with the EMA weights; returns the main PNG's path."""
        raise NotImplementedError


class Trainer(BaseTrainer):
    """The DDPM trainer (steps 1-7 of the module docstring) on a UNet2DModel or the toy MLP."""

    divergence_hint = "Try a lower --lr, a smaller --grad-clip or another --prediction-type."
    devices = ("cpu", "cuda")

    def __init__(self, config: TrainConfig, run_dir: str, *, progress: bool = True, _resuming: bool = False):
        super().__init__(config, run_dir, progress=progress, _resuming=_resuming)
        self.schedule = NoiseSchedule(config.num_train_timesteps, config.beta_start, config.beta_end,
                                      config.beta_schedule)

    def loss_title(self) -> str:
        return f"training loss ({self.config.prediction_type})"

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
        # 4. forward process, on the run's device (the draws above stay on the host: the same stream on
        # every device; x₀ and ε go over, t and y are sent by the model's embeddings)
        x0, noise = self.to_device(x0), self.to_device(noise)
        x_t = self.schedule.q_sample(x0, t, noise).astype(np.float32)
        # 5. per-sample loss against the prediction target, optionally min-SNR-γ weighted
        out = self.model(Tensor(x_t), t, class_labels=y)
        loss = diffusion_loss(self.schedule, out, x0, noise, t, cfg.prediction_type, cfg.snr_gamma).mean()
        # 6.-7. backward, clip, update (the NaN/Inf stop comes at the next read)
        return self._optimise(loss)

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
        if info.is_points:
            n = info.default_sample_count(None, 0)
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


def train(config: TrainConfig, run_dir: str, progress: bool = True, stop_after: int | None = None) -> BaseTrainer:
    """Start a new run with the trainer of its model kind and train it; returns the trainer."""
    trainer = trainer_class(config)(config, run_dir, progress=progress)
    trainer.train(stop_after=stop_after)
    return trainer
