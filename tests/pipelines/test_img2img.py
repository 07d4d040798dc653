"""SDEdit: strength 0 returns the input exactly, strength 1 is sampling from noise, and in between
the input is noised to the level of the first step run."""

import numpy as np
import pytest

import npdiff as nd
from npdiff.autograd import Tensor
from npdiff.models import UNet2DModel
from npdiff.pipelines import Img2ImgPipeline, img2img, sample
from npdiff.schedulers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

SCHEDULERS = {"ddpm": lambda: DDPMScheduler(clip_sample=False), "ddim": lambda: DDIMScheduler(clip_sample=False),
              "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler}


def tiny_unet():
    nd.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4, num_class_embeds=4)


IMAGE = np.random.default_rng(0).uniform(-1, 1, (3, 1, 8, 8)).astype(np.float32)
LABELS = [0, 1, 2]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_strength_endpoints(name):
    model = tiny_unet()
    zero = img2img(model, SCHEDULERS[name](), IMAGE, 0.0, num_inference_steps=5, class_labels=LABELS,
                   guidance_scale=2.0, null_class=3, generator=4)
    np.testing.assert_array_equal(zero.samples, IMAGE)
    one = img2img(model, SCHEDULERS[name](), IMAGE, 1.0, num_inference_steps=5, class_labels=LABELS,
                  guidance_scale=2.0, null_class=3, generator=4)
    ref = sample(model, SCHEDULERS[name](), IMAGE.shape, class_labels=LABELS, guidance_scale=2.0, null_class=3,
                 generator=4, num_inference_steps=5)
    np.testing.assert_array_equal(one.samples, ref.samples)  # same generator: the same draws, bit for bit


class Recorder:
    """A model that records its inputs and predicts zero noise."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, class_labels=None):
        self.calls.append((np.asarray(t).reshape(-1)[0], x.data.copy()))
        return Tensor(np.zeros_like(x.data))


@pytest.mark.parametrize("strength, steps_run", [(0.3, 3), (0.55, 5), (0.99, 9)])
def test_partial_strength_starts_from_the_input_noised_to_the_first_step(strength, steps_run):
    """⌊n·s⌋ steps are run, the first at t_{n−k}, on √ᾱ x⁰ + √(1−ᾱ) z with z the generator's first draw."""
    rec = Recorder()
    sched = DDIMScheduler(clip_sample=False)
    img2img(rec, sched, IMAGE, strength, num_inference_steps=10, generator=9)
    assert len(rec.calls) == steps_run
    t0, x_first = rec.calls[0]
    assert t0 == sched.timesteps[10 - steps_run]
    z = np.random.default_rng(9).standard_normal(IMAGE.shape)
    ab = sched.alphas_cumprod[t0]
    np.testing.assert_allclose(x_first, np.sqrt(ab) * IMAGE + np.sqrt(1 - ab) * z, rtol=1e-6, atol=1e-6)


def test_distance_to_input_grows_with_strength():
    model = tiny_unet()
    dist = [np.abs(img2img(model, DDIMScheduler(clip_sample=False), IMAGE, s, num_inference_steps=10,
                           class_labels=LABELS, generator=0).samples - IMAGE).mean() for s in (0.1, 0.5, 1.0)]
    assert dist[0] < dist[1] < dist[2]


def test_pipeline_call_signature_and_errors():
    model = tiny_unet()
    pipe = Img2ImgPipeline(model, DDIMScheduler(clip_sample=False), null_class=3)
    out = pipe(image=IMAGE, strength=0.6, num_inference_steps=5, class_labels=LABELS, guidance_scale=2.0, generator=1)
    ref = img2img(model, DDIMScheduler(clip_sample=False), IMAGE, 0.6, num_inference_steps=5, class_labels=LABELS,
                  guidance_scale=2.0, null_class=3, generator=1)
    np.testing.assert_array_equal(out.samples, ref.samples)
    with pytest.raises(ValueError, match="strength must be in"):
        img2img(model, DDIMScheduler(), IMAGE, -0.1, num_inference_steps=5, class_labels=LABELS)
    with pytest.raises(ValueError, match=r"class_labels must have shape \(3,\)"):
        img2img(model, DDIMScheduler(), IMAGE, 0.5, num_inference_steps=5, class_labels=[0])
