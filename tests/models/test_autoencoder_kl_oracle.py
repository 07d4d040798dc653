"""AutoencoderKL against diffusers' AutoencoderKL: same parameters, posterior, decode and gradients.

Tiny configs (channels 8-16, 8×8 images) cover: 2 and 3 levels, layers_per_block 1/2,
quant convs on/off, the mid-block attention on/off, act_fn, latent/in/out channel
counts. One test loads the full Stable Diffusion v1 VAE configuration (randomly
initialised, f = 8) from a folder diffusers wrote and decodes a 1×4×4×4 latent.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="oracle tests need torch")
diffusers = pytest.importorskip("diffusers", reason="oracle tests need diffusers")

import npdiff as nd  # noqa: E402
from tests.oracle import assert_close, assert_grads_close, assert_same_parameters, diffusers_pair  # noqa: E402
from npdiff.io import load_safetensors, save_safetensors  # noqa: E402
from npdiff.models import AutoencoderKL  # noqa: E402
from npdiff.models.modeling_utils import WEIGHTS_NAME  # noqa: E402

CONFIGS = {
    "two_levels": dict(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                       norm_num_groups=4, latent_channels=4, sample_size=8),
    "three_levels_plain": dict(in_channels=1, out_channels=2, block_out_channels=(8, 8, 16), layers_per_block=2,
                               down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                               norm_num_groups=2, latent_channels=2, use_quant_conv=False, use_post_quant_conv=False,
                               mid_block_add_attention=False, act_fn="gelu", sample_size=8),
}

SD_V1 = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
             layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=512, act_fn="silu")


def _pair(name, tmp_path, seed=0):
    ref, ours = diffusers_pair(diffusers.AutoencoderKL, AutoencoderKL, CONFIGS[name], tmp_path / name, seed)
    return CONFIGS[name], ref, ours


def _image(cfg, seed, size=8):
    return np.random.default_rng(seed).standard_normal((2, cfg["in_channels"], size, size)).astype(np.float32)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_parameters_posterior_decode_and_gradients(name, tmp_path):
    cfg, ref, ours = _pair(name, tmp_path)
    assert_same_parameters(ours, ref)
    assert list(ours.state_dict()) == list(ref.state_dict())

    x = _image(cfg, 1)
    side = 8 // ours.downsampling_factor  # latent side of an 8×8 image
    other_params = np.random.default_rng(7).standard_normal((2, 2 * cfg["latent_channels"], side, side))
    other_params = other_params.astype(np.float32)
    with torch.no_grad():
        post_ref = ref.encode(torch.from_numpy(x)).latent_dist
        other_ref = type(post_ref)(torch.from_numpy(other_params))
        want = {"mean": post_ref.mean, "logvar": post_ref.logvar, "std": post_ref.std, "var": post_ref.var,
                "mode": post_ref.mode(), "kl": post_ref.kl(), "kl_other": post_ref.kl(other_ref),
                "nll": post_ref.nll(post_ref.mean + 0.5), "decode": ref.decode(post_ref.mean).sample,
                "forward": ref(torch.from_numpy(x)).sample}
    with nd.no_grad():
        post = ours.encode(x).latent_dist
        other = type(post)(other_params)
        got = {"mean": post.mean, "logvar": post.logvar, "std": post.std, "var": post.var, "mode": post.mode(),
               "kl": post.kl(), "kl_other": post.kl(other), "nll": post.nll(post.mean + 0.5),
               "decode": ours.decode(post.mean).sample, "forward": ours(x).sample}
    for key in want:
        assert_close(got[key].numpy(), want[key].numpy(), f"{name}: {key}")

    # gradients of  Σ R ⊙ decode(μ + σ ε) + Σ KL  with the same ε on both sides
    eps = np.random.default_rng(3).standard_normal(want["mean"].shape).astype(np.float32)
    R = np.random.default_rng(2).standard_normal(want["decode"].shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    post_ref = ref.encode(xt).latent_dist
    z_ref = post_ref.mean + post_ref.std * torch.from_numpy(eps)
    ((ref.decode(z_ref).sample * torch.from_numpy(R)).sum() + post_ref.kl().sum()).backward()
    xn = nd.tensor(x, requires_grad=True)
    post = ours.encode(xn).latent_dist
    z = post.sample(generator=np.random.default_rng(3))  # the same ε: standard_normal of the same seed
    ((ours.decode(z).sample * R).sum() + post.kl().sum()).backward()
    assert_close(xn.grad.numpy(), xt.grad.numpy(), f"{name}: d/d input")
    assert_grads_close(ours, ref, name)


def test_diffusers_loads_what_npdiff_saves(tmp_path):
    cfg = CONFIGS["two_levels"]
    nd.manual_seed(0)
    ours = AutoencoderKL(**cfg).eval()
    for p in ours.parameters():  # zero-initialised convs and unit norms would hide key mix-ups
        p.data += 0.1 * np.random.default_rng(p.data.size).standard_normal(p.shape).astype(np.float32)
    ours.save_pretrained(tmp_path / "ours")
    ref = diffusers.AutoencoderKL.from_pretrained(tmp_path / "ours").eval()
    x = _image(cfg, 4)
    with torch.no_grad():
        post_ref = ref.encode(torch.from_numpy(x)).latent_dist
        want_mean, want_logvar = post_ref.mean.numpy(), post_ref.logvar.numpy()
        want_rec = ref(torch.from_numpy(x)).sample.numpy()
    with nd.no_grad():
        post = ours.encode(x).latent_dist
        assert_close(post.mean.numpy(), want_mean, "diffusers loading npdiff's folder: mean")
        assert_close(post.logvar.numpy(), want_logvar, "diffusers loading npdiff's folder: logvar")
        assert_close(ours(x).sample.numpy(), want_rec, "diffusers loading npdiff's folder: reconstruction")


def test_legacy_attention_keys_are_renamed_on_load(tmp_path):
    cfg, ref, ours = _pair("two_levels", tmp_path)
    folder = tmp_path / "two_levels"
    weights = load_safetensors(str(folder / WEIGHTS_NAME))
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for k, v in weights.items():
        for new, old in renames.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        legacy[k] = v
    assert any(".query." in k for k in legacy)
    save_safetensors(str(folder / WEIGHTS_NAME), legacy)
    old = AutoencoderKL.from_pretrained(folder)
    x = _image(cfg, 5)
    with nd.no_grad():
        np.testing.assert_array_equal(old(x).sample.numpy(), ours(x).sample.numpy())


def test_full_sd_v1_vae_folder_decodes_like_diffusers(tmp_path):
    """The Stable Diffusion v1 VAE architecture (83 M parameters, f = 8), random weights."""
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**SD_V1).eval()
    ref.save_pretrained(tmp_path / "vae")
    ours = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())
    assert ours.downsampling_factor == 8 and ours.config.scaling_factor == 0.18215
    z = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample.numpy()
    with nd.no_grad():
        got = ours.decode(z).sample.numpy()
    assert got.shape == (1, 3, 32, 32)
    assert_close(got, want, "SD v1 VAE decode")
