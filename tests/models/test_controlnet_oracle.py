"""ControlNetModel against diffusers' ControlNetModel: parameters, residuals, gradients, from_unet, folders.

Tiny configs (channels 8-16, 8×8 latents, 16×16 conditioning images, batch 2, 5 text
tokens): a two-level SD-like layout, and one with linear projections, the plain mid
block, timestep class embeddings, "bgr" channel order, per-block heads and a
three-step conditioning embedding. The residuals are then fed into diffusers' and
npdiff's UNet2DConditionModel.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="oracle tests need torch")
diffusers = pytest.importorskip("diffusers", reason="oracle tests need diffusers")

import npdiff as nd  # noqa: E402
from npdiff.models import ControlNetModel, UNet2DConditionModel  # noqa: E402
from tests.oracle import (assert_close, assert_grads_close, assert_same_parameters, diffusers_pair,  # noqa: E402
                          randomise)

LK, TEXT = 5, 12
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT, attention_head_dim=2, norm_num_groups=4)
CONFIGS = {
    "sd_like": dict(in_channels=4, conditioning_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), cross_attention_dim=TEXT,
                    attention_head_dim=2, norm_num_groups=4, conditioning_embedding_out_channels=(4, 8)),
    "linear_plain_mid": dict(
        in_channels=3, conditioning_channels=1, block_out_channels=(8, 16, 16), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2D", cross_attention_dim=TEXT, attention_head_dim=(1, 2, 4),
        use_linear_projection=True, only_cross_attention=(True, False, False), transformer_layers_per_block=(1, 1, 2),
        norm_num_groups=4, norm_eps=1e-6, class_embed_type="timestep", resnet_time_scale_shift="scale_shift",
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, act_fn="gelu",
        controlnet_conditioning_channel_order="bgr", conditioning_embedding_out_channels=(4, 4, 8)),
}


def _inputs(cfg, seed):
    rng = np.random.default_rng(seed)
    f = 2 ** (len(cfg["conditioning_embedding_out_channels"]) - 1)
    x = rng.standard_normal((2, cfg["in_channels"], 8, 8)).astype(np.float32)
    text = rng.standard_normal((2, LK, TEXT)).astype(np.float32)
    cond = rng.random((2, cfg["conditioning_channels"], 8 * f, 8 * f)).astype(np.float32)
    labels = np.array([10, 250]) if cfg.get("class_embed_type") == "timestep" else None
    return x, np.array([3, 771]), text, cond, labels


def _t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("guess_mode", [False, True])
def test_same_parameters_residuals_and_gradients(name, guess_mode, tmp_path):
    cfg = CONFIGS[name]
    ref, ours = diffusers_pair(diffusers.ControlNetModel, ControlNetModel, cfg, tmp_path / name)
    assert_same_parameters(ours, ref)
    x, t, text, cond, labels = _inputs(cfg, 1)
    with torch.no_grad():
        want = ref(_t(x), _t(t), _t(text), _t(cond), conditioning_scale=0.7, class_labels=_t(labels),
                   guess_mode=guess_mode)
    with nd.no_grad():
        got = ours(x, t, text, cond, conditioning_scale=0.7, class_labels=labels, guess_mode=guess_mode)
    assert len(got.down_block_res_samples) == len(want.down_block_res_samples)
    for i, (a, b) in enumerate(zip(got.down_block_res_samples, want.down_block_res_samples)):
        assert_close(a.numpy(), b.numpy(), f"{name}: down residual {i}")
    assert_close(got.mid_block_res_sample.numpy(), want.mid_block_res_sample.numpy(), f"{name}: mid residual")
    if guess_mode:
        return

    # gradients of Σ_i <r_i, R_i> + <r_mid, R_mid> for every parameter, the sample and the condition
    rng = np.random.default_rng(2)
    R = [rng.standard_normal(tuple(r.shape)).astype(np.float32) for r in (*want.down_block_res_samples,
                                                                          want.mid_block_res_sample)]
    xt, ct = _t(x).requires_grad_(True), _t(cond).requires_grad_(True)
    out = ref(xt, _t(t), _t(text), ct, class_labels=_t(labels))
    sum((r * _t(w)).sum() for r, w in zip((*out.down_block_res_samples, out.mid_block_res_sample), R)).backward()
    xn, cn = nd.tensor(x, requires_grad=True), nd.tensor(cond, requires_grad=True)
    out = ours(xn, t, text, cn, class_labels=labels)
    loss = None
    for r, w in zip((*out.down_block_res_samples, out.mid_block_res_sample), R):
        term = (r * w).sum()
        loss = term if loss is None else loss + term
    loss.backward()
    assert_close(xn.grad.numpy(), xt.grad.numpy(), f"{name}: d/d sample")
    if cfg.get("controlnet_conditioning_channel_order", "rgb") == "rgb":
        assert_close(cn.grad.numpy(), ct.grad.numpy(), f"{name}: d/d controlnet_cond")
    assert_grads_close(ours, ref, name)


def test_from_unet_and_residuals_into_the_unet(tmp_path):
    """``from_unet`` on both sides gives the same ControlNet (encoder copied, zero convs zero);
    with its zero convs randomised on both sides, the residuals fed into the two U-Nets give
    the same prediction."""
    ref_unet, unet = diffusers_pair(diffusers.UNet2DConditionModel, UNet2DConditionModel, UNET, tmp_path / "unet")
    ref_cn = diffusers.ControlNetModel.from_unet(ref_unet, conditioning_embedding_out_channels=(4, 8))
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    assert_same_parameters(cn, ref_cn)
    # the encoder is the U-Net's; the conditioning embedding is randomly initialised on each side
    ref_sd = ref_cn.state_dict()
    for k, v in cn.state_dict().items():
        if k.startswith("controlnet_cond_embedding.") and not k.startswith("controlnet_cond_embedding.conv_out"):
            continue
        np.testing.assert_array_equal(v, ref_sd[k].numpy(), err_msg=k)
    zero = [k for k in cn.state_dict() if k.startswith(("controlnet_down_blocks", "controlnet_mid_block",
                                                        "controlnet_cond_embedding.conv_out"))]
    assert zero and all(not cn.state_dict()[k].any() for k in zero)
    for key in ("block_out_channels", "down_block_types", "attention_head_dim", "cross_attention_dim"):
        assert list(np.atleast_1d(cn.config[key])) == list(np.atleast_1d(ref_cn.config[key])), key

    # same weights everywhere (randomised zero convs too), then the residuals into each U-Net
    randomise(ref_cn, 5)
    cn.load_state_dict({k: v.numpy() for k, v in ref_cn.state_dict().items()})
    x, t, text, cond, _ = _inputs(CONFIGS["sd_like"], 3)
    with torch.no_grad():
        d, m = ref_cn(_t(x), _t(t), _t(text), _t(cond), conditioning_scale=0.5, return_dict=False)
        want = ref_unet(_t(x), _t(t), _t(text), down_block_additional_residuals=d,
                        mid_block_additional_residual=m).sample.numpy()
    with nd.no_grad():
        down, mid = cn(x, t, text, cond, conditioning_scale=0.5)
        got = unet(x, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).numpy()
        plain = unet(x, t, text).numpy()
    assert_close(got, want, "U-Net with ControlNet residuals")
    assert np.abs(got - plain).max() > 1e-2 * np.abs(plain).max()  # the residuals really changed it


def test_folders_both_ways(tmp_path):
    """A folder npdiff saved loads in diffusers (same residuals) and the other way round."""
    cfg = CONFIGS["linear_plain_mid"]
    ref, ours = diffusers_pair(diffusers.ControlNetModel, ControlNetModel, cfg, tmp_path / "theirs")
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.ControlNetModel.from_pretrained(tmp_path / "ours").eval()
    x, t, text, cond, labels = _inputs(cfg, 4)
    with torch.no_grad():
        want = ref(_t(x), _t(t), _t(text), _t(cond), class_labels=_t(labels))
        again = back(_t(x), _t(t), _t(text), _t(cond), class_labels=_t(labels))
    for a, b in zip((*want.down_block_res_samples, want.mid_block_res_sample),
                    (*again.down_block_res_samples, again.mid_block_res_sample)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    reloaded = ControlNetModel.from_pretrained(tmp_path / "ours")
    for k, v in ours.state_dict().items():
        np.testing.assert_array_equal(reloaded.state_dict()[k], v, err_msg=k)
