"""``StableDiffusionControlNetPipeline``: text-to-image steered by a condition image through a ControlNet.

The ``StableDiffusionPipeline`` loop (see stable_diffusion.py) with one change in the
denoiser: before every U-Net call, the ControlNet (Zhang et al. 2023) reads the same noisy
latents, timestep and text plus the condition image and returns one residual per U-Net skip
and one for the mid block, which the U-Net adds to its own. Diffusers' call signature
(``image=``, ``controlnet_conditioning_scale=``, ``guess_mode=``,
``control_guidance_start=`` / ``control_guidance_end=``) and semantics:

    scale_i = controlnet_conditioning_scale · keep_i,
    keep_i  = 0 if i/n < control_guidance_start or (i+1)/n > control_guidance_end else 1
    guidance on, guess mode off: the ControlNet sees both halves [∅ | c] with the image twice
    guidance on, guess mode on:  the ControlNet sees only the conditional half; the
                                 unconditional half gets zero residuals (the prompt-free
                                 branch is left to the U-Net alone)

The condition image is in [0, 1] (diffusers' ``VaeImageProcessor(do_normalize=False)``):
(H, W), (H, W, c), (B, H, W, c), (B, c, H, W) arrays, a Tensor, a PIL image or a list of
them; one image serves every prompt, or one per prompt. Its size sets the output size
when ``height`` / ``width`` are not given.
"""

from __future__ import annotations

import numpy as np

from ..autograd import Tensor, no_grad
from .stable_diffusion import StableDiffusionPipeline


def prepare_control_image(image, channels: int) -> np.ndarray:
    """A condition image (see the module docstring) as (B, ``channels``, H, W) float32 in [0, 1]."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("image: an empty list")
        return np.concatenate([prepare_control_image(im, channels) for im in image])
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    a = np.asarray(image.data if isinstance(image, Tensor) else image, dtype=np.float32)
    if a.ndim == 2:
        a = a[None, None]  # (1, 1, H, W)
    elif a.ndim == 3:
        a = a[None] if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3) else a[None].transpose(0, 3, 1, 2)
    elif a.ndim == 4 and a.shape[1] not in (1, 3) and a.shape[-1] in (1, 3):
        a = a.transpose(0, 3, 1, 2)  # (B, H, W, c) → (B, c, H, W)
    if a.ndim != 4:
        raise ValueError(f"image must be (H, W), (H, W, c), (B, H, W, c) or (B, c, H, W), got shape {a.shape}")
    if a.shape[1] == 1 and channels == 3:
        a = np.repeat(a, 3, axis=1)  # grey → RGB, as diffusers' do_convert_rgb
    if a.shape[1] != channels:
        raise ValueError(f"image has {a.shape[1]} channels, the ControlNet's conditioning_channels is {channels}")
    if a.min(initial=0.0) < -1e-6 or a.max(initial=0.0) > 1 + 1e-6:
        raise ValueError(f"image values must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
    return np.ascontiguousarray(a)


class StableDiffusionControlNetPipeline(StableDiffusionPipeline):
    """Text-to-image with a ControlNet; diffusers' constructor and call signature (module docstring)."""

    _components = ("vae", "text_encoder", "tokenizer", "unet", "controlnet", "scheduler")

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, safety_checker=None,
                 feature_extractor=None, image_encoder=None, requires_safety_checker: bool = False):
        if image_encoder is not None:
            raise ValueError("npdiff has no IP-Adapter image encoder: pass image_encoder=None")
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         requires_safety_checker)
        self.controlnet = controlnet
        self._control = None

    def __call__(self, prompt=None, image=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, negative_prompt=None,
                 num_images_per_prompt: int = 1, eta: float = 0.0, generator=None, latents=None,
                 output_type: str = "pil", return_dict: bool = True, controlnet_conditioning_scale: float = 1.0,
                 guess_mode: bool = False, control_guidance_start: float = 0.0, control_guidance_end: float = 1.0,
                 progress: bool = False):
        if image is None:
            raise ValueError("image (the ControlNet's condition) is required")
        if not 0.0 <= control_guidance_start < control_guidance_end <= 1.0:
            raise ValueError(f"need 0 <= control_guidance_start < control_guidance_end <= 1, got "
                             f"{control_guidance_start}, {control_guidance_end}")
        cond = prepare_control_image(image, self.controlnet.config.conditioning_channels)
        height, width = height or cond.shape[2], width or cond.shape[3]
        if cond.shape[2:] != (height, width):
            raise ValueError(f"image is {cond.shape[2]}×{cond.shape[3]}, the output is {height}×{width}: "
                             "resize the condition to the output size")
        n_prompts = 1 if isinstance(prompt, str) else len(prompt or [])
        if len(cond) == 1:
            cond = np.repeat(cond, n_prompts * num_images_per_prompt, axis=0)
        elif len(cond) == n_prompts:
            cond = np.repeat(cond, num_images_per_prompt, axis=0)
        else:
            raise ValueError(f"image: {len(cond)} condition images for {n_prompts} prompts (give 1 or {n_prompts})")
        self._control = dict(image=cond, scale=float(controlnet_conditioning_scale), guess_mode=bool(guess_mode),
                             start=control_guidance_start, end=control_guidance_end, step=0)
        try:
            return super().__call__(prompt, height=height, width=width, num_inference_steps=num_inference_steps,
                                    guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                                    num_images_per_prompt=num_images_per_prompt, eta=eta, generator=generator,
                                    latents=latents, output_type=output_type, return_dict=return_dict,
                                    progress=progress)
        finally:
            self._control = None

    def _unet_output(self, zz: np.ndarray, t_batch: np.ndarray, text: np.ndarray) -> np.ndarray:
        """The ControlNet's residuals for this step, then the U-Net with them (module docstring)."""
        c = self._control
        i, n = c["step"], len(self.scheduler.timesteps)
        c["step"] += 1
        keep = 0.0 if (i / n < c["start"] or (i + 1) / n > c["end"]) else 1.0
        B = len(c["image"])
        doubled = len(zz) == 2 * B  # guidance on: [∅ | c]
        if c["guess_mode"] and doubled:  # the ControlNet sees the conditional half only
            cn_z, cn_t, cn_text, cn_image = zz[B:], t_batch[B:], text[B:], c["image"]
        else:
            cn_z, cn_t, cn_text = zz, t_batch, text
            cn_image = np.concatenate([c["image"]] * (2 if doubled else 1))
        with no_grad():
            down, mid = self.controlnet(Tensor(cn_z), cn_t, Tensor(cn_text), cn_image,
                                        conditioning_scale=c["scale"] * keep, guess_mode=c["guess_mode"])
            if c["guess_mode"] and doubled:
                down = [Tensor(np.concatenate([np.zeros_like(r.data), r.data])) for r in down]
                mid = Tensor(np.concatenate([np.zeros_like(mid.data), mid.data]))
            out = self.unet(Tensor(zz), t_batch, Tensor(text), down_block_additional_residuals=down,
                            mid_block_additional_residual=mid)
        return np.asarray(out.data)
