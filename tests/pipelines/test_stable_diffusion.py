"""StableDiffusionPipeline on a tiny stack (``sd_stack.py``): outputs, seeds, guidance, folders,
bad input. Agreement with diffusers' own pipeline is in ``test_stable_diffusion_oracle.py``."""

import numpy as np
import pytest
from tests.pipelines.sd_stack import CAPTIONS, initial_latents, tiny_pipeline

from npdiff.pipelines import StableDiffusionPipeline
from npdiff.schedulers import EulerDiscreteScheduler


@pytest.fixture(scope="module")
def ours():
    return tiny_pipeline()


def test_defaults_shapes_and_output_types(ours):
    assert ours.vae_scale_factor == 2
    out = ours(CAPTIONS[:2], num_inference_steps=2, guidance_scale=3.0, latents=initial_latents(), output_type="np")
    assert out.images.shape == (2, 16, 16, 3) and out.images.dtype == np.float32
    assert out.images.min() >= 0.0 and out.images.max() <= 1.0
    pil = ours(CAPTIONS[0], num_inference_steps=2, generator=np.random.default_rng(0)).images
    assert len(pil) == 1 and pil[0].size == (16, 16)
    lat = ours(CAPTIONS[0], num_inference_steps=2, generator=np.random.default_rng(0), output_type="latent").images
    assert lat.shape == (1, 4, 8, 8)
    # a seed fixes the image; the prompt changes it
    a = ours(CAPTIONS[0], num_inference_steps=2, generator=np.random.default_rng(5), output_type="np").images
    b = ours(CAPTIONS[0], num_inference_steps=2, generator=np.random.default_rng(5), output_type="np").images
    c = ours(CAPTIONS[2], num_inference_steps=2, generator=np.random.default_rng(5), output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_guidance_scale_one_is_the_conditional_model(ours):
    """s = 1 skips the unconditional pass (diffusers: guidance only when s > 1), so the negative
    prompt cannot change the image."""
    plain = ours(CAPTIONS[:2], num_inference_steps=2, guidance_scale=1.0, latents=initial_latents(), output_type="latent")
    neg = ours(CAPTIONS[:2], num_inference_steps=2, guidance_scale=1.0, negative_prompt=CAPTIONS[2:],
               latents=initial_latents(), output_type="latent")
    np.testing.assert_array_equal(plain.images, neg.images)  # no guidance: the negative prompt is unused


def test_bad_inputs(ours, tmp_path):
    with pytest.raises(ValueError, match="output_type"):
        ours("a red circle", output_type="tensor")
    with pytest.raises(ValueError, match="multiples of 2"):
        ours("a red circle", height=15, width=16)
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 4, 8, 8\)"):
        ours("a red circle", latents=np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="negative_prompt has 1 entries for 2 prompts"):
        ours(CAPTIONS[:2], negative_prompt=["x"], num_inference_steps=1)
    with pytest.raises(ValueError, match="model_index.json is missing"):
        StableDiffusionPipeline.from_pretrained(tmp_path)
    ours.save_pretrained(tmp_path / "p")
    index = (tmp_path / "p" / "model_index.json").read_text().replace('"UNet2DConditionModel"', '"UNetMystery"')
    (tmp_path / "p" / "model_index.json").write_text(index)
    with pytest.raises(ValueError, match="'unet' has class 'UNetMystery'"):
        StableDiffusionPipeline.from_pretrained(tmp_path / "p")


def test_folder_round_trip_and_scheduler_swap(ours, tmp_path):
    ours.save_pretrained(tmp_path / "p")
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tmp_path / "p" / sub).is_dir()
    back = StableDiffusionPipeline.from_pretrained(tmp_path / "p")
    kw = dict(num_inference_steps=3, guidance_scale=2.0, latents=initial_latents(), output_type="np")
    np.testing.assert_array_equal(back(CAPTIONS[:2], **kw).images, ours(CAPTIONS[:2], **kw).images)
    euler = StableDiffusionPipeline.from_pretrained(tmp_path / "p", scheduler=EulerDiscreteScheduler.from_pretrained(
        tmp_path / "p", subfolder="scheduler"))
    assert isinstance(euler.scheduler, EulerDiscreteScheduler)
    assert np.isfinite(euler(CAPTIONS[:2], **kw).images).all()
