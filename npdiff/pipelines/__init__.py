"""Sampling and editing loops on top of the schedulers: noise → data with classifier-free or
classifier guidance, SDEdit image-to-image, inpainting with RePaint resampling, DDIM inversion,
and latent text-to-image (``StableDiffusionPipeline``, ``StableDiffusionControlNetPipeline``)."""

from .classifier_guidance import ClassifierGuidedPredictor, NullClassModel, classifier_guided_sample, log_prob_grad
from .controlnet import StableDiffusionControlNetPipeline, prepare_control_image
from .img2img import Img2ImgPipeline, img2img
from .inpaint import InpaintPipeline, inpaint, repaint_schedule
from .inversion import ddim_edit, ddim_invert
from .sampling import DiffusionPipeline, SampleOutput, denoise, denoiser, sample
from .stable_diffusion import StableDiffusionPipeline, StableDiffusionPipelineOutput

__all__ = [
    "ClassifierGuidedPredictor", "DiffusionPipeline", "Img2ImgPipeline", "InpaintPipeline", "NullClassModel", "SampleOutput",
    "StableDiffusionControlNetPipeline", "StableDiffusionPipeline", "StableDiffusionPipelineOutput",
    "prepare_control_image",
    "classifier_guided_sample", "ddim_edit", "ddim_invert", "denoise", "denoiser", "img2img", "inpaint",
    "log_prob_grad", "repaint_schedule", "sample",
]
