"""``npdiff train --model dit --vae DIR --device cuda`` on the simulated device: the frozen VAE
encodes the training images on the device (step 0), and one step of a class-conditional latent DiT
(``LatentTrainer``) runs on the cuda column, copies only its inputs over, and leaves the CPU run's
checkpoint. The latent U-Net (``--model ldm``) takes the same path through ``LatentTrainer`` with
the UNet2DModel of tests/cuda/test_train_cuda.py, so the cheaper DiT stands for both here (the
simulator pays ~0.1–0.5 ms per GPU thread)."""

from npdiff import backend
from npdiff.training import TrainConfig
from npdiff.training.latent_trainer import LatentTrainer
from tests.cuda.device_runs import assert_first_steps_agree, recorded, train
from tests.models.test_unet_2d_reference_kernels import TERMS

LR = 2e-3


def test_a_latent_dit_step_on_the_device_equals_the_cpu_step(tmp_path):
    # the frozen VAE: one level of 2 channels (f = 1: 4×4×2 latents), one CPU step is enough
    vae = TrainConfig(model="vae", image_size=4, block_out_channels=(2,), norm_num_groups=2, latent_channels=2,
                      batch_size=1, steps=1, sample_every=1000)
    train(tmp_path / "vae", vae, "cpu")
    # one training image (subset 1): step 0 encodes one image on the device
    dit = TrainConfig(model="dit", vae=str(tmp_path / "vae"), subset=1, image_size=4, hidden_dim=4, num_blocks=1,
                      patch_size=2, batch_size=1, steps=1, warmup_steps=1, lr=LR, log_every=1, sample_every=1000,
                      checkpoint_every=1000, seed=0)
    cpu = train(tmp_path / "cpu", dit, "cpu")
    with recorded(LatentTrainer) as rec:
        gpu = train(tmp_path / "cuda", dit, "cuda")
    assert rec["columns"] == [{"cuda"}]  # every kernel of the step, chosen by the arrays' type alone
    if backend.gpu_kind() == "simulator":  # cupy does not count copies
        # the batch's moments (μ, log σ²), ε₁ of the posterior sample, the noise ε; t (the DiT's time code);
        # y, range-checked on the host, by each of the conditioning embeddings (as diffusers', the one block's
        # adaLN-Zero and the final layer's); √ᾱ_t, √(1−ᾱ_t) for q_sample and again for the v target
        assert rec["steps"] == [{"reads": 0, "writes": 3 + 1 + 2 + 2 + 2}]
        assert rec["reads"] == [(1, 1)]
    assert_first_steps_agree(cpu, gpu, (tmp_path / "cpu", tmp_path / "cuda"), LR, TERMS)
