"""``npdiff train --model vae --device cuda`` on the simulated device: one step of a tiny
AutoencoderKL (one level of 2 channels, 4×4 digits, batch 1: each simulated conv costs ~0.2 s)
runs on the cuda column, copies only its batch and its noise over, and leaves the CPU run's
checkpoint."""

from npdiff import backend
from npdiff.training import VAETrainer
from tests.cuda.device_runs import ONE_TINY_STEP, ONE_TINY_STEP_LR, assert_first_steps_agree, recorded, train
from tests.models.test_unet_2d_reference_kernels import TERMS

FLAGS = ["--model", "vae", "--latent-channels", "2", *ONE_TINY_STEP]


def test_a_vae_step_on_the_device_equals_the_cpu_step(tmp_path):
    cpu = train(tmp_path / "cpu", FLAGS, "cpu")
    with recorded(VAETrainer) as rec:
        gpu = train(tmp_path / "cuda", FLAGS, "cuda")
    assert rec["columns"] == [{"cuda"}]  # every kernel of the step, chosen by the arrays' type alone
    if backend.gpu_kind() == "simulator":  # cupy does not count copies
        # the batch x₀ and the reparameterisation noise ε (drawn on the host: the CPU run's stream)
        assert rec["steps"] == [{"reads": 0, "writes": 2}]
        assert rec["reads"] == [(1, 1)]  # loss, recon, kl and ‖g‖ of the step in one read
    # the VAE's chains are no longer than the tiny UNet's: ≤ 20 layers of ≤ 9·2-term conv sums, a 16-pixel
    # mean, 16-position attention and 16-position weight-gradient sums
    assert_first_steps_agree(cpu, gpu, (tmp_path / "cpu", tmp_path / "cuda"), ONE_TINY_STEP_LR, TERMS,
                             log_keys=("loss", "recon", "kl"))
