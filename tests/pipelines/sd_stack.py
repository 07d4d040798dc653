"""A tiny Stable Diffusion stack for the pipeline tests: 2-level VAE (f = 2), 2-level
cross-attention U-Net, 2-layer CLIP text encoder, a vocabulary built from our captions."""

import numpy as np

import npdiff as nd
from npdiff.models import AutoencoderKL, CLIPTextModel, CLIPTokenizer, UNet2DConditionModel, build_clip_vocab
from npdiff.pipelines import StableDiffusionPipeline
from npdiff.schedulers import DDIMScheduler

CAPTIONS = ["a small red circle at the top left", "a large blue square and a green triangle",
            "a yellow triangle at the bottom right", "a purple circle and an orange square"]
VAE = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
           norm_num_groups=4, sample_size=16,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            norm_num_groups=8, cross_attention_dim=16, attention_head_dim=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
MAX_LEN = 12
# Stable Diffusion v1's DDIM settings (diffusers' pipeline rewrites steps_offset != 1 to 1)
SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1)


def _text(vocab_size):
    return dict(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=MAX_LEN, hidden_act="quick_gelu",
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)


def _perturb(model, seed, scale=0.05):
    """Random-initialised npdiff weights plus noise, so zero-initialised layers matter too."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data += (scale * rng.standard_normal(p.shape)).astype(p.dtype)
    return model.eval()


def tiny_pipeline():
    nd.manual_seed(0)
    vocab, merges = build_clip_vocab(CAPTIONS * 3)
    tok = CLIPTokenizer(vocab, merges, model_max_length=MAX_LEN)
    return StableDiffusionPipeline(
        vae=_perturb(AutoencoderKL(**VAE), 1), text_encoder=_perturb(CLIPTextModel(**_text(len(vocab))), 2),
        tokenizer=tok, unet=_perturb(UNet2DConditionModel(**UNET), 3), scheduler=DDIMScheduler(**SCHEDULER))


def initial_latents(seed=4):
    return np.random.default_rng(seed).standard_normal((2, 4, 8, 8)).astype(np.float32)


def tiny_controlnet_pipeline(randomise: bool = True):
    """The tiny stack plus a ControlNet from its U-Net (1-channel masks at 16×16 pixels: the
    conditioning embedding downsamples by 2 to the 8×8 latents); ``randomise`` perturbs every
    ControlNet weight, zero convs included, so that it steers."""
    from npdiff.models import ControlNetModel
    from npdiff.pipelines import StableDiffusionControlNetPipeline

    base = tiny_pipeline()
    nd.manual_seed(5)
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(4, 8),
                                           conditioning_channels=1)
    if randomise:
        _perturb(controlnet, 6, scale=0.1)
    return StableDiffusionControlNetPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                             unet=base.unet, controlnet=controlnet.eval(), scheduler=base.scheduler)


def control_masks(n=2, seed=8):
    """(n, 1, 16, 16) binary condition images: a filled square at a random place."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 1, 16, 16), np.float32)
    for i in range(n):
        r, c = rng.integers(0, 8, size=2)
        masks[i, 0, r:r + 8, c:c + 8] = 1.0
    return masks


def tiny_pipeline_32():
    """The tiny stack at the ``shapes`` size: 32×32 images, 16×16 latents (the U-Net is the same)."""
    pipe = tiny_pipeline()
    nd.manual_seed(0)
    unet = _perturb(UNet2DConditionModel(**{**UNET, "sample_size": 16}), 3)
    return StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                   unet=unet, scheduler=pipe.scheduler)
