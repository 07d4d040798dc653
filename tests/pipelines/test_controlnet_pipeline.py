"""StableDiffusionControlNetPipeline: a fresh ControlNet draws the plain pipeline's image bit for
bit; a trained (here: randomised) one steers; folders round-trip; diffusers' own ControlNet
pipeline draws the same images from a folder npdiff saved (guidance, guess mode, guidance window)."""

import numpy as np
import pytest

from npdiff.pipelines import StableDiffusionControlNetPipeline, StableDiffusionPipeline
from tests.pipelines.sd_stack import CAPTIONS, control_masks, initial_latents, tiny_controlnet_pipeline

KW = dict(num_inference_steps=3, output_type="np")


def test_fresh_controlnet_is_the_plain_pipeline():
    pipe = tiny_controlnet_pipeline(randomise=False)
    plain = StableDiffusionPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler)
    want = plain(CAPTIONS[:2], latents=initial_latents(), guidance_scale=3.0, **KW).images
    got = pipe(CAPTIONS[:2], image=control_masks(), latents=initial_latents(), guidance_scale=3.0, **KW).images
    np.testing.assert_array_equal(got, want)


def test_condition_steers_and_folders_round_trip(tmp_path):
    pipe = tiny_controlnet_pipeline()
    a = pipe(CAPTIONS[:2], image=control_masks(), latents=initial_latents(), guidance_scale=3.0, **KW).images
    b = pipe(CAPTIONS[:2], image=control_masks(seed=9), latents=initial_latents(), guidance_scale=3.0, **KW).images
    off = pipe(CAPTIONS[:2], image=control_masks(), latents=initial_latents(), guidance_scale=3.0,
               controlnet_conditioning_scale=0.0, **KW).images
    plain = StableDiffusionPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, pipe.scheduler)
    np.testing.assert_array_equal(off, plain(CAPTIONS[:2], latents=initial_latents(), guidance_scale=3.0,
                                             **KW).images)
    assert np.abs(a - b).max() > 1e-3
    pipe.save_pretrained(tmp_path / "p")
    back = StableDiffusionControlNetPipeline.from_pretrained(tmp_path / "p")
    np.testing.assert_array_equal(back(CAPTIONS[:2], image=control_masks(), latents=initial_latents(),
                                       guidance_scale=3.0, **KW).images, a)
    with pytest.raises(ValueError, match="2 condition images for 3 prompts"):
        pipe(CAPTIONS[:3], image=control_masks(), **KW)
    with pytest.raises(ValueError, match="channels"):
        pipe(CAPTIONS[:1], image=np.zeros((1, 2, 16, 16), np.float32), **KW)


@pytest.mark.parametrize("options", [dict(guidance_scale=1.0), dict(guidance_scale=4.0, guess_mode=True),
                                     dict(guidance_scale=3.0, controlnet_conditioning_scale=0.6,
                                          control_guidance_end=0.5)])
def test_diffusers_draws_the_same_image(options, tmp_path):
    torch = pytest.importorskip("torch", reason="oracle tests need torch")
    diffusers = pytest.importorskip("diffusers", reason="oracle tests need diffusers")
    pytest.importorskip("transformers", reason="oracle tests need transformers")
    ours = tiny_controlnet_pipeline()
    ours.save_pretrained(tmp_path / "p")
    ref = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        tmp_path / "p", safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    masks = control_masks()
    with torch.no_grad():
        want = ref(CAPTIONS[:2], image=torch.from_numpy(masks), latents=torch.from_numpy(initial_latents()), **KW,
                   **options).images
    got = ours(CAPTIONS[:2], image=masks, latents=initial_latents(), **KW, **options).images
    # images in [0, 1]: float32 rounding through three steps of ControlNet + U-Net and the decoder
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


def test_control_image_layouts():
    """(H, W), (H, W, c), (B, H, W, c), (B, c, H, W) arrays, PIL images and lists become (B, c, H, W) in [0, 1]."""
    from PIL import Image

    from npdiff.pipelines import prepare_control_image

    m = control_masks(2)  # (2, 1, 16, 16)
    np.testing.assert_array_equal(prepare_control_image(m[0, 0], 1), m[:1])
    np.testing.assert_array_equal(prepare_control_image(m[0].transpose(1, 2, 0), 1), m[:1])
    np.testing.assert_array_equal(prepare_control_image(m.transpose(0, 2, 3, 1), 1), m)
    np.testing.assert_array_equal(prepare_control_image(m, 3), np.repeat(m, 3, axis=1))  # grey → RGB
    pil = [Image.fromarray((a[0] * 255).astype(np.uint8)) for a in m]
    np.testing.assert_array_equal(prepare_control_image(pil, 1), m)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        prepare_control_image(m * 2 - 1, 1)
