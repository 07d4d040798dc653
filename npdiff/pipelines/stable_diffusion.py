"""``StableDiffusionPipeline``: prompt → text encoder → latent U-Net under guidance → VAE decoder.

The system of Rombach et al. 2022 (latent diffusion) with Ho & Salimans' classifier-free
guidance, with diffusers' call signature and folder layout, so that a folder written here
loads in diffusers and the other way round.

Letters: B prompts × images per prompt, Lk text tokens, D text width, c latent channels,
f = 2^(levels − 1) the VAE's downsampling factor, h = H/f, w = W/f.

    ids   = tokenizer(prompt, padding="max_length", truncation=True)     (B, Lk)
    e     = text_encoder(ids).last_hidden_state                          (B, Lk, D)
    e_∅   = text_encoder(tokenizer(negative_prompt or "")) …             (B, Lk, D)
    z_T   ~ N(0, σ_init² I)                                              (B, c, h, w)
    for t in scheduler.timesteps:                                        (npdiff.pipelines.sampling.denoise)
        [ε_∅, ε_c] = unet([z, z], t, [e_∅, e])       one batched forward of 2B
        ε̂ = ε_∅ + s (ε_c − ε_∅)                      (Ho & Salimans 2022, eq. 6)
        z = scheduler.step(ε̂, t, z).prev_sample
    x     = vae.decode(z / scaling_factor).sample                         (B, 3, H, W) in [−1, 1]

As in diffusers: guidance runs only when ``guidance_scale > 1``; the unconditional half
comes first in the batch; ``scaling_factor`` is the VAE's configuration, applied by the
pipelines' shared ``latents.decode_latents`` (Stable Diffusion v1 has no ``shift_factor``).
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass

import numpy as np

from .. import io as nd_io
from ..autograd import Tensor, no_grad
from ..diffusion import classifier_free_guidance
from .latents import decode_latents
from .sampling import as_generator, denoise, eval_mode, scheduler_timesteps, step_kwargs_for

MODEL_INDEX = "model_index.json"
# (library, class) that model_index.json records for each component, as diffusers writes it
_LIBRARIES = {"UNet2DConditionModel": "diffusers", "AutoencoderKL": "diffusers",
              "CLIPTextModel": "transformers", "CLIPTokenizer": "transformers"}
_IGNORED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


@dataclass
class StableDiffusionPipelineOutput:
    """``images``: a list of PIL images, an (B, H, W, 3) float array in [0, 1] ("np") or the
    final latents ("latent"); ``nsfw_content_detected``: None (npdiff has no safety checker)."""

    images: object
    nsfw_content_detected: object = None


def _component_classes() -> dict:
    from .. import schedulers
    from ..models import AutoencoderKL, CLIPTextModel, CLIPTokenizer, ControlNetModel, UNet2DConditionModel

    classes = {c.__name__: c for c in (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer,
                                       ControlNetModel)}
    classes.update({name: getattr(schedulers, name) for name in dir(schedulers)
                    if name.endswith("Scheduler") and inspect.isclass(getattr(schedulers, name))})
    return classes


def to_output(images: np.ndarray, output_type: str):
    """(B, 3, H, W) in [−1, 1] → what ``output_type`` asks for ("pil", "np")."""
    x = np.clip(images / 2.0 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)  # (B, H, W, 3) in [0, 1]
    if output_type == "np":
        return x.astype(np.float32)
    from PIL import Image

    u8 = np.round(x * 255.0).astype(np.uint8)
    return [Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im) for im in u8]


class StableDiffusionPipeline:
    """Text-to-image latent diffusion with diffusers' call signature (see the module docstring)."""

    _components = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None,
                 feature_extractor=None, requires_safety_checker: bool = False):
        if safety_checker is not None or feature_extractor is not None:
            raise ValueError("npdiff has no safety checker: pass safety_checker=None, feature_extractor=None")
        self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler = (
            vae, text_encoder, tokenizer, unet, scheduler)

    @property
    def vae_scale_factor(self) -> int:
        """f: each VAE level but the last halves the resolution."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # -- the three stages ------------------------------------------------------
    def _embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), Lk, D) last hidden states of the text encoder."""
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="np")["input_ids"]
        with no_grad():
            return np.asarray(self.text_encoder(ids).last_hidden_state.data)

    def encode_prompt(self, prompt, num_images_per_prompt: int = 1, do_classifier_free_guidance: bool = True,
                      negative_prompt=None):
        """(prompt_embeds, negative_prompt_embeds or None), each (B, Lk, D), B = prompts × images."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
        embeds = np.repeat(self._embed(prompts), num_images_per_prompt, axis=0)
        if not do_classifier_free_guidance:
            return embeds, None
        if negative_prompt is None:
            negatives = [""] * len(prompts)
        else:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) != len(prompts):
                raise ValueError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts")
        return embeds, np.repeat(self._embed(negatives), num_images_per_prompt, axis=0)

    def prepare_latents(self, batch: int, height: int, width: int, generator, latents=None) -> np.ndarray:
        """z_T (B, c, h, w): the given ``latents`` or N(0, I), times σ_init (diffusers' rule)."""
        f = self.vae_scale_factor
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of {f} (the VAE's factor), got {height}×{width}")
        shape = (batch, self.unet.config.in_channels, height // f, width // f)
        if latents is None:
            latents = as_generator(generator).standard_normal(shape)
        latents = np.asarray(latents.data if isinstance(latents, Tensor) else latents, dtype=np.float32)
        if latents.shape != shape:
            raise ValueError(f"latents must have shape {shape}, got {latents.shape}")
        return (latents * np.float32(self.scheduler.init_noise_sigma)).astype(np.float32)

    def _unet_output(self, zz: np.ndarray, t_batch: np.ndarray, text: np.ndarray) -> np.ndarray:
        """One U-Net forward on the (guidance-doubled) batch; the ControlNet pipeline adds residuals here."""
        return np.asarray(self.unet(Tensor(zz), t_batch, Tensor(text)).data)

    def __call__(self, prompt=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, negative_prompt=None,
                 num_images_per_prompt: int = 1, eta: float = 0.0, generator=None, latents=None,
                 output_type: str = "pil", return_dict: bool = True, progress: bool = False):
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'latent', got {output_type!r}")
        size = self.unet.config.sample_size * self.vae_scale_factor
        height, width = height or size, width or size
        rng = as_generator(generator)
        cfg_on = guidance_scale > 1.0
        embeds, negative = self.encode_prompt(prompt, num_images_per_prompt, cfg_on, negative_prompt)
        text = embeds if negative is None else np.concatenate([negative, embeds])  # (2B, Lk, D): [∅ | c]
        z = self.prepare_latents(embeds.shape[0], height, width, rng, latents)
        timesteps = scheduler_timesteps(self.scheduler, num_inference_steps)
        extra = {"eta": eta} if "eta" in inspect.signature(self.scheduler.step).parameters else {}

        def predict(z_in, t):
            zz = np.concatenate([z_in, z_in]) if cfg_on else z_in  # (2B or B, c, h, w)
            t_batch = np.full((zz.shape[0],), t)
            out = self._unet_output(zz, t_batch, text)
            if not cfg_on:
                return out
            out_uncond, out_text = np.split(out, 2)
            return classifier_free_guidance(out_uncond, out_text, guidance_scale)

        with eval_mode(self.unet):
            z = denoise(predict, self.scheduler, z, timesteps, step_kwargs_for(self.scheduler, rng, extra),
                        progress=progress).samples
        images = z if output_type == "latent" else to_output(decode_latents(self.vae, z), output_type)
        return StableDiffusionPipelineOutput(images=images) if return_dict else (images, None)

    # -- folders -----------------------------------------------------------------
    def save_pretrained(self, save_directory) -> None:
        """Diffusers' pipeline layout: model_index.json + one subfolder per component."""
        folder = os.fspath(save_directory)
        os.makedirs(folder, exist_ok=True)
        index = {"_class_name": type(self).__name__, "_diffusers_version": "0.42.1",
                 "requires_safety_checker": False,
                 **{name: [None, None] for name in _IGNORED_COMPONENTS}}
        for name in self._components:
            comp = getattr(self, name)
            cls = type(comp).__name__
            index[name] = [_LIBRARIES.get(cls, "diffusers"), cls]
            comp.save_pretrained(os.path.join(folder, name))
        nd_io.save_json(os.path.join(folder, MODEL_INDEX), index)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **components):
        """Load a diffusers pipeline folder; keyword arguments replace components (e.g. a scheduler).

        The safety checker and feature extractor of a Stable Diffusion folder are not loaded
        (npdiff has none); a warning says so.
        """
        folder = os.fspath(pretrained_model_name_or_path)
        path = os.path.join(folder, MODEL_INDEX)
        if not os.path.isfile(path):
            raise ValueError(f"{folder!r} is not a pipeline folder: {MODEL_INDEX} is missing")
        index = nd_io.load_json(path)
        skipped = [k for k in _IGNORED_COMPONENTS if index.get(k) not in (None, [None, None])]
        if skipped:
            warnings.warn(f"{path}: components {skipped} are not loaded (npdiff has no safety checker)", stacklevel=2)
        classes = _component_classes()
        for name in cls._components:
            if name in components:
                continue
            entry = index.get(name)
            if not (isinstance(entry, list) and len(entry) == 2):
                raise ValueError(f"{path}: component {name!r} is missing or not a [library, class] pair: {entry!r}")
            comp_cls = classes.get(entry[1])
            if comp_cls is None:
                raise ValueError(f"{path}: component {name!r} has class {entry[1]!r}, which npdiff does not provide "
                                 f"(known: {sorted(classes)})")
            components[name] = comp_cls.from_pretrained(folder, subfolder=name)
        return cls(**{name: components[name] for name in cls._components})
