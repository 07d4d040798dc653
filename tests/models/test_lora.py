"""LoRA without an oracle: y = W x + b + (α/r) B A x, freezing, merge, scale, state dicts and files."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npdiff as nd
from npdiff import nn
from npdiff.models import CLIPTextModel, UNet2DConditionModel
from npdiff.models.lora import (TEXT_ENCODER_TARGETS, LoRALinear, add_lora, load_lora_state_dict, load_lora_weights,
                                lora_layers, lora_parameters, lora_state_dict, merge_lora, read_lora_file,
                                remove_lora, save_lora_weights, set_lora_scale, add_trainable_tokens,
                                token_adapters)
from tests.oracle import assert_close
from tests.pipelines.sd_stack import UNET, _perturb, _text

EPS32 = float(np.finfo(np.float32).eps)


def _unet(seed=0):
    nd.manual_seed(seed)
    return _perturb(UNet2DConditionModel(**UNET), seed + 1)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, 4, 8, 8)).astype(np.float32), np.array([3, 700]),
            rng.standard_normal((2, 5, 16)).astype(np.float32))


def _randomise_b(model, seed=0, scale=0.2):
    rng = np.random.default_rng(seed)
    for layer in lora_layers(model).values():
        layer.lora_B.weight.data = (scale * rng.standard_normal(layer.lora_B.weight.shape)).astype(np.float32)


def test_linear_formula_and_init():
    """One layer: y = W x + b + (α/r) B (A x) exactly as written; A random non-zero, B zero."""
    nd.manual_seed(0)
    m = nn.Module()
    m.proj = nn.Linear(6, 5)
    add_lora(m, rank=3, alpha=6.0, target_modules=("proj",))
    layer = m.proj
    assert isinstance(layer, LoRALinear) and layer.scaling == 2.0
    A, B = layer.lora_A.weight.numpy(), layer.lora_B.weight.numpy()
    assert A.shape == (3, 6) and np.abs(A).min() > 0 and B.shape == (5, 3) and not B.any()
    layer.lora_B.weight.data = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    x = np.random.default_rng(2).standard_normal((4, 6))
    W, b, B = (layer.weight.numpy().astype(np.float64), layer.bias.numpy().astype(np.float64),
               layer.lora_B.weight.numpy().astype(np.float64))
    want = x @ W.T + b + 2.0 * (x @ A.astype(np.float64).T) @ B.T
    assert_close(layer(nd.tensor(x.astype(np.float32))).numpy(), want, "LoRA linear", tol=20 * EPS32)


def test_add_lora_targets_freezing_and_identity():
    unet = _unet()
    x, t, text = _inputs()
    with nd.no_grad():
        base = unet(x, t, text).numpy()
    base_keys = list(unet.state_dict())
    add_lora(unet, rank=2)
    layers = lora_layers(unet)
    assert layers and all(p.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or p.endswith("to_out.0") for p in layers)
    n_attn = sum(1 for k in base_keys if k.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight",
                                                      ".to_out.0.weight")))
    assert len(layers) == n_attn
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == len(lora_parameters(unet)) == 2 * n_attn
    assert [k for k in unet.state_dict() if ".lora_" not in k] == base_keys
    with nd.no_grad():
        np.testing.assert_array_equal(unet(x, t, text).numpy(), base)  # B = 0: the base model exactly
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(unet, rank=2)
    with pytest.raises(ValueError, match="no nn.Linear .* matches"):
        add_lora(_unet(), rank=2, target_modules=("nope",))
    with pytest.raises(ValueError, match="rank"):
        add_lora(_unet(), rank=0)


def test_merge_remove_and_scale():
    """merge_lora agrees with the adapted model to float tolerance and restores the base keys and
    trainability; remove_lora restores the base bit for bit; scale 0 is the base model."""
    unet = _unet(2)
    x, t, text = _inputs(2)
    with nd.no_grad():
        base = unet(x, t, text).numpy()
    base_sd = {k: v.copy() for k, v in unet.state_dict().items()}
    add_lora(unet, rank=3, alpha=1.5)
    _randomise_b(unet)
    with nd.no_grad():
        adapted = unet(x, t, text).numpy()
        set_lora_scale(unet, 0.0)
        np.testing.assert_array_equal(unet(x, t, text).numpy(), base)
        set_lora_scale(unet, 1.0)
    assert np.abs(adapted - base).max() > 1e-3 * np.abs(base).max()
    saved = lora_state_dict(unet)
    merge_lora(unet)
    assert list(unet.state_dict()) == list(base_sd) and not lora_layers(unet)
    assert all(p.requires_grad for p in unet.parameters())
    with nd.no_grad():
        merged = unet(x, t, text).numpy()
    # (W + s B A) x vs W x + s B (A x): float32 re-association in every adapted layer, widths ≤ 32,
    # and the U-Net's depth (~20 layers) amplifies it: tolerance 32 · 20 · ε relative
    assert_close(merged, adapted, "merged vs unmerged", tol=32 * 20 * EPS32)

    restored = _unet(2)
    load_lora_state_dict(restored, saved, alpha=1.5)
    remove_lora(restored)
    for k, v in restored.state_dict().items():
        np.testing.assert_array_equal(v, base_sd[k], err_msg=k)


def test_state_dict_round_trip_and_bad_keys():
    unet = _unet(3)
    add_lora(unet, rank=2)
    _randomise_b(unet, 4)
    sd = lora_state_dict(unet)
    key = next(iter(sd))
    assert key.endswith(".lora_A.weight") and sd[key].shape[0] == 2
    other = load_lora_state_dict(_unet(3), {f"unet.{k}": v for k, v in sd.items()})  # leading "unet." accepted
    for k, v in lora_state_dict(other).items():
        np.testing.assert_array_equal(v, sd[k])
    with pytest.raises(ValueError, match="down_blocks.9.attentions.0"):
        load_lora_state_dict(_unet(), {**sd, "down_blocks.9.attentions.0.to_q.lora_A.weight": sd[key]})
    missing = {k: v for k, v in sd.items() if k != key.replace("lora_A", "lora_B")}
    with pytest.raises(ValueError, match="missing key .*" + key.replace("lora_A", "lora_B").replace(".", r"\.")):
        load_lora_state_dict(_unet(), missing)
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + ".* has shape"):
        load_lora_state_dict(other, {**sd, key: np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match="unexpected key 'conv_in.weight'"):
        load_lora_state_dict(_unet(), {"conv_in.weight": sd[key]})


def test_files_with_text_encoder(tmp_path):
    """save → load round trip of a pipeline file (unet. and text_encoder. keys, rank and alpha in
    the metadata); a file with text-encoder weights needs text_encoder=."""
    unet = _unet(5)
    te = _perturb(CLIPTextModel(**_text(40)), 6)
    add_lora(unet, rank=4, alpha=2)
    add_lora(te, rank=2, alpha=4, target_modules=TEXT_ENCODER_TARGETS)
    _randomise_b(unet, 7)
    _randomise_b(te, 8)
    path = save_lora_weights(tmp_path / "a.safetensors", unet=unet, text_encoder=te)
    tensors, meta = read_lora_file(path)
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 2 and meta["text_encoder.lora_alpha"] == 4
    assert sorted(meta["text_encoder.target_modules"]) == sorted(TEXT_ENCODER_TARGETS)
    assert all(k.startswith(("unet.", "text_encoder.")) for k in tensors)
    unet2, te2 = _unet(5), _perturb(CLIPTextModel(**_text(40)), 6)
    loaded = load_lora_weights(path, unet=unet2, text_encoder=te2)
    assert loaded["unet"]["r"] == 4
    x, t, text = _inputs(5)
    ids = np.array([[38, 3, 4, 5, 39, 39, 39, 39, 39, 39, 39, 39]])
    with nd.no_grad():
        np.testing.assert_array_equal(unet2(x, t, text).numpy(), unet(x, t, text).numpy())
        np.testing.assert_array_equal(te2(ids).last_hidden_state.numpy(), te(ids).last_hidden_state.numpy())
    with pytest.raises(ValueError, match="no text_encoder= was given"):
        load_lora_weights(path, unet=_unet(5))


@settings(deadline=None, max_examples=15)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4), st.floats(0.25, 8.0), st.floats(-2.0, 2.0))
def test_merge_equals_adapter_on_any_linear(n_in, n_out, rank, alpha, scale):
    """float64: W x + b + s(α/r) B A x = (W + s(α/r) B A) x + b to rounding, for any sizes, α and scale."""
    rng = np.random.default_rng(n_in * 100 + n_out * 10 + rank)
    m = nn.Module()
    m.layer = nn.Linear(n_in, n_out, dtype=np.float64)
    add_lora(m, rank=rank, alpha=alpha, target_modules="layer")
    m.layer.lora_B.weight.data = rng.standard_normal((n_out, rank))
    set_lora_scale(m, scale)
    x = nd.tensor(rng.standard_normal((3, n_in)))
    adapted = m.layer(x).numpy()
    merge_lora(m)
    merged = m.layer(x).numpy()
    # two re-associated sums of n_in + rank terms each: (n_in + rank) · ε · magnitude, with margin
    tol = 64 * np.finfo(np.float64).eps * (n_in + rank) * (1 + np.abs(adapted).max())
    np.testing.assert_allclose(merged, adapted, rtol=0, atol=tol)


def test_any_model_with_attention_projections():
    """add_lora finds the projections of UNet2DModel's attention and DiT's transformer blocks too;
    merging gives back their own state-dict keys."""
    from npdiff.models import DiTTransformer2DModel, UNet2DModel

    nd.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)
    dit = DiTTransformer2DModel(sample_size=8, in_channels=1, out_channels=1, patch_size=2, num_attention_heads=2,
                                attention_head_dim=8, num_layers=2, num_embeds_ada_norm=3)
    for model in (unet, dit):
        keys = list(model.state_dict())
        add_lora(model, rank=2)
        assert len(lora_layers(model)) >= 4
        merge_lora(model)
        assert list(model.state_dict()) == keys


def _clip(seed=6):
    nd.manual_seed(seed)
    return _perturb(CLIPTextModel(**_text(40)), seed)


def test_trainable_tokens_change_only_their_prompts(tmp_path):
    """E'[t] = E[t] + s (v_t − E[t]) for the learned ids only: a prompt without them is encoded bit
    for bit as by the base (with LoRA too at scale 0), only v gets a gradient, merge = unmerged,
    and the file keeps the rows and their ids (missing ids are named)."""
    te, base = _clip(), _clip()
    add_lora(te, rank=2, target_modules=TEXT_ENCODER_TARGETS)
    add_trainable_tokens(te, [7, 9])
    emb = token_adapters(te)["embeddings.token_embedding"]
    rng = np.random.default_rng(3)
    v = emb.token_adapter.trainable_tokens_delta
    v.data = (v.data + rng.standard_normal(v.shape)).astype(np.float32)
    _randomise_b(te, 4)
    old = np.array([[38, 3, 4, 5, 39, 39], [38, 6, 8, 39, 39, 39]])  # no 7, no 9
    new = np.array([[38, 3, 7, 9, 39, 39]])
    set_lora_scale(te, 0.0)
    with nd.no_grad():
        np.testing.assert_array_equal(te(old).last_hidden_state.numpy(), base(old).last_hidden_state.numpy())
        # scale 0 is the base for the new word too; its rows are E[t] + 0
        np.testing.assert_array_equal(te(new).last_hidden_state.numpy(), base(new).last_hidden_state.numpy())
    set_lora_scale(te, 1.0)
    out = te(new).last_hidden_state
    (out * out).sum().backward()
    assert np.abs(v.grad.numpy()).max() > 0
    assert all(p.grad is None for n, p in te.named_parameters() if ".lora_" not in n and "token_adapter" not in n)
    # the learned rows are what the word's positions see: one layer of embeddings checked directly
    ids = np.array([[7, 1, 9]])
    np.testing.assert_array_equal(emb(ids).numpy()[0], np.stack([v.data[0], emb.weight.data[1], v.data[1]]))
    path = save_lora_weights(tmp_path / "t.safetensors", text_encoder=te)
    tensors, meta = read_lora_file(path)
    assert meta["text_encoder.trainable_token_indices"] == {"embeddings.token_embedding": [7, 9]}
    te2 = _clip()
    load_lora_weights(path, text_encoder=te2)
    with nd.no_grad():
        unmerged = te2(new).last_hidden_state.numpy()
        np.testing.assert_array_equal(unmerged, te(new).last_hidden_state.numpy())
        merge_lora(te2)
        assert not token_adapters(te2) and not lora_layers(te2)
        # the LoRA's re-associated product as in test_merge_remove_and_scale; the rows are written exactly
        np.testing.assert_allclose(te2(new).last_hidden_state.numpy(), unmerged, rtol=0,
                                   atol=32 * 20 * EPS32 * np.abs(unmerged).max())
    key = "embeddings.token_embedding.token_adapter.trainable_tokens_delta"
    with pytest.raises(ValueError, match=r"embeddings\.token_embedding\.token_adapter.* has no token ids"):
        load_lora_state_dict(_clip(), {key: tensors["text_encoder." + key]},
                             prefix=None)
    with pytest.raises(ValueError, match="expected one nn.Embedding"):
        add_trainable_tokens(te2, [1], target="nothing_here")
