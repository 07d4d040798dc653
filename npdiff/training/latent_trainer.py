"""Latent diffusion (Rombach et al. 2022) on the shared loop: a U-Net denoises the latents of a frozen VAE.

The conditioning is decided by the data: captioned data ("shapes") trains a
``UNet2DConditionModel`` that cross-attends to the hidden states of a frozen CLIP text
encoder (Stable Diffusion); labelled data ("digits") trains a class-conditional
``UNet2DModel`` on the latents, or with ``model="dit"`` a class-conditional
``DiTTransformer2DModel`` (Peebles & Xie 2023 train DiT on SD's VAE latents the same
way; patch 1 by default on our small latents). One training step:

    0. once: q(z|x) = N(μ, σ²) of every training image   (the frozen VAE encoder, no tape,
                                                             on the run's device)
             e_i = text_encoder(caption_i).last_hidden_state, e_∅ = the empty prompt's
    1. (μ, log σ²), i ← next batch                          (seeded, resumable DataLoader)
    2. z₀ = s · (μ + σ ⊙ ε₁)                                 a fresh posterior sample (as SD's
                                                             training), s = vae.config.scaling_factor
                                                             = 1 / std of the training latents
    3. t ~ U{0, …, T−1},  ε ~ N(0, I);  c = e_∅ (or the null class) with probability p
                                                             (caption dropout, Ho & Salimans 2022)
    4. z_t = √ᾱ_t z₀ + √(1−ᾱ_t) ε                            (Ho et al. 2020, eq. 4)
    5. L = mean_b ‖f_θ(z_t, t, c) − target‖² / D             target ε, z₀ or v
    6.-7. NaN/Inf stop, backward, clip, AdamW, LR schedule, EMA   (``BaseTrainer._optimise``)

The VAE and the text encoder never change (their outputs are computed once, step 0), so
only the U-Net is in the checkpoint; resume is exact as for every trainer. The run folder
holds, besides the shared files: for captioned data ``pipeline/``, a diffusers
``StableDiffusionPipeline`` folder (EMA U-Net, the VAE, the text encoder, the tokenizer,
a DDIM scheduler) that ``npdiff sample --run DIR --prompt`` and diffusers both load;
for labelled data ``ema_model/`` (the U-Net; the VAE stays in ``config.vae``). Pictures:
``samples/step_*.png`` (captioned: one row per fixed held-out prompt, listed in
``samples/prompts.txt``; labelled: one class per column).
"""

from __future__ import annotations

import os

import numpy as np

from .. import backend
from .. import io as nd_io
from ..autograd import Tensor, no_grad
from ..diffusion import NoiseSchedule, diffusion_loss
from .run import RunInfo, dit_config, make_scheduler, scheduler_config, unet_config
from .trainer import BaseTrainer

N_GRID_PROMPTS = 8  # held-out prompts in the periodic sample grids


def _has_model(folder: str, weights: str) -> bool:
    return os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(os.path.join(folder, weights))


def vae_folder(path: str | None) -> str:
    """The AutoencoderKL folder of ``path``: the folder itself, or a VAE run folder's ``vae/``."""
    if path is None:
        raise ValueError("latent diffusion needs a VAE: pass --vae DIR (a run of `npdiff train --model vae` on "
                         "the same data, or a diffusers AutoencoderKL folder)")
    for folder in (path, os.path.join(path, "vae")):
        if _has_model(folder, "diffusion_pytorch_model.safetensors"):
            return folder
    raise ValueError(f"{path!r} is neither an AutoencoderKL folder nor a VAE run folder with vae/ "
                     f"(config.json + diffusion_pytorch_model.safetensors)")


def text_encoder_folders(path: str | None) -> tuple[str, str]:
    """(text_encoder folder, tokenizer folder) of a CLIP run folder or a pipeline folder."""
    if path is None:
        raise ValueError("latent diffusion on captioned data needs a text encoder: pass --text-encoder DIR "
                         "(a run of `npdiff train --model clip`)")
    text, tok = os.path.join(path, "text_encoder"), os.path.join(path, "tokenizer")
    if not _has_model(text, "model.safetensors") or not os.path.isfile(os.path.join(tok, "vocab.json")):
        raise ValueError(f"{path!r} has no text_encoder/ (config.json + model.safetensors) and tokenizer/ "
                         f"(vocab.json + merges.txt): expected a CLIP run folder")
    return text, tok


def plan_latent(config, dataset) -> RunInfo:
    """The latent U-Net for ``config.vae``'s latents: ``UNet2DConditionModel`` for captions,
    ``UNet2DModel`` (class labels + ∅) for labelled data, unconditional otherwise."""
    from ..models.modeling_utils import _read_config

    vae = _read_config(os.path.join(vae_folder(config.vae), "config.json"))
    f = 2 ** (len(vae["block_out_channels"]) - 1)
    c, (ch, h, w) = int(vae["latent_channels"]), dataset.sample_shape
    if ch != vae["in_channels"] or h != w or h % f:
        raise ValueError(f"the VAE in {config.vae!r} takes {vae['in_channels']}-channel images with sizes divisible "
                         f"by {f}; the data has shape {dataset.sample_shape}")
    size = h // f
    levels = len(config.block_out_channels)
    if config.model == "dit" and dataset.captions is not None:
        raise ValueError("the DiT is class-conditional (adaLN on a label); captioned data needs the "
                         "cross-attention U-Net: --model ldm")
    if config.model != "dit" and size % 2 ** (levels - 1):
        raise ValueError(f"latent size {size} must be divisible by {2 ** (levels - 1)} for {levels} U-Net levels")
    if dataset.captions is not None:
        text = _read_config(os.path.join(text_encoder_folders(config.text_encoder)[0], "config.json"))
        width = config.block_out_channels
        # cross-attention where a level has at most ``cross_attention_max_tokens`` positions (and
        # always at the lowest level and in the mid block): attention's L² cost bounds where the
        # text can be read
        down = ["CrossAttnDownBlock2D" if (size // 2**k) ** 2 <= config.cross_attention_max_tokens
                or k == levels - 1 else "DownBlock2D" for k in range(levels)]
        unet = dict(sample_size=size, in_channels=c, out_channels=c, block_out_channels=list(width),
                    layers_per_block=config.layers_per_block, norm_num_groups=config.norm_num_groups,
                    cross_attention_dim=int(text["hidden_size"]),
                    attention_head_dim=[max(1, k // 32) for k in width],  # diffusers: the number of heads
                    down_block_types=down, up_block_types=[t.replace("Down", "Up") for t in reversed(down)])
        return RunInfo("UNet2DConditionModel", unet, scheduler_config(config), (c, size, size), 0, None, None)
    conditional = config.class_conditional
    if conditional is None:
        conditional = dataset.labels is not None and dataset.num_classes > 1
    k = dataset.num_classes if conditional else 0
    if config.model == "dit":  # the DiT's label table always has the null row ∅ = k
        name, model = "DiTTransformer2DModel", dit_config(config, c, size, k)
    else:
        name, model = "UNet2DModel", unet_config(config, c, size, k + 1 if conditional else None)
    return RunInfo(name, model, scheduler_config(config), (c, size, size), k, k if conditional else None,
                   dataset.class_names if conditional else None)


def posterior_moments(vae, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """[μ, log σ²] of q(z|x) for host images (N, C, H, W), concatenated on the channel axis: (N, 2c, h, w),
    on the host. The encoder runs where ``vae`` is: each batch is copied to its device and the moments back."""
    device = backend.device_of(next(iter(vae.parameters())))
    out = []
    with no_grad():
        for s in range(0, len(images), batch):
            post = vae.encode(Tensor(backend.to_device(images[s:s + batch], device))).latent_dist
            out.append(np.concatenate([post.mean.numpy(), post.logvar.numpy()], axis=1))
    return np.concatenate(out).astype(np.float32)


def text_hidden_states(text_encoder, tokenizer, texts, batch: int = 512) -> np.ndarray:
    """The frozen encoder's last hidden states (N, L, D) of texts, padded to the tokenizer's length."""
    out = []
    with no_grad():
        for s in range(0, len(texts), batch):
            ids = tokenizer(list(texts[s:s + batch]), padding="max_length", truncation=True,
                            max_length=tokenizer.model_max_length, return_tensors="np")["input_ids"]
            out.append(text_encoder(ids).last_hidden_state.numpy())
    return np.concatenate(out).astype(np.float32)


class LatentTrainer(BaseTrainer):
    """Latent diffusion (``TrainConfig.model == "ldm"``); see the module docstring."""

    divergence_hint = "Try a lower --lr or a smaller --grad-clip."
    devices = ("cpu", "cuda")

    def __init__(self, config, run_dir, *, progress: bool = True, _resuming: bool = False):
        super().__init__(config, run_dir, progress=progress, _resuming=_resuming)
        from ..data import DataLoader
        from ..models import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(vae_folder(config.vae)).eval()
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.captioned = self.dataset.captions is not None
        # step 0 on the run's device; then the frozen VAE goes back to the host, where the sample grids
        # decode (an exact copy both ways), and the moments stay on the host, whence each batch goes over
        moments = posterior_moments(self.vae.to(self.device), self.dataset.images)
        self.vae.to("cpu")
        if self.captioned:
            from ..models import CLIPTextModel, CLIPTokenizer

            text, tok = text_encoder_folders(config.text_encoder)
            self.text_encoder, self.tokenizer = CLIPTextModel.from_pretrained(text).eval(), CLIPTokenizer.from_pretrained(tok)
            self.hidden = text_hidden_states(self.text_encoder, self.tokenizer, self.dataset.captions)  # (N, L, D)
            self.empty = text_hidden_states(self.text_encoder, self.tokenizer, [""])  # (1, L, D)
            labels = np.arange(len(self.dataset))  # the loader yields item indices
        else:
            labels = self.dataset.labels if self.info.null_class is not None else None
        self.loader = DataLoader(moments, labels, min(config.batch_size, len(self.dataset)), shuffle=True,
                                 drop_last=True, seed=config.seed)
        self.schedule = NoiseSchedule(config.num_train_timesteps, config.beta_start, config.beta_end,
                                      config.beta_schedule)

    @property
    def model_folder(self) -> str:
        return "pipeline" if self.dataset.captions is not None else "ema_model"

    def loss_title(self) -> str:
        return f"latent diffusion loss ({self.config.prediction_type})"

    def train_step(self, moments: np.ndarray, y) -> dict:
        cfg, b, c = self.config, len(moments), moments.shape[1] // 2
        # the draws stay on the host (the same stream on every device); the batch's moments, ε₁, ε and
        # the text states go over, t and the labels are sent by the model's embeddings
        eps = self.rng.standard_normal((b, c, *moments.shape[2:]), dtype=np.float32)
        # 3. timesteps, noise, caption / label dropout
        t = self.rng.integers(0, cfg.num_train_timesteps, size=b)
        noise = self.rng.standard_normal(eps.shape, dtype=np.float32)
        drop = self.rng.random(b) < cfg.label_dropout
        # 2. a posterior sample, scaled to unit variance, on the run's device
        moments, eps, noise = self.to_device(moments), self.to_device(eps), self.to_device(noise)
        xp = backend.get_array_module(moments)
        mean, logvar = moments[:, :c], moments[:, c:]
        z0 = (self.scaling_factor * (mean + xp.exp(0.5 * logvar) * eps)).astype(np.float32)
        # 4. forward process
        z_t = self.schedule.q_sample(z0, t, noise).astype(np.float32)
        # 5. loss
        if self.captioned:
            text = self.to_device(np.where(drop[:, None, None], self.empty, self.hidden[y]))  # (B, L, D)
            out = self.model(Tensor(z_t), t, Tensor(text))
        else:
            labels = None if y is None else np.where(drop, self.info.null_class, y)
            out = self.model(Tensor(z_t), t, class_labels=labels)
        loss = diffusion_loss(self.schedule, out, z0, noise, t, cfg.prediction_type, cfg.snr_gamma).mean()
        return self._optimise(loss)  # 6.-7.

    # -- the exported folder -----------------------------------------------------------
    def pipeline(self, unet):
        """A ``StableDiffusionPipeline`` of ``unet`` with the frozen VAE, text encoder and tokenizer."""
        from ..pipelines import StableDiffusionPipeline

        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=unet, scheduler=make_scheduler(self.config.sample_scheduler,
                                                                           self.info.scheduler_config))

    def export_ema_model(self, folder: str) -> None:
        if not self.captioned:
            return super().export_ema_model(folder)
        self.pipeline(self.ema_model()).save_pretrained(folder)

    # -- pictures ------------------------------------------------------------------------
    def grid_prompts(self) -> list[str]:
        """The first ``N_GRID_PROMPTS`` captions of the held-out test split."""
        from .run import load_train_data

        return list(load_train_data(self.config, "test").captions[:N_GRID_PROMPTS])

    def sample_grid(self, per_prompt: int = 4) -> str:
        cfg, info = self.config, self.info
        gen = np.random.default_rng([cfg.seed, 2])  # separate stream: never disturbs training draws
        path = self.path(os.path.join("samples", f"step_{self.step:06d}.png"))
        model = self.ema_model()
        if self.captioned:
            prompts = self.grid_prompts()
            out = self.pipeline(model)(prompts, num_inference_steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale,
                                       num_images_per_prompt=per_prompt, generator=gen, output_type="np")
            images = out.images.transpose(0, 3, 1, 2) * 2.0 - 1.0  # (P·k, 3, H, W) in [-1, 1]
            nd_io.save_image_grid(path, images, nrow=per_prompt, scale=2)
            nd_io.atomic_write(self.path(os.path.join("samples", "prompts.txt")),
                               "".join(f"row {k + 1}: {p}\n" for k, p in enumerate(prompts)))
            return path
        from ..pipelines import sample
        from ..pipelines.latents import decode_latents

        conditional = info.null_class is not None
        ncol = info.num_classes if conditional else 8
        labels = np.tile(np.arange(ncol), per_prompt) if conditional else None
        z = sample(model, make_scheduler(cfg.sample_scheduler, info.scheduler_config),
                   (per_prompt * ncol, *info.sample_shape), class_labels=labels,
                   guidance_scale=cfg.guidance_scale if conditional else 1.0, null_class=info.null_class,
                   generator=gen, num_inference_steps=cfg.sample_steps).samples
        nd_io.save_image_grid(path, np.clip(decode_latents(self.vae, z), -1, 1), nrow=ncol, scale=2)
        return path
