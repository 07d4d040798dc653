"""AutoencoderKL without torch: shapes, folder round trip, refused configs and inputs."""

import json

import numpy as np
import pytest

import npdiff as nd
from npdiff.models import AutoencoderKL
from npdiff.models.modeling_utils import CONFIG_NAME

TINY = dict(in_channels=1, out_channels=1, block_out_channels=(8, 16, 16), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            norm_num_groups=4, latent_channels=3, sample_size=16)


@pytest.fixture(scope="module")
def vae():
    nd.manual_seed(0)
    return AutoencoderKL(**TINY).eval()


def test_shapes_and_factor(vae):
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    with nd.no_grad():
        post = vae.encode(x).latent_dist
        assert vae.downsampling_factor == 4
        assert post.mean.shape == post.logvar.shape == (2, 3, 4, 4) and post.kl().shape == (2,)
        assert vae.decode(post.mode()).sample.shape == (2, 1, 16, 16)
        # forward decodes the mode; sample_posterior draws from the generator
        np.testing.assert_array_equal(vae(x).sample.numpy(), vae.decode(post.mean).sample.numpy())
        a = vae(x, sample_posterior=True, generator=np.random.default_rng(1)).sample.numpy()
        b = vae(x, sample_posterior=True, generator=np.random.default_rng(1)).sample.numpy()
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, vae(x).sample.numpy())


def test_round_trip_keeps_config_and_function(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    cfg = json.loads((tmp_path / "vae" / CONFIG_NAME).read_text())
    assert cfg["_class_name"] == "AutoencoderKL" and cfg["scaling_factor"] == 0.18215
    loaded = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert dict(loaded.config) == dict(vae.config)
    x = np.random.default_rng(2).standard_normal((1, 1, 16, 16)).astype(np.float32)
    with nd.no_grad():
        np.testing.assert_array_equal(loaded(x).sample.numpy(), vae(x).sample.numpy())
    with pytest.raises(ValueError, match="config is for class 'AutoencoderKL', not 'UNet2DModel'"):
        from npdiff.models import UNet2DModel

        UNet2DModel.from_pretrained(tmp_path / "vae")


@pytest.mark.parametrize("change, message", [
    (dict(down_block_types=("DownBlock2D",) * 3), r"down_block_types: block types \['DownBlock2D'"),
    (dict(up_block_types=("UpDecoderBlock2D",)), "up_block_types has 1 entries but block_out_channels has 3"),
    (dict(norm_num_groups=3), "norm_num_groups=3 must divide"),
    (dict(act_fn="mish"), "act_fn='mish' is not supported"),
    (dict(latent_channels=0), "latent_channels must be a positive int"),
])
def test_unsupported_config_is_refused_by_key(change, message):
    with pytest.raises(ValueError, match=message):
        AutoencoderKL(**{**TINY, **change})


def test_bad_inputs_are_named(vae):
    with pytest.raises(ValueError, match=r"encode: x must have shape \(B, 1, H, W\)"):
        vae.encode(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="multiples of the downsampling factor 4"):
        vae.encode(np.zeros((1, 1, 10, 16), np.float32))
    with pytest.raises(ValueError, match=r"decode: z must have shape \(B, 3, H, W\)"):
        vae.decode(np.zeros((1, 4, 4, 4), np.float32))
