"""The typed configuration of a training run, saved as ``config.json`` in the run folder.

One dataclass holds everything that determines a run: data, model, noise schedule,
objective, optimiser, EMA, logging and the seed. ``TrainConfig.from_dict`` rejects
unknown keys and bad values with a ValueError that names them, so a typo in a JSON
file or a flag never trains silently with a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from npdiff.diffusion import BETA_SCHEDULES, PREDICTION_TYPES

MODEL_TYPES = ("unet", "mlp", "dit", "classifier", "vae", "clip", "ldm")
RECON_LOSSES = ("l1", "mse")
DEVICES = ("cpu", "cuda")


@dataclass
class TrainConfig:
    """Everything a DDPM or VAE training run needs (defaults: the class-conditional digits UNet).

    Data
      data              ``npdiff.data.load_dataset`` name or path: "digits", a toy name
                        ("moons", ...), an image folder, an MNIST IDX folder or an .npz file.
      image_size        resize images to this size (None: the loader's default).
      toy_samples       how many points to draw for a toy dataset.
      hflip             random horizontal flips (off for digits: a mirrored 2 is not a 2).
      subset            train on the first ``subset`` items of the training split only (None: all).
    Model
      model             "unet" (UNet2DModel, images), "dit" (DiTTransformer2DModel, images,
                        patch 2), "mlp" (ToyMLPDenoiser, 2-D points) or "vae" (AutoencoderKL,
                        images: see ``vae_defaults``); None picks by the data.
                        "classifier": the noise-conditional classifier ``EncoderUNetModel`` for
                        classifier guidance (training/classifier.py).
      block_out_channels, layers_per_block, attention, norm_num_groups
                        UNet / VAE size: channels per resolution level, ResNet blocks per level,
                        self-attention at the lowest resolution, GroupNorm groups. A VAE with
                        K levels downsamples by f = 2^(K−1).
      hidden_dim, num_blocks  MLP size: width, residual blocks; for the DiT: token width
                        (heads of 32), transformer blocks.
      patch_size        DiT patch side p (tokens = (H/p)·(W/p)); None: 2 on pixels, 1 on latents
                        (a 4×4 latent would keep only 4 tokens at p = 2).
      class_conditional True: learn p(x | y) with label dropout (needs labelled data);
                        None: on when the data has labels.
      label_dropout     probability of replacing y by the null class (index num_classes),
                        so one model also learns p(x) for classifier-free guidance
                        (Ho & Salimans 2022, §3.2); for captioned data ("ldm"), the probability
                        of training with the empty prompt.
    CLIP and latent diffusion (training/clip_trainer.py, training/latent_trainer.py)
      model "clip"      contrastive pre-training of a CLIPModel on captioned data: text encoder
                        width hidden_dim, num_blocks layers; image encoder block_out_channels.
      model "ldm"       latent diffusion: a UNet2DConditionModel (captions) or UNet2DModel
                        (class labels) on the latents of the frozen VAE ``vae``.
      model "dit" + vae a class-conditional DiT on those latents (``latent`` is then True).
      vae               a VAE run folder (or its ``vae/``): the frozen autoencoder of "ldm".
      text_encoder      a CLIP run folder (``text_encoder/`` + ``tokenizer/``): the frozen
                        text encoder of "ldm" on captioned data.
      cross_attention_max_tokens  "ldm" on captions: a U-Net level cross-attends to the text
                        when it has at most this many positions (h·w; the lowest level and
                        the mid block always do): 64 = the 8×8 level of a 16×16 latent,
                        256 = the 16×16 level too.
    VAE
      latent_channels   channels of the latent z (B, c, H/f, W/f).
      recon_loss        "l1" or "mse": the reconstruction term, a mean over pixels.
      kl_weight         β of L = recon + β · KL(q(z|x) ‖ N(0, I)) / (C·H·W) (β relative to the
                        per-image sums, as the LDM/SD VAE's kl_weight).
      latent_balance    True: the exported vae/ has each latent channel centred and scaled to
                        unit std, folded into quant_conv / post_quant_conv (round trip unchanged;
                        training/latent_balance.py), then scaling_factor measured as usual.
    Diffusion
      num_train_timesteps, beta_schedule, beta_start, beta_end   the forward process.
      prediction_type   "epsilon", "sample" (x₀) or "v_prediction" (default for images: at high
                        noise x̂₀ = √ᾱ x_t − √(1−ᾱ) v̂ does not divide a small ε̂ error by √ᾱ_t, so
                        the deterministic samplers (DDIM, Euler, DPM++) stay on the data manifold
                        after short training; ε-prediction needs far more steps for that).
      snr_gamma         min-SNR-γ loss weighting (Hang et al. 2023); None: uniform.
    Optimisation
      steps, batch_size (per process under mpiexec: N ranks train on global batches of
      N·batch_size, see distributed.py), lr, weight_decay (AdamW), warmup_steps (linear warm-up, then
      cosine decay to min_lr_ratio·lr), grad_clip (max global grad norm),
      ema_decay (EMA of the weights, with diffusers-style warm-up; used for sampling).
    Logging
      log_every (JSONL record + progress bar), sample_every (sample grid PNG),
      checkpoint_every (safetensors checkpoint), sample_steps / sample_scheduler /
      guidance_scale (how the periodic grids are drawn), seed.
    Device
      device            "cpu" or "cuda": where the weights, optimizer state, EMA and every batch
                        live (npdiff.backend; "cuda" is cupy on a GPU, or the simulated device
                        under NUMBA_ENABLE_CUDASIM=1). Draws stay on the host generators, so a
                        run draws the same batches, timesteps and noise on either device.
    """

    # data
    data: str = "digits"
    image_size: int | None = 16
    toy_samples: int = 8192
    hflip: bool = False
    subset: int | None = None
    # model
    model: str | None = None
    block_out_channels: tuple = (32, 64)
    layers_per_block: int = 1
    attention: bool = True
    norm_num_groups: int = 8
    hidden_dim: int = 128
    num_blocks: int = 3
    patch_size: int | None = None
    class_conditional: bool | None = None
    label_dropout: float = 0.1
    # VAE
    latent_channels: int = 4
    recon_loss: str = "l1"
    kl_weight: float = 1e-6
    latent_balance: bool = False
    # CLIP / latent diffusion
    vae: str | None = None
    text_encoder: str | None = None
    cross_attention_max_tokens: int = 64
    # diffusion
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    prediction_type: str = "v_prediction"
    snr_gamma: float | None = None
    # optimisation
    steps: int = 4000  # 5 min 50 s quiet (the budget: the old default's 7 min 43 s): docs/quality.md
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # logging and sampling
    log_every: int = 25
    sample_every: int = 1150  # grids at 1,150, 2,300, 3,450 and the end (each costs ~7 s of the budget)
    checkpoint_every: int = 500
    sample_steps: int = 50
    sample_scheduler: str = "ddim"
    guidance_scale: float = 1.5  # 100 % accuracy, 30-45 % lower FD than 2 (docs/quality.md)
    seed: int = 0
    # device
    device: str = "cpu"

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming every field whose value is out of range."""
        bad = []
        if self.model is not None and self.model not in MODEL_TYPES:
            bad.append(f"model={self.model!r} (expected one of {MODEL_TYPES} or None)")
        if self.recon_loss not in RECON_LOSSES:
            bad.append(f"recon_loss={self.recon_loss!r} (expected one of {RECON_LOSSES})")
        if self.kl_weight < 0:
            bad.append(f"kl_weight={self.kl_weight} (expected >= 0)")
        if self.beta_schedule not in BETA_SCHEDULES:
            bad.append(f"beta_schedule={self.beta_schedule!r} (expected one of {BETA_SCHEDULES})")
        if self.prediction_type not in PREDICTION_TYPES:
            bad.append(f"prediction_type={self.prediction_type!r} (expected one of {PREDICTION_TYPES})")
        for name in ("steps", "batch_size", "num_train_timesteps", "log_every", "sample_every",
                     "checkpoint_every", "sample_steps", "layers_per_block", "norm_num_groups", "hidden_dim",
                     "toy_samples", "latent_channels", "cross_attention_max_tokens"):
            if int(getattr(self, name)) < 1:
                bad.append(f"{name}={getattr(self, name)!r} (expected >= 1)")
        for name in ("warmup_steps", "num_blocks"):
            if int(getattr(self, name)) < 0:
                bad.append(f"{name}={getattr(self, name)!r} (expected >= 0)")
        if not self.block_out_channels or any(c % self.norm_num_groups for c in self.block_out_channels):
            bad.append(f"block_out_channels={self.block_out_channels} (each must be a multiple of "
                       f"norm_num_groups={self.norm_num_groups})")
        if not 0.0 <= self.label_dropout < 1.0:
            bad.append(f"label_dropout={self.label_dropout} (expected in [0, 1))")
        if not 0.0 <= self.ema_decay < 1.0:
            bad.append(f"ema_decay={self.ema_decay} (expected in [0, 1))")
        if self.lr <= 0 or self.grad_clip <= 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            bad.append(f"lr={self.lr}, grad_clip={self.grad_clip}, weight_decay={self.weight_decay}, "
                       f"min_lr_ratio={self.min_lr_ratio} (expected lr > 0, grad_clip > 0, weight_decay >= 0, "
                       f"0 <= min_lr_ratio <= 1)")
        if not (0.0 <= self.guidance_scale < float("inf")):
            bad.append(f"guidance_scale={self.guidance_scale} (expected a finite scale >= 0: 0 = unconditional, "
                       f"1 = plain conditional)")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            bad.append(f"snr_gamma={self.snr_gamma} (expected > 0 or None)")
        if self.subset is not None and int(self.subset) < 1:
            bad.append(f"subset={self.subset!r} (expected >= 1 or None)")
        if self.patch_size is not None and int(self.patch_size) < 1:
            bad.append(f"patch_size={self.patch_size!r} (expected >= 1 or None)")
        if self.patch_size is not None and self.model != "dit":
            bad.append(f"patch_size={self.patch_size} (only the DiT has patches; model={self.model!r})")
        if self.latent_balance and self.model != "vae":
            bad.append(f"latent_balance=True (it balances a VAE's latent channels; model={self.model!r})")
        if self.vae is not None and self.model not in ("ldm", "dit"):
            bad.append(f"vae={self.vae!r} (a frozen VAE is used by model 'ldm' or 'dit' only; model={self.model!r})")
        if self.image_size is not None and int(self.image_size) < 4:
            bad.append(f"image_size={self.image_size} (expected >= 4 or None)")
        if self.device not in DEVICES:
            bad.append(f"device={self.device!r} (expected one of {DEVICES})")
        if bad:
            raise ValueError("invalid training config: " + "; ".join(bad))

    @property
    def latent(self) -> bool:
        """Diffusion on the latents of the frozen VAE ``vae`` (model "ldm", or "dit" with a VAE)."""
        return self.model == "ldm" or (self.model == "dit" and self.vae is not None)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; known keys: {sorted(names)}")
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def toy_defaults(data: str) -> dict:
    """Settings that suit the 2-D toy datasets better than the image defaults."""
    return dict(data=data, model="mlp", image_size=None, class_conditional=False, prediction_type="epsilon",
                steps=5000, batch_size=256, lr=1e-3, warmup_steps=100, ema_decay=0.995, sample_every=1000,
                checkpoint_every=1000)


def vae_defaults() -> dict:
    """Settings of ``npdiff train --model vae``: the digits VAE, f = 4, 16×16 → 4×4×4.

    Three levels (16, 32, 32) with one ResNet per level (two in the decoder), attention
    in the mid blocks, L1 reconstruction and β = 1e-6 (SD's VAE weight); 350 steps of
    batch 32 (about 8 epochs of the digits training split)."""
    return dict(model="vae", block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
                latent_channels=4, recon_loss="l1", kl_weight=1e-6, class_conditional=False, steps=350,
                batch_size=32, lr=2e-3, warmup_steps=50, ema_decay=0.99, sample_every=100, checkpoint_every=250)


__all__ = ["MODEL_TYPES", "RECON_LOSSES", "TrainConfig", "toy_defaults", "vae_defaults"]
