"""UNet2DConditionModel without an oracle: refusals by config key, input checks, folder round trip,
and what cross-attention must do (the text changes the output; masked tokens do not)."""

import numpy as np
import pytest

import npdiff as nd
from npdiff.models import Transformer2DModel, UNet2DConditionModel

TINY = dict(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=6, attention_head_dim=2, norm_num_groups=4)


@pytest.mark.parametrize("key, value", [
    ("num_attention_heads", 4), ("encoder_hid_dim", 8), ("addition_embed_type", "text"),
    ("time_embedding_type", "fourier"), ("dual_cross_attention", True), ("attention_type", "gated"),
    ("class_embed_type", "projection"), ("timestep_post_act", "silu"), ("time_cond_proj_dim", 4),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"), ("norm_num_groups", None),
])
def test_unsupported_config_values_are_refused_by_key(key, value):
    with pytest.raises(ValueError, match=key):
        UNet2DConditionModel(**dict(TINY, **{key: value}))


def test_bad_block_lists_are_refused():
    with pytest.raises(ValueError, match="down_block_types"):
        UNet2DConditionModel(**dict(TINY, down_block_types=("AttnDownBlock2D", "DownBlock2D")))
    with pytest.raises(ValueError, match="attention_head_dim"):
        UNet2DConditionModel(**dict(TINY, attention_head_dim=(2, 2, 2)))
    with pytest.raises(ValueError, match="attention_head_dim"):
        UNet2DConditionModel(**dict(TINY, attention_head_dim=3))  # 3 heads do not divide 8 channels
    with pytest.raises(ValueError, match="reverse_transformer_layers_per_block"):
        UNet2DConditionModel(**dict(TINY, transformer_layers_per_block=((1,), 1)))


def test_input_checks_and_text_dependence():
    nd.manual_seed(0)
    m = UNet2DConditionModel(**TINY).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    text = rng.standard_normal((2, 3, 6)).astype(np.float32)
    with nd.no_grad():
        out = m(x, 10, text)
        assert out.shape == (2, 2, 8, 8)
        other = m(x, 10, text[::-1].copy())
        # the text reaches the output (through cross-attention only)
        assert np.abs(out.numpy() - other.numpy()).max() > 1e-4 * np.abs(out.numpy()).max()
        # a masked token does not
        keep = np.array([[1, 1, 0], [1, 1, 1]])
        text2 = text.copy()
        text2[0, 2] = 100.0
        a, b = m(x, 10, text, encoder_attention_mask=keep), m(x, 10, text2, encoder_attention_mask=keep)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5 * np.abs(a.numpy()).max())
        assert m(x, 10, text, return_dict=True).sample.shape == (2, 2, 8, 8)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        m(x, 10, text[..., :5])
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        m(x, 10, text[:1])
    with pytest.raises(ValueError, match="encoder_attention_mask"):
        m(x, 10, text, encoder_attention_mask=np.ones((2, 4)))
    with pytest.raises(ValueError, match="sample"):
        m(x[:, :, :7], 10, text)
    with pytest.raises(ValueError, match="class_labels"):
        m(x, 10, text, class_labels=np.array([0, 1]))


def test_folder_round_trip(tmp_path):
    nd.manual_seed(1)
    m = UNet2DConditionModel(**dict(TINY, use_linear_projection=True, only_cross_attention=True)).eval()
    m.save_pretrained(tmp_path / "unet")
    again = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert again.config == m.config
    rng = np.random.default_rng(1)
    x, text = rng.standard_normal((1, 2, 8, 8)).astype(np.float32), rng.standard_normal((1, 4, 6)).astype(np.float32)
    with nd.no_grad():
        np.testing.assert_array_equal(again(x, 3, text).numpy(), m(x, 3, text).numpy())


def test_transformer_2d_refusals_and_shapes():
    with pytest.raises(ValueError, match="patch_size"):
        Transformer2DModel(2, 4, in_channels=8, norm_num_groups=4, patch_size=2)
    with pytest.raises(ValueError, match="in_channels"):
        Transformer2DModel(2, 4)
    t = Transformer2DModel(2, 4, in_channels=8, norm_num_groups=4, cross_attention_dim=6)
    x = np.random.default_rng(2).standard_normal((1, 8, 3, 5)).astype(np.float32)  # H != W
    text = np.zeros((1, 7, 6), np.float32)
    assert t(x, text).shape == (1, 8, 3, 5)


def test_seed_parallel_attention_sum_is_not_the_transformer_block():
    """Erratum E13: the block is sequential (x + SA, then + CA on that, then + FF); the seed's
    `self_attention + cross_attention` from the same features is a different function. The
    oracle tests pin the sequential form to diffusers; this shows the parallel one differs."""
    from npdiff.models import BasicTransformerBlock

    nd.manual_seed(3)
    blk = BasicTransformerBlock(8, 2, 4, cross_attention_dim=6)
    rng = np.random.default_rng(3)
    x = nd.tensor(rng.standard_normal((2, 5, 8)).astype(np.float32))
    c = nd.tensor(rng.standard_normal((2, 3, 6)).astype(np.float32))
    with nd.no_grad():
        seq = blk(x, encoder_hidden_states=c).numpy()
        h = x + blk.attn1(blk.norm1(x))
        h = h + blk.attn2(blk.norm2(h), c)
        np.testing.assert_allclose(seq, (h + blk.ff(blk.norm3(h))).numpy(), rtol=1e-6, atol=1e-6)
        par = x + blk.attn1(blk.norm1(x)) + blk.attn2(blk.norm1(x), c)  # the seed's parallel sum
        par = (par + blk.ff(blk.norm3(par))).numpy()
    assert np.abs(par - seq).max() > 1e-2 * np.abs(seq).max()
