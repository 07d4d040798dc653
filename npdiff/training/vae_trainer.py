"""The VAE trainer: images → q(z|x) → z → reconstruction → recon + β·KL → AdamW (shared loop).

One training step (Kingma & Welling 2014, Alg. 1, with the LDM/SD choices of loss):

    1. x ← next batch                                           (seeded, resumable DataLoader)
    2. q(z|x) = N(μ, diag σ²) ← encode(x)
    3. z = μ + σ ⊙ ε,  ε ~ N(0, I)                               (the trainer's generator)
    4. x̂ = decode(z)
    5. L = mean |x̂ − x|  (or mean (x̂ − x)²)  +  β · mean_b KL(q(z|x) ‖ N(0, I)) / (C·H·W)
    6.-7. NaN/Inf stop, backward, clip, AdamW, LR schedule, EMA   (``BaseTrainer._optimise``)

β is relative to per-image sums (L·C·H·W = Σ|x̂ − x| + β·KL), like the LDM/SD VAE's
``kl_weight``. Everything else — warm-up and cosine LR, EMA, clipping, checkpoints with
every RNG state (bit-exact resume), Ctrl-C saving, the JSONL log (with the ``recon`` and
``kl`` terms) and the loss curve — is ``BaseTrainer``'s.

The run folder holds, besides the shared files, ``vae/`` (the EMA weights as a diffusers
AutoencoderKL folder, with ``scaling_factor`` = 1 / std of the training latents, measured
as Rombach et al. 2022 did for SD) and, every ``sample_every`` steps, in ``samples/``:
``recon_step_*.png`` (held-out input | reconstruction pairs), ``prior_step_*.png``
(decodes of z = ε / scaling_factor) and ``interp_step_*.png`` (decodes along the line
between the posterior means of two held-out images, one pair per row).

With ``latent_balance`` (the shapes stack's default), ``vae/`` is exported with each latent
channel centred and scaled to unit std, folded into its 1×1 convs (training/latent_balance.py;
the checkpoint keeps the trained weights), and ``vae/balance.json`` records the fold.
"""

from __future__ import annotations

import os

import numpy as np

from .. import io as nd_io
from ..autograd import Tensor, no_grad
from .checkpoint import ema_model_state_dict
from .run import load_train_data
from .trainer import BaseTrainer

N_LATENT_STATS = 512  # training images whose posterior means set the scaling factor


def vae_loss(reconstruction, target, posterior, recon_loss: str = "l1", kl_weight: float = 1e-6):
    """Step 5 of the module docstring. Returns (loss Tensor, {"recon": r, "kl": k}), r and k 0-d
    arrays where the loss is (on the device: nothing is read back), ``kl`` in nats per image
    (summed over the latent)."""
    if recon_loss not in ("l1", "mse"):
        raise ValueError(f"recon_loss must be 'l1' or 'mse', got {recon_loss!r}")
    x = target if isinstance(target, Tensor) else Tensor(target)
    if reconstruction.shape != x.shape:
        raise ValueError(f"reconstruction {reconstruction.shape} and target {x.shape} must have the same shape")
    diff = reconstruction - x
    rec = diff.abs().mean() if recon_loss == "l1" else (diff * diff).mean()
    kl = posterior.kl().mean()  # mean over the batch of Σ over (c, h, w)
    per_pixel = int(np.prod(x.shape[1:]))  # C·H·W
    loss = rec + kl * (kl_weight / per_pixel)
    return loss, {"recon": rec.data.reshape(()), "kl": kl.data.reshape(())}


def encode_means(model, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Posterior means μ(x) of (N, C, H, W) images, in batches, without a tape: (N, c, h, w)."""
    out = []
    with no_grad():
        for start in range(0, len(images), batch):
            out.append(model.encode(images[start:start + batch]).latent_dist.mean.numpy())
    return np.concatenate(out)


def reconstruct(model, images: np.ndarray, batch: int = 256, kl: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """The round trip decode(μ(x)) of (N, C, H, W) images and, with ``kl``, the per-image
    KL(q(z|x) ‖ N(0, I)): ((N, C, H, W), (N,) or None). The one place a VAE's reconstruction
    is computed for evaluation (``npdiff eval``, ``attribute_ceiling``, adapter_eval's ceilings)."""
    recons, kls = [], []
    with no_grad():
        for start in range(0, len(images), batch):
            post = model.encode(images[start:start + batch]).latent_dist
            out = model.decode(post.mode()).sample
            recons.append(np.asarray(out.numpy() if hasattr(out, "numpy") else out))
            if kl:
                kls.append(post.kl().numpy())
    return np.concatenate(recons), (np.concatenate(kls) if kl else None)


def attribute_report(recon: np.ndarray, images: np.ndarray, attributes: np.ndarray, classifier=None) -> dict:
    """``metrics.shapes_report`` of reconstructions ``recon`` of the real ``images`` whose ground
    truth is ``attributes`` (N, 2, 4), with the same report of the real images under ``"real"``
    (the classifier's own ceiling). On a VAE's round trip this is the VAE's attribute ceiling: no
    latent diffusion model decoded by it can draw what its decoder cannot give back."""
    from ..metrics import shapes_classifier, shapes_report

    clf = shapes_classifier() if classifier is None else classifier
    report = shapes_report(recon, attributes, classifier=clf)
    report["real"] = shapes_report(images, attributes, classifier=clf)
    return report


def attribute_ceiling(model, images: np.ndarray, attributes: np.ndarray, classifier=None, batch: int = 256) -> dict:
    """``attribute_report`` of the round trip decode(μ(x)) (``reconstruct``) of real shapes images."""
    return attribute_report(reconstruct(model, images, batch, kl=False)[0], images, attributes, classifier)


def format_ceiling(report: dict) -> str:
    """One line: the VAE ceiling's all-correct and per-attribute accuracies beside the real images'."""
    keys = ("all_correct", "shape_accuracy", "colour_accuracy", "size_accuracy", "position_accuracy", "count_accuracy")
    real = report["real"]
    return (f"VAE attribute ceiling (n = {report['n_samples']}, decode(μ(x)) | real): "
            + ", ".join(f"{k.replace('_accuracy', '')} {report[k]:.1%} | {real[k]:.1%}" for k in keys))


class VAETrainer(BaseTrainer):
    """Trains ``AutoencoderKL`` (``TrainConfig.model == "vae"``); see the module docstring."""

    devices = ("cpu", "cuda")

    model_folder = "vae"
    divergence_hint = "Try a lower --lr, a smaller --grad-clip or a smaller --kl-weight."

    def loss_title(self) -> str:
        return f"VAE loss ({self.config.recon_loss} + β·KL, β = {self.config.kl_weight:g})"

    def train_step(self, x0: np.ndarray, y=None) -> dict:
        cfg = self.config
        x0 = self.to_device(x0)  # the batch on the run's device; ε (step 3) is drawn on the host, sent over
        posterior = self.model.encode(Tensor(x0)).latent_dist  # 2.
        z = posterior.sample(generator=self.rng)  # 3.
        reconstruction = self.model.decode(z).sample  # 4.
        loss, terms = vae_loss(reconstruction, x0, posterior, cfg.recon_loss, cfg.kl_weight)  # 5.
        return self._optimise(loss, **terms)  # 6.-7.

    # -- the exported folder ---------------------------------------------------------
    def latent_scaling_factor(self, model) -> float:
        """1 / std of the posterior means of the first training images (SD's 0.18215 was found so)."""
        std = float(encode_means(model, self.dataset.images[:N_LATENT_STATS]).std())
        return 1.0 / std if std > 0 else 1.0

    def export_ema_model(self, folder: str) -> None:
        """The EMA weights as a diffusers AutoencoderKL folder, with the measured ``scaling_factor``;
        with ``latent_balance``, its latent channels balanced first (training/latent_balance.py), the
        balance's statistics in ``balance.json`` beside the weights."""
        from ..models import AutoencoderKL

        model = self.ema_model()
        if self.config.latent_balance:
            from .latent_balance import balance_vae

            balanced, report = balance_vae(model, self.dataset.images[:N_LATENT_STATS])
            balanced.save_pretrained(folder)
            nd_io.save_json(os.path.join(folder, "balance.json"), report)
            return
        config = {**self.info.model_config, "scaling_factor": self.latent_scaling_factor(model)}
        exported = AutoencoderKL(**config)
        exported.load_state_dict(ema_model_state_dict(self.model, self.ema))
        exported.save_pretrained(folder)

    # -- pictures ----------------------------------------------------------------------
    def _held_out(self):
        if getattr(self, "_test", None) is None:
            self._test = load_train_data(self.config, "test")
        return self._test

    def sample_grid(self, n_recon: int = 16, n_prior: int = 32, n_interp: int = 8) -> str:
        """Reconstructions, prior samples and interpolations with the EMA weights; see the module docstring."""
        model = self.ema_model()
        test = self._held_out()
        folder = self.path("samples")
        tag = f"step_{self.step:06d}.png"
        scale = max(1, 64 // self.info.sample_shape[-1])
        # input | reconstruction, side by side, 4 pairs per row
        x = test.images[:n_recon]
        recon, _ = reconstruct(model, x)
        pairs = np.stack([x, np.clip(recon, -1, 1)], axis=1).reshape(-1, *x.shape[1:])  # (2n, C, H, W)
        recon_path = os.path.join(folder, f"recon_{tag}")
        nd_io.save_image_grid(recon_path, pairs, nrow=8, scale=scale)
        gen = np.random.default_rng([self.config.seed, 2])  # separate stream: never disturbs training draws
        latent_shape = encode_means(model, x[:1]).shape[1:]  # (c, h, w)
        prior_model = model
        if self.config.latent_balance:  # the exported VAE's prior: per channel N(m_c, σ_c²) in the raw latent
            from .latent_balance import balance_vae

            prior_model = balance_vae(model, self.dataset.images[:N_LATENT_STATS])[0]
        s = self.latent_scaling_factor(prior_model)
        with no_grad():
            z = gen.standard_normal((n_prior, *latent_shape)).astype(np.float32) / s
            prior = prior_model.decode(z).sample.numpy()
        nd_io.save_image_grid(os.path.join(folder, f"prior_{tag}"), np.clip(prior, -1, 1), nrow=8, scale=scale)
        # straight lines between the posterior means of held-out pairs (different classes when labelled)
        ends = self._interpolation_ends(test)
        mu = encode_means(model, test.images[ends.ravel()])  # (2·rows, c, h, w)
        w = np.linspace(0.0, 1.0, n_interp, dtype=np.float32)[None, :, None, None, None]  # (1, k, 1, 1, 1)
        a, b = mu[0::2, None], mu[1::2, None]  # (rows, 1, c, h, w)
        path_z = ((1 - w) * a + w * b).reshape(-1, *latent_shape)  # (rows·k, c, h, w)
        with no_grad():
            strip = model.decode(path_z.astype(np.float32)).sample.numpy()
        nd_io.save_image_grid(os.path.join(folder, f"interp_{tag}"), np.clip(strip, -1, 1), nrow=n_interp,
                              scale=scale)
        return recon_path

    @staticmethod
    def _interpolation_ends(test, rows: int = 3) -> np.ndarray:
        """(rows, 2) indices of held-out images: digits 0→1, 3→8, 4→9 when labelled, else the first ones."""
        if test.labels is not None and test.num_classes >= 10:
            firsts = [int(np.flatnonzero(test.labels == c)[0]) if np.any(test.labels == c) else 0 for c in range(10)]
            return np.array([[firsts[0], firsts[1]], [firsts[3], firsts[8]], [firsts[4], firsts[9]]])
        n = min(2 * rows, len(test))
        return np.arange(n - n % 2).reshape(-1, 2)
