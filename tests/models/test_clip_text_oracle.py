"""CLIPTextModel against transformers' CLIPTextModel: same keys, outputs and gradients; folders both ways."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="oracle tests need torch")
transformers = pytest.importorskip("transformers", reason="oracle tests need transformers")

import npdiff as nd  # noqa: E402
from npdiff import io as nd_io  # noqa: E402
from npdiff.models import CLIPTextModel  # noqa: E402
from tests.oracle import assert_close, assert_grads_close, assert_same_parameters, randomise  # noqa: E402

VOCAB, BOS, EOS, PAD = 60, 58, 59, 0
CONFIGS = {
    # OpenAI CLIP's activation and the legacy eos_token_id=2 (pool at the largest id)
    "quick_gelu_legacy_eos": dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                  num_attention_heads=2, max_position_embeddings=8, hidden_act="quick_gelu",
                                  bos_token_id=BOS, eos_token_id=2, pad_token_id=PAD, projection_dim=8),
    # exact GELU, pooling at the first eos_token_id, other eps
    "gelu_eos_id": dict(vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                        num_attention_heads=4, max_position_embeddings=10, hidden_act="gelu", layer_norm_eps=1e-6,
                        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD),
}


def _ids(L, seed=0):
    """Two right-padded sequences [BOS, words…, EOS, PAD…]; sample 1 pads with EOS (as
    CLIP's own tokenizer does), so the first-EOS rule and the argmax rule must both hold."""
    rng = np.random.default_rng(seed)
    ids = np.full((2, L), PAD, dtype=np.int64)
    ids[0, :4] = [BOS, *rng.integers(3, 50, 2), EOS]
    ids[1] = EOS
    ids[1, :L - 2] = [BOS, *rng.integers(3, 50, L - 3)]
    mask = (np.arange(L)[None] < np.array([[4], [L - 1]])).astype(np.int64)
    return ids, mask


def _pair(name, seed=0):
    torch.manual_seed(seed)
    ref = transformers.CLIPTextModel(transformers.CLIPTextConfig(**CONFIGS[name])).eval()
    randomise(ref, seed)
    ours = CLIPTextModel(**CONFIGS[name])
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    return ref, ours


@pytest.mark.parametrize("with_mask", [False, True], ids=["causal", "causal+padding"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_outputs_and_gradients(name, with_mask):
    ref, ours = _pair(name)
    assert_same_parameters(ours, ref)
    ids, mask = _ids(CONFIGS[name]["max_position_embeddings"])
    mask = mask if with_mask else None
    tmask = None if mask is None else torch.from_numpy(mask)
    out = ref(torch.from_numpy(ids), attention_mask=tmask, output_hidden_states=True)
    got = ours(ids, attention_mask=mask, output_hidden_states=True)
    assert_close(got.last_hidden_state.numpy(), out.last_hidden_state.detach().numpy(), f"{name}: last_hidden_state")
    assert_close(got.pooler_output.numpy(), out.pooler_output.detach().numpy(), f"{name}: pooler_output")
    assert len(got.hidden_states) == len(out.hidden_states) == CONFIGS[name]["num_hidden_layers"] + 1
    for i, (a, b) in enumerate(zip(got.hidden_states, out.hidden_states)):
        assert_close(a.numpy(), b.detach().numpy(), f"{name}: hidden_states[{i}]")
    # the pooled row is the EOS row: sample 0 at position 3 under both rules
    np.testing.assert_array_equal(got.pooler_output.numpy()[0], got.last_hidden_state.numpy()[0, 3])
    assert ours(ids).hidden_states is None

    R1 = np.random.default_rng(1).standard_normal(out.last_hidden_state.shape).astype(np.float32)
    R2 = np.random.default_rng(2).standard_normal(out.pooler_output.shape).astype(np.float32)
    ((out.last_hidden_state * torch.from_numpy(R1)).sum() + (out.pooler_output * torch.from_numpy(R2)).sum()).backward()
    ((got.last_hidden_state * R1).sum() + (got.pooler_output * R2).sum()).backward()
    assert_grads_close(ours, ref, name)


def test_pooling_rules_differ_where_transformers_says():
    """With eos_token_id=7 the first 7 is pooled; with the legacy 2 the largest id (59) is."""
    nd.manual_seed(1)
    m_new = CLIPTextModel(**dict(CONFIGS["gelu_eos_id"], eos_token_id=7))
    m_old = CLIPTextModel(**dict(CONFIGS["gelu_eos_id"], eos_token_id=2))
    m_old.load_state_dict(m_new.state_dict())
    x = np.array([[BOS, 7, 4, EOS, PAD]])
    new, old = m_new(x), m_old(x)
    np.testing.assert_array_equal(new.pooler_output.numpy()[0], new.last_hidden_state.numpy()[0, 1])
    np.testing.assert_array_equal(old.pooler_output.numpy()[0], old.last_hidden_state.numpy()[0, 3])
    assert np.abs(new.pooler_output.numpy() - old.pooler_output.numpy()).max() > 0


@pytest.mark.parametrize("prefix", ["", "text_model."])
def test_loads_transformers_folders(tmp_path, prefix):
    """transformers' own folder, and the transformers-4 layout Stable Diffusion ships
    (``text_model.`` prefix, a stale ``position_ids`` buffer)."""
    ref, _ = _pair("quick_gelu_legacy_eos", seed=3)
    ref.save_pretrained(tmp_path / "ref")
    if prefix:
        sd = nd_io.load_safetensors(str(tmp_path / "ref" / "model.safetensors"))
        sd = {prefix + k: v for k, v in sd.items()}
        sd[prefix + "embeddings.position_ids"] = np.arange(8, dtype=np.int64)[None]
        nd_io.save_safetensors(str(tmp_path / "ref" / "model.safetensors"), sd, metadata={"format": "pt"})
    ours = CLIPTextModel.from_pretrained(tmp_path / "ref")
    ids, mask = _ids(8, seed=4)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    with nd.no_grad():
        assert_close(ours(ids, attention_mask=mask).last_hidden_state.numpy(), want, "from_pretrained")


def test_transformers_loads_what_npdiff_saves(tmp_path):
    nd.manual_seed(0)
    ours = CLIPTextModel(**CONFIGS["gelu_eos_id"])
    ours.save_pretrained(tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["model_type"] == "clip_text_model" and cfg["architectures"] == ["CLIPTextModel"]
    assert sorted(os.listdir(tmp_path / "ours")) == ["config.json", "model.safetensors"]
    ref = transformers.CLIPTextModel.from_pretrained(tmp_path / "ours").eval()
    assert isinstance(ref.config, transformers.CLIPTextConfig) and ref.config.hidden_act == "gelu"
    ids, mask = _ids(10, seed=5)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    with nd.no_grad():
        got = ours(ids, attention_mask=mask)
    assert_close(got.last_hidden_state.numpy(), want.last_hidden_state.numpy(), "transformers loading npdiff's folder")
    assert_close(got.pooler_output.numpy(), want.pooler_output.numpy(), "pooler after transformers load")
    # and our loader reads our own folder back to the bit
    again = CLIPTextModel.from_pretrained(tmp_path / "ours")
    np.testing.assert_array_equal(again(ids).last_hidden_state.numpy(), ours(ids).last_hidden_state.numpy())
