"""ControlNetModel without an oracle: a fresh one changes nothing, zero convs still learn, scales, bad input."""

import numpy as np
import pytest

import npdiff as nd
from npdiff.models import ControlNetModel, UNet2DConditionModel
from tests.pipelines.sd_stack import UNET, _perturb


def _setup(seed=0):
    nd.manual_seed(seed)
    unet = _perturb(UNet2DConditionModel(**UNET), seed + 1)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8), conditioning_channels=1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    text = rng.standard_normal((2, 5, 16)).astype(np.float32)
    cond = (rng.random((2, 1, 16, 16)) > 0.5).astype(np.float32)
    return unet, cn, x, np.array([10, 900]), text, cond


def test_fresh_controlnet_changes_nothing():
    """Every residual of a fresh ControlNet is exactly zero, so the U-Net's output is bit-for-bit its own."""
    unet, cn, x, t, text, cond = _setup()
    with nd.no_grad():
        down, mid = cn(x, t, text, cond, conditioning_scale=3.0)
        assert all(not r.numpy().any() for r in (*down, mid))
        plain = unet(x, t, text).numpy()
        steered = unet(x, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).numpy()
    np.testing.assert_array_equal(steered, plain)


def test_zero_convs_receive_gradients():
    """∂L/∂W_Z = Σ ∂L/∂r · s is non-zero although W_Z = 0: the zero convs (and, through the
    conditioning embedding's zero conv_out, its own output weights) learn from the first step."""
    unet, cn, x, t, text, cond = _setup(1)
    down, mid = cn(x, t, text, cond)
    out = unet(x, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    (out * out).mean().backward()
    grads = dict(cn.named_parameters())
    for name in ["controlnet_mid_block.weight", "controlnet_down_blocks.0.weight",
                 f"controlnet_down_blocks.{len(cn.controlnet_down_blocks) - 1}.weight"]:
        assert np.abs(grads[name].grad.numpy()).max() > 0, name
    # with every zero conv at zero, nothing reaches the layers before them yet (exactly zero)
    assert not grads["controlnet_cond_embedding.conv_out.weight"].grad.numpy().any()


def test_guess_mode_scales():
    """Guess mode: r_i scaled by 10^(−1 + i/n), i = 0…n (mid block last), times conditioning_scale."""
    unet, cn, x, t, text, cond = _setup(2)
    for p in cn.parameters():  # make the zero convs non-zero
        p.data += np.float32(0.05) * np.random.default_rng(3).standard_normal(p.shape).astype(np.float32)
    n = len(cn.controlnet_down_blocks)
    with nd.no_grad():
        d1, m1 = cn(x, t, text, cond, conditioning_scale=1.0)
        dg, mg = cn(x, t, text, cond, conditioning_scale=2.0, guess_mode=True)
    scales = 2.0 * 10.0 ** (-1 + np.arange(n + 1) / n)
    for a, b, s in zip((*dg, mg), (*d1, m1), scales):
        np.testing.assert_allclose(a.numpy(), s * b.numpy(), rtol=1e-6, atol=1e-6 * np.abs(b.numpy()).max())
    assert scales[0] == pytest.approx(0.2) and scales[-1] == pytest.approx(2.0)


def test_bad_inputs_are_named():
    unet, cn, x, t, text, cond = _setup(3)
    with pytest.raises(ValueError, match="controlnet_cond must have shape \\(2, 1, 16, 16\\)"):
        cn(x, t, text, cond[:, :, :8, :8])
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        cn(x, t, text[..., :4], cond)
    with pytest.raises(ValueError, match="layers_per_block"):
        ControlNetModel(block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2, norm_num_groups=4,
                        layers_per_block=(1, 2))
    with pytest.raises(ValueError, match="mid_block_type"):
        ControlNetModel(block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2, norm_num_groups=4,
                        mid_block_type=None)
    with pytest.raises(ValueError, match="time_embedding_dim"):
        ControlNetModel.from_unet(UNet2DConditionModel(**{**UNET, "time_embedding_dim": 32}))
