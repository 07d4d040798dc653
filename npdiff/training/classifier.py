"""Training the noise-conditional classifier p_φ(y | x_t, t) for classifier guidance.

Dhariwal & Nichol (2021, §4.1): the classifier must score noisy images at every noise
level the sampler visits, so each batch is noised like a diffusion batch and the loss is
the cross-entropy of the true label:

    1. x₀, y ← next batch;  t ~ U{0, …, T−1},  ε ~ N(0, I)
    2. x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε                       (Ho et al. 2020, eq. 4)
    3. L = −mean_b log softmax(f_φ(x_t, t))_{y_b}
    4. backward, clip, AdamW, LR schedule, EMA            (as the denoiser's trainer)

``ClassifierTrainer`` is the DDPM ``Trainer`` with steps 3 and the periodic report
replaced: everything else — run folder, checkpoints, exact resume, Ctrl-C, EMA export to
``ema_model/`` — is the trainer's own. Instead of sample grids it writes
``accuracy.json``: the EMA classifier's accuracy on the real test split at a few t.
"""

from __future__ import annotations

import os

import numpy as np

import npdiff.nn.functional as F

from .. import backend
from .. import io as nd_io
from ..autograd import Tensor, no_grad
from ..data import Dataset, load_dataset
from .config import TrainConfig
from .run import RunInfo, scheduler_config
from .trainer import Trainer

ACCURACY_NAME = "accuracy.json"
REPORT_TIMESTEPS = (0, 100, 250, 500, 750)


def classifier_config(config: TrainConfig, channels: int, size: int, num_classes: int) -> dict:
    """EncoderUNetModel keyword arguments: the denoiser's down path and middle for the same TrainConfig."""
    n = len(config.block_out_channels)
    lowest = "AttnDownBlock2D" if config.attention else "DownBlock2D"
    return dict(sample_size=size, in_channels=channels, num_classes=num_classes,
                block_out_channels=list(config.block_out_channels), layers_per_block=config.layers_per_block,
                down_block_types=["DownBlock2D"] * (n - 1) + [lowest], norm_num_groups=config.norm_num_groups,
                attention_head_dim=min(32, config.block_out_channels[-1]), add_attention=config.attention)


def plan_classifier(config: TrainConfig, dataset: Dataset) -> RunInfo:
    """The RunInfo of a classifier run: labelled images in, ``EncoderUNetModel`` out."""
    if dataset.is_toy or dataset.labels is None or dataset.num_classes < 2:
        raise ValueError(f"model 'classifier' needs labelled images with at least 2 classes; {dataset.name!r} "
                         f"has {'2-D points' if dataset.is_toy else 'no labels'}")
    c, h, w = dataset.sample_shape
    factor = 2 ** (len(config.block_out_channels) - 1)
    if h != w or h % factor:
        raise ValueError(f"the classifier needs square images with a size divisible by {factor}, got {h}×{w}")
    return RunInfo("EncoderUNetModel", classifier_config(config, c, h, dataset.num_classes),
                   scheduler_config(config), dataset.sample_shape, dataset.num_classes, None, dataset.class_names)


def cross_entropy(logits: Tensor, labels: np.ndarray) -> Tensor:
    """Per-sample −log softmax(logits)_y: logits (B, K) Tensor, labels (B,) host ints -> (B,) Tensor.
    The one-hot rows are made on the host and copied to the logits' device (one copy on a GPU)."""
    onehot = backend.to_device(np.eye(logits.shape[1], dtype=np.float32)[labels], logits.device)  # (B, K)
    return -(F.log_softmax(logits, dim=1) * onehot).sum(axis=1)


class ClassifierTrainer(Trainer):
    """Trains ``EncoderUNetModel`` on noisy labelled images; see the module docstring."""

    devices = ("cpu", "cuda")

    def __init__(self, config: TrainConfig, run_dir: str, **kwargs):
        if config.model != "classifier":
            raise ValueError(f"ClassifierTrainer needs config.model='classifier', got {config.model!r}")
        super().__init__(config, run_dir, **kwargs)
        # the DDPM trainer feeds labels only to class-conditional denoisers; a classifier always needs them
        self.loader = self.make_loader(self.dataset.labels)

    def train_step(self, x0: np.ndarray, y: np.ndarray | None) -> dict:
        cfg, b = self.config, len(x0)
        # 1-2. timesteps, noise and the forward process
        t = self.rng.integers(0, cfg.num_train_timesteps, size=b)
        noise = self.rng.standard_normal(x0.shape, dtype=np.float32)
        x0, noise = self.to_device(x0), self.to_device(noise)  # the draws stay on the host (the same stream)
        x_t = self.schedule.q_sample(x0, t, noise).astype(np.float32)
        # 3-4. cross-entropy of the true label; backward, clip, update
        logits = self.model(Tensor(x_t), t)
        return self._optimise(cross_entropy(logits, y).mean())

    def sample_grid(self, rows: int = 4) -> str:
        """The periodic report: EMA accuracy on the test split at ``REPORT_TIMESTEPS`` → accuracy.json."""
        test = load_dataset(self.config.data, "test", size=self.config.image_size, seed=self.config.seed)
        model = self.ema_model()
        rng = np.random.default_rng([self.config.seed, 3])
        report = {"step": self.step}
        with no_grad():
            for t in REPORT_TIMESTEPS:
                t = min(t, self.config.num_train_timesteps - 1)
                noise = rng.standard_normal(test.images.shape).astype(np.float32)
                x_t = self.schedule.q_sample(test.images, np.full(len(test), t), noise).astype(np.float32)
                pred = np.concatenate([np.argmax(np.asarray(model(Tensor(x_t[i:i + 256]), t).data), axis=1)
                                       for i in range(0, len(test), 256)])
                report[f"accuracy_t{t}"] = float(np.mean(pred == test.labels))
        path = self.path(ACCURACY_NAME)
        nd_io.save_json(path, report)
        return path


def is_classifier_run(run_dir: str) -> bool:
    """Whether the run folder ``run_dir`` was written by ``ClassifierTrainer``."""
    from .checkpoint import CONFIG_NAME

    path = os.path.join(os.fspath(run_dir), CONFIG_NAME)
    return os.path.isfile(path) and nd_io.load_json(path).get("model_class") == "EncoderUNetModel"


def load_classifier(run_dir: str):
    """The EMA classifier of a run folder written by ``npdiff train --model classifier``, in eval mode."""
    from ..models.classifier import EncoderUNetModel

    folder = os.path.join(os.fspath(run_dir), "ema_model")
    if not is_classifier_run(run_dir) or not os.path.isdir(folder):
        raise ValueError(f"{run_dir!r} is not a classifier run folder (expected config.json with model_class "
                         f"'EncoderUNetModel' and ema_model/, written by `npdiff train --model classifier`)")
    return EncoderUNetModel.from_pretrained(folder).eval()
