"""StableDiffusionPipeline against diffusers' own: a folder npdiff saved loads in diffusers'
``StableDiffusionPipeline`` and draws the same image from the same initial latents; a folder
diffusers saved loads in npdiff and draws the same image."""

import numpy as np
import pytest

from tests.pipelines.sd_stack import CAPTIONS, initial_latents, tiny_pipeline

from npdiff.pipelines import StableDiffusionPipeline

torch = pytest.importorskip("torch", reason="oracle tests need torch")
diffusers = pytest.importorskip("diffusers", reason="oracle tests need diffusers")
pytest.importorskip("transformers", reason="oracle tests need transformers")


@pytest.fixture(scope="module")
def ours():
    return tiny_pipeline()


def _diffusers_images(folder, prompts, latents, **kw):
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(prompts, latents=torch.from_numpy(latents), output_type="np", **kw).images


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_diffusers_loads_what_npdiff_saves_and_draws_the_same_image(ours, tmp_path, guidance_scale):
    ours.save_pretrained(tmp_path / "p")
    kw = dict(num_inference_steps=3, guidance_scale=guidance_scale)
    want = _diffusers_images(tmp_path / "p", CAPTIONS[:2], initial_latents(), **kw)
    got = ours(CAPTIONS[:2], latents=initial_latents(), output_type="np", **kw).images
    # images in [0, 1]: float32 rounding through three U-Net passes and the decoder is ~1e-6
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


def test_npdiff_loads_what_diffusers_saves(ours, tmp_path):
    ours.save_pretrained(tmp_path / "p")
    ref = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "p", safety_checker=None,
                                                            feature_extractor=None, requires_safety_checker=False)
    ref.save_pretrained(tmp_path / "d")
    back = StableDiffusionPipeline.from_pretrained(tmp_path / "d")
    kw = dict(num_inference_steps=2, guidance_scale=3.0)
    want = _diffusers_images(tmp_path / "d", CAPTIONS[2:], initial_latents(7), **kw)
    np.testing.assert_allclose(back(CAPTIONS[2:], latents=initial_latents(7), output_type="np", **kw).images, want,
                               rtol=0, atol=2e-4)
