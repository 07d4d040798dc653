"""``npdiff train --model classifier --device cuda`` on the simulated device: one step of a tiny
noisy-image classifier (EncoderUNetModel: one level of 2 channels on 4×4 digits, batch 1) runs on
the cuda column, copies only its inputs over, and leaves the CPU run's checkpoint."""

from npdiff import backend
from npdiff.training.classifier import ClassifierTrainer
from tests.cuda.device_runs import ONE_TINY_STEP, ONE_TINY_STEP_LR, assert_first_steps_agree, recorded, train
from tests.models.test_unet_2d_reference_kernels import TERMS

FLAGS = ["--model", "classifier", "--no-attention", *ONE_TINY_STEP]


def test_a_classifier_step_on_the_device_equals_the_cpu_step(tmp_path):
    cpu = train(tmp_path / "cpu", FLAGS, "cpu")
    with recorded(ClassifierTrainer) as rec:
        gpu = train(tmp_path / "cuda", FLAGS, "cuda")
    assert rec["columns"] == [{"cuda"}]  # every kernel of the step, chosen by the arrays' type alone
    if backend.gpu_kind() == "simulator":  # cupy does not count copies
        # the batch x₀ and its noise ε, t (the time embedding), √ᾱ_t and √(1−ᾱ_t) for q_sample, and the
        # one-hot rows of the labels for the cross-entropy
        assert rec["steps"] == [{"reads": 0, "writes": 2 + 1 + 2 + 1}]
        assert rec["reads"] == [(1, 1)]
    assert_first_steps_agree(cpu, gpu, (tmp_path / "cpu", tmp_path / "cuda"), ONE_TINY_STEP_LR, TERMS)
