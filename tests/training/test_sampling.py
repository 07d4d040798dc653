"""The sampling loop: batched classifier-free guidance, trajectories, seeds and bad arguments."""

import numpy as np
import pytest

import npdiff as nd
from npdiff.autograd import Tensor
from npdiff.models.toy import ToyMLPDenoiser
from npdiff.pipelines import DiffusionPipeline, sample
from npdiff.schedulers import DDIMScheduler, DDPMScheduler


class CountingModel:
    """Wraps a model and records the batch size of every forward call."""

    def __init__(self, model):
        self.model, self.batches = model, []

    def eval(self):
        self.model.eval()

    def __call__(self, x, t, class_labels=None):
        self.batches.append(x.shape[0])
        return self.model(x, t, class_labels=class_labels)


def _model():
    nd.manual_seed(0)
    return ToyMLPDenoiser(hidden_dim=16, num_blocks=1, num_class_embeds=4)  # 3 classes + null class 3


def test_guidance_is_one_batched_forward_equal_to_two_passes():
    model = CountingModel(_model())
    labels = np.array([0, 1, 2, 0, 1])
    out = sample(model, DDIMScheduler(clip_sample=False), (5, 2), class_labels=labels, guidance_scale=2.5,
                 null_class=3, generator=1, num_inference_steps=4)
    assert model.batches == [10] * 4  # conditional and unconditional rows in one forward per step

    # the same loop written out with two separate passes
    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(4)
    x = np.random.default_rng(1).standard_normal((5, 2)).astype(np.float32)
    for t in sched.timesteps:
        tb = np.full(5, t)
        cond = model.model(Tensor(x), tb, class_labels=labels).data
        uncond = model.model(Tensor(x), tb, class_labels=np.full(5, 3)).data
        x = sched.step(uncond + 2.5 * (cond - uncond), t, x).prev_sample
    np.testing.assert_allclose(out.samples, x, rtol=1e-5, atol=1e-6)


def test_scale_one_and_unconditional_use_one_pass():
    model = CountingModel(_model())
    sample(model, DDIMScheduler(clip_sample=False), (3, 2), class_labels=[0, 1, 2], generator=0,
           num_inference_steps=2)
    assert model.batches == [3, 3]


def test_trajectory_records_xt_and_x0_at_chosen_steps():
    pipe = DiffusionPipeline(_model(), DDPMScheduler(clip_sample=False), (2,), null_class=3)
    out = pipe(batch_size=4, num_inference_steps=10, class_labels=[0, 1, 2, 0], guidance_scale=2.0, generator=7,
               trajectory_steps=3)
    assert out.trajectory.shape == out.pred_x0.shape == (3, 4, 2)
    assert out.timesteps == [900, 500, 0]  # steps 0, 4 (4.5 rounded to even), 9 of the "leading" schedule
    np.testing.assert_array_equal(out.trajectory[0], np.random.default_rng(7).standard_normal((4, 2)).astype(np.float32))
    again = pipe(batch_size=4, num_inference_steps=10, class_labels=[0, 1, 2, 0], guidance_scale=2.0, generator=7)
    np.testing.assert_array_equal(out.samples, again.samples)  # the seed fixes the stochastic sampler
    assert again.trajectory is None


def test_bad_arguments():
    m = _model()
    with pytest.raises(ValueError, match="needs null_class"):
        sample(m, DDIMScheduler(), (2, 2), class_labels=[0, 1], guidance_scale=3.0, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"class_labels must have shape \(2,\)"):
        sample(m, DDIMScheduler(), (2, 2), class_labels=[0, 1, 2], num_inference_steps=2)
    with pytest.raises(ValueError, match="needs class_labels"):
        sample(m, DDIMScheduler(), (2, 2), guidance_scale=3.0, num_inference_steps=2)
    with pytest.raises(ValueError, match="trajectory_steps must lie in 0"):
        sample(m, DDIMScheduler(), (2, 2), class_labels=[0, 1], num_inference_steps=2, trajectory_steps=[5])
