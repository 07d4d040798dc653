"""UNet2DModel without an oracle: central-difference gradients in float64, the
sinusoidal embedding's definition, call conventions and config bookkeeping."""

import math

import numpy as np
import pytest

import npdiff as nd
from npdiff.models import UNet2DModel, get_timestep_embedding
from tests.gradcheck import numeric_grad, sample_indices

TINY = dict(sample_size=4, in_channels=1, out_channels=1, block_out_channels=(4, 8), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=2, attention_head_dim=4, num_class_embeds=3, resnet_time_scale_shift="scale_shift")


def test_float64_gradients_match_central_differences():
    nd.manual_seed(0)
    model = UNet2DModel(**TINY).double()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 4, 4))
    R = rng.standard_normal((2, 1, 4, 4))
    t, y = np.array([10, 600]), np.array([2, 0])

    def loss():
        with nd.no_grad():
            return float((model(x, t, class_labels=y).numpy() * R).sum())

    xt = nd.tensor(x, requires_grad=True)
    (model(xt, t, class_labels=y) * R).sum().backward()
    for idx in sample_indices(x.shape, 6, rng):
        assert xt.grad.numpy()[idx] == pytest.approx(numeric_grad(loss, x, idx), rel=1e-5, abs=1e-8)
    params = dict(model.named_parameters())
    for name in ["conv_in.weight", "down_blocks.1.attentions.0.to_v.weight", "mid_block.resnets.1.time_emb_proj.bias",
                 "class_embedding.weight", "up_blocks.0.resnets.1.conv_shortcut.weight", "conv_out.bias"]:
        p = params[name]
        for idx in sample_indices(p.shape, 3, rng):
            assert p.grad.numpy()[idx] == pytest.approx(numeric_grad(loss, p.data, idx), rel=1e-5, abs=1e-8), name


def test_timestep_embedding_definition():
    """emb(t) = [sin(t·ω_j)…, cos(t·ω_j)…], ω_j = 10000^(−j/(h−s)); flip puts cos first; odd D pads a zero."""
    t = np.array([0.0, 1.0, 37.5, 999.0])
    D, s = 9, 1
    h = D // 2
    w = np.array([math.exp(-math.log(10000) * j / (h - s)) for j in range(h)])
    want = np.concatenate([np.sin(t[:, None] * w), np.cos(t[:, None] * w), np.zeros((4, 1))], axis=1)
    got = get_timestep_embedding(t, D, flip_sin_to_cos=False, downscale_freq_shift=s)
    np.testing.assert_allclose(got, want, atol=2e-4)
    flipped = get_timestep_embedding(t, D, flip_sin_to_cos=True, downscale_freq_shift=s)
    np.testing.assert_array_equal(flipped[:, :h], got[:, h:2 * h])
    assert got.dtype == np.float32 and got.shape == (4, D)
    with pytest.raises(ValueError, match=r"1-D array, got shape \(2, 2\)"):
        get_timestep_embedding(np.zeros((2, 2)), 8)


def test_call_conventions_and_config():
    nd.manual_seed(1)
    model = UNet2DModel(**TINY).eval()
    x = np.random.default_rng(1).standard_normal((3, 1, 4, 4)).astype(np.float32)
    y = np.array([0, 1, 2])
    with nd.no_grad():
        per_sample = model(x, np.array([7, 7, 7]), class_labels=y).numpy()
        np.testing.assert_array_equal(model(x, 7, class_labels=y).numpy(), per_sample)
        np.testing.assert_array_equal(model(x, nd.tensor(np.array([7])), class_labels=y).numpy(), per_sample)
        out = model(nd.tensor(x), 7, class_labels=nd.tensor(y), return_dict=True)
    np.testing.assert_array_equal(out.sample.numpy(), per_sample)
    assert model.config.block_out_channels == [4, 8] and model.config.dropout == 0.0
    clone = UNet2DModel.from_config(model.config)
    assert [k for k, _ in clone.named_parameters()] == [k for k, _ in model.named_parameters()]
    with pytest.raises(AttributeError, match="read-only"):
        model.config.dropout = 0.5


@pytest.mark.parametrize("bad, match", [
    (dict(norm_num_groups=3), "norm_num_groups=3 must divide"),
    (dict(block_out_channels=(4, 8, 8)), "must have the same length"),
    (dict(up_block_types=("UpBlock2D",)), "must have the same length"),
    (dict(mid_block_type="UNetMidBlock2DCrossAttn"), "mid_block_type='UNetMidBlock2DCrossAttn' is not supported"),
    (dict(resnet_time_scale_shift="spatial"), "resnet_time_scale_shift='spatial' is not supported"),
    (dict(class_embed_type="projection"), "class_embed_type='projection' is not supported"),
    (dict(downsample_type="resnet"), "downsample_type='resnet' is not supported"),
    (dict(act_fn="mish"), "act_fn='mish' is not supported"),
    (dict(attention_head_dim=16), "heads >= 1"),
])
def test_unsupported_configs_are_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        UNet2DModel(**dict(TINY, **bad))
