"""UNet2DConditionModel against diffusers' UNet2DConditionModel: same parameters, function, gradients.

Tiny configs (channels 8-32, 8×8 latents, batch 2, 5 text tokens) that together cover:
a scaled-down Stable Diffusion v1 U-Net (4 levels, CrossAttn×3 + Down, 2 layers per
block, 1×1 projections), linear projections, per-block heads / layers / transformer depth
/ only_cross_attention, upcast_attention, class embeddings (labels, timestep, concat),
time_embedding_act_fn, the plain and absent mid blocks, text padding masks and the
ControlNet residual inputs.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="oracle tests need torch")
diffusers = pytest.importorskip("diffusers", reason="oracle tests need diffusers")

import npdiff as nd  # noqa: E402
from npdiff.models import UNet2DConditionModel  # noqa: E402
from tests.oracle import assert_close, assert_grads_close, assert_same_parameters, diffusers_pair  # noqa: E402

LK = 5  # text tokens

SD_V1_SMALL = dict(  # Stable Diffusion v1's U-Net layout with every width divided by 40 or so
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16, 16), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4)

CONFIGS = {
    "sd_v1_small": SD_V1_SMALL,
    "linear_per_block": dict(
        sample_size=8, in_channels=3, out_channels=2, block_out_channels=(16, 32), layers_per_block=(1, 2),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
        attention_head_dim=(1, 4), transformer_layers_per_block=(1, 2), only_cross_attention=(True, False),
        use_linear_projection=True, upcast_attention=True, norm_num_groups=8, norm_eps=1e-6,
        class_embed_type="timestep", class_embeddings_concat=True, time_embedding_act_fn="silu",
        resnet_time_scale_shift="scale_shift", center_input_sample=True, flip_sin_to_cos=False, freq_shift=1,
        mid_block_scale_factor=1.5, downsample_padding=0, act_fn="gelu", conv_in_kernel=1, conv_out_kernel=1),
    "plain_mid_labels": dict(
        sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D", cross_attention_dim=12, attention_head_dim=4, norm_num_groups=4,
        num_class_embeds=3, time_embedding_dim=24),
    "no_mid": dict(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type=None, cross_attention_dim=12, attention_head_dim=8, norm_num_groups=2, dropout=0.1),
}


def _inputs(cfg, seed):
    rng = np.random.default_rng(seed)
    B = 2
    x = rng.standard_normal((B, cfg["in_channels"], 8, 8)).astype(np.float32)
    t = np.array([3, 771])
    text = rng.standard_normal((B, LK, 12)).astype(np.float32)
    labels = None
    if cfg.get("num_class_embeds"):
        labels = np.array([2, 0])
    elif cfg.get("class_embed_type") == "timestep":
        labels = np.array([10, 250])
    return x, t, text, labels


def _pair(name, tmp_path, seed=0):
    ref, ours = diffusers_pair(diffusers.UNet2DConditionModel, UNet2DConditionModel, CONFIGS[name], tmp_path / name, seed)
    return CONFIGS[name], ref, ours


def _t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_parameters_output_and_gradients(name, tmp_path):
    cfg, ref, ours = _pair(name, tmp_path)
    assert_same_parameters(ours, ref)
    x, t, text, labels = _inputs(cfg, 1)
    with torch.no_grad():
        want = ref(_t(x), _t(t), _t(text), class_labels=_t(labels)).sample.numpy()
    with nd.no_grad():
        got = ours(x, t, text, class_labels=labels)
    assert_close(got.numpy(), want, f"{name}: forward")

    # gradients of sum(out * R) with respect to the image, the text and every parameter
    R = np.random.default_rng(2).standard_normal(want.shape).astype(np.float32)
    xt, ct = _t(x).requires_grad_(True), _t(text).requires_grad_(True)
    (ref(xt, _t(t), ct, class_labels=_t(labels)).sample * _t(R)).sum().backward()
    xn, cn = nd.tensor(x, requires_grad=True), nd.tensor(text, requires_grad=True)
    (ours(xn, t, cn, class_labels=labels) * R).sum().backward()
    assert_close(xn.grad.numpy(), xt.grad.numpy(), f"{name}: d/d sample")
    assert_close(cn.grad.numpy(), ct.grad.numpy(), f"{name}: d/d encoder_hidden_states")
    assert_grads_close(ours, ref, name)


def test_text_padding_mask(tmp_path):
    """A padding mask over the text (Lq = 64 … 1 pixels, Lk = 5 tokens, per-sample masks)
    agrees, and masked tokens really are ignored: changing them does not change the output."""
    cfg, ref, ours = _pair("sd_v1_small", tmp_path)
    x, t, text, _ = _inputs(cfg, 3)
    keep = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=np.int64)
    with torch.no_grad():
        want = ref(_t(x), _t(t), _t(text), encoder_attention_mask=_t(keep)).sample.numpy()
    with nd.no_grad():
        got = ours(x, t, text, encoder_attention_mask=keep).numpy()
        text2 = text.copy()
        text2[0, 3:] += 5.0  # only the masked tokens of sample 0 change
        got2 = ours(x, t, text2, encoder_attention_mask=keep.astype(bool)).numpy()
        unmasked = ours(x, t, text2).numpy()
    assert_close(got, want, "masked forward")
    assert_close(got2, got, "masked tokens changed", tol=1e-5)
    assert np.abs(unmasked[0] - got[0]).max() > 1e-3 * np.abs(got).max()  # without the mask they matter

    # gradient through the masked attention, including d/d text (zero at masked tokens)
    ct = _t(text).requires_grad_(True)
    ref(_t(x), _t(t), ct, encoder_attention_mask=_t(keep)).sample.sum().backward()
    cn = nd.tensor(text, requires_grad=True)
    ours(x, t, cn, encoder_attention_mask=keep).sum().backward()
    assert_close(cn.grad.numpy(), ct.grad.numpy(), "masked d/d text")
    assert np.abs(cn.grad.numpy()[0, 3:]).max() == 0.0


def test_controlnet_residuals(tmp_path):
    """down_block_additional_residuals / mid_block_additional_residual are added as diffusers adds them."""
    cfg, ref, ours = _pair("sd_v1_small", tmp_path)
    x, t, text, _ = _inputs(cfg, 4)
    rng = np.random.default_rng(5)
    # skip shapes: conv_in, then per down block its layers (+ downsample)
    shapes = [(2, 8, 8, 8)] * 3 + [(2, 8, 4, 4)] + [(2, 16, 4, 4)] * 2 + [(2, 16, 2, 2)] + [(2, 16, 2, 2)] * 2 \
        + [(2, 16, 1, 1)] + [(2, 16, 1, 1)] * 2
    down = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    mid = rng.standard_normal((2, 16, 1, 1)).astype(np.float32)
    with torch.no_grad():
        want = ref(_t(x), _t(t), _t(text), down_block_additional_residuals=tuple(_t(d) for d in down),
                   mid_block_additional_residual=_t(mid)).sample.numpy()
        plain = ref(_t(x), _t(t), _t(text)).sample.numpy()
    down_n = [nd.tensor(d, requires_grad=True) for d in down]
    mid_n = nd.tensor(mid, requires_grad=True)
    got = ours(x, t, text, down_block_additional_residuals=down_n, mid_block_additional_residual=mid_n)
    assert_close(got.numpy(), want, "with ControlNet residuals")
    assert np.abs(want - plain).max() > 1e-2 * np.abs(want).max()  # the residuals do matter
    got.sum().backward()  # ControlNet is trained through these inputs
    assert all(d.grad is not None and d.grad.shape == d.shape for d in down_n) and mid_n.grad is not None
    with pytest.raises(ValueError, match="down_block_additional_residuals"):
        ours(x, t, text, down_block_additional_residuals=down[:-1], mid_block_additional_residual=mid)
    with pytest.raises(ValueError, match="given together"):
        ours(x, t, text, mid_block_additional_residual=mid)


def test_diffusers_loads_what_npdiff_saves(tmp_path):
    nd.manual_seed(0)
    cfg = CONFIGS["linear_per_block"]
    ours = UNet2DConditionModel(**cfg).eval()
    ours.save_pretrained(tmp_path / "ours")
    ref = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "ours").eval()
    x, t, text, labels = _inputs(cfg, 6)
    with torch.no_grad():
        want = ref(_t(x), _t(t), _t(text), class_labels=_t(labels)).sample.numpy()
    with nd.no_grad():
        assert_close(ours(x, t, text, class_labels=labels).numpy(), want, "diffusers loading npdiff's folder")
