"""LoRA against peft + diffusers: the same A and B give the same output; files load both ways.

The tiny Stable Diffusion stack of tests/pipelines/sd_stack.py, saved by npdiff and loaded
by diffusers' StableDiffusionPipeline; adapters on the U-Net's attention projections
(to_q, to_k, to_v, to_out.0) and on the CLIP text encoder's (q_proj, k_proj, v_proj, out_proj).

The text encoder's adapters go through peft directly (``inject_adapter_in_model``,
``set_peft_model_state_dict``): transformers 5.24's own adapter methods, which diffusers'
``load_lora_weights`` calls for the text encoder, require peft >= 0.22, newer than the
newest peft on PyPI here (0.21.2). The U-Net side uses diffusers' ``add_adapter`` /
``load_lora_adapter`` / ``save_lora_weights``.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="oracle tests need torch")
diffusers = pytest.importorskip("diffusers", reason="oracle tests need diffusers")
peft = pytest.importorskip("peft", reason="LoRA oracle tests need peft")
pytest.importorskip("transformers", reason="oracle tests need transformers")

import npdiff as nd  # noqa: E402
from npdiff.models.lora import (TEXT_ENCODER_TARGETS, UNET_TARGETS, load_lora_state_dict,  # noqa: E402
                                load_lora_weights, lora_parameters, lora_state_dict, save_lora_weights)
from tests.oracle import assert_close  # noqa: E402
from tests.pipelines.sd_stack import CAPTIONS, tiny_pipeline  # noqa: E402

UNET_RANK, UNET_ALPHA, TEXT_RANK, TEXT_ALPHA = 4, 8, 2, 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "p"
    tiny_pipeline().save_pretrained(path)
    return path


def _ref_pipeline(folder, adapters: bool):
    from peft import LoraConfig

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                             requires_safety_checker=False)
    if adapters:
        pipe.unet.add_adapter(LoraConfig(r=UNET_RANK, lora_alpha=UNET_ALPHA, target_modules=list(UNET_TARGETS)))
        peft.inject_adapter_in_model(LoraConfig(r=TEXT_RANK, lora_alpha=TEXT_ALPHA,
                                                target_modules=list(TEXT_ENCODER_TARGETS)), pipe.text_encoder)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for model in (pipe.unet, pipe.text_encoder):
                for name, p in model.named_parameters():
                    if "lora_" in name:  # B is zero at init: make both matter
                        p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return pipe


def _peft_state_dict(model):
    """get_peft_model_state_dict's keys: the adapter parameters without the adapter name."""
    return {n.replace(".default", ""): p.detach().numpy() for n, p in model.named_parameters() if "lora_" in n}


def _inputs(seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, 4, 8, 8)).astype(np.float32), np.array([5, 600]),
            rng.standard_normal((2, 12, 16)).astype(np.float32))


def _ids(ours):
    return ours.tokenizer(CAPTIONS[:2], padding="max_length", max_length=12, truncation=True,
                          return_tensors="np")["input_ids"]


def _compare(ours, ref, what):
    x, t, text = _inputs()
    with torch.no_grad():
        want_u = ref.unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(text)).sample.numpy()
        want_t = ref.text_encoder(torch.from_numpy(_ids(ours))).last_hidden_state.numpy()
    with nd.no_grad():
        got_u = ours.unet(x, t, text).numpy()
        got_t = ours.text_encoder(_ids(ours)).last_hidden_state.numpy()
    assert_close(got_u, want_u, f"{what}: U-Net")
    assert_close(got_t, want_t, f"{what}: text encoder")
    return got_u, got_t


def test_same_A_B_same_output_and_gradients(folder):
    """peft's adapters copied into npdiff's (state-dict keys as peft's get_peft_model_state_dict
    writes them) give the same U-Net and text-encoder outputs, and the same gradients of A and B."""
    from peft.utils import get_peft_model_state_dict

    ref = _ref_pipeline(folder, adapters=True)
    ours = tiny_pipeline()
    for name, alpha in (("unet", UNET_ALPHA), ("text_encoder", TEXT_ALPHA)):
        sd = _peft_state_dict(getattr(ref, name))
        load_lora_state_dict(getattr(ours, name), sd, alpha=alpha, prefix=None)
        assert lora_state_dict(getattr(ours, name)).keys() == sd.keys()
    assert set(get_peft_model_state_dict(ref.unet)) == set(lora_state_dict(ours.unet))
    _compare(ours, ref, "peft adapters")

    x, t, text = _inputs(2)
    R = np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype(np.float32)
    (ref.unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(text)).sample * torch.from_numpy(R)
     ).sum().backward()
    (ours.unet(x, t, text) * R).sum().backward()
    theirs = {n.replace(".default", ""): p.grad.numpy() for n, p in ref.unet.named_parameters() if "lora_" in n}
    named = {n: p for n, p in ours.unet.named_parameters()}
    assert {n for n, p in named.items() if p.requires_grad} == set(theirs)
    floor = 1e-3 * max(np.abs(g).max() for g in theirs.values())
    for n, g in theirs.items():
        assert_close(named[n].grad.numpy(), g, f"d/d {n}", floor=floor)
    assert len(lora_parameters(ours.unet)) == len(theirs)


def test_file_saved_by_npdiff_loads_in_diffusers(folder, tmp_path):
    """diffusers' ``load_lora_adapter(file, prefix="unet")`` and peft (LoraConfig from the file's
    ``text_encoder.*`` metadata, ``set_peft_model_state_dict``) read npdiff's file."""
    import json

    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    ref = _ref_pipeline(folder, adapters=True)
    ours = tiny_pipeline()
    for name, alpha in (("unet", UNET_ALPHA), ("text_encoder", TEXT_ALPHA)):
        load_lora_state_dict(getattr(ours, name), _peft_state_dict(getattr(ref, name)), alpha=alpha, prefix=None)
    path = save_lora_weights(tmp_path / "ours.safetensors", unet=ours.unet, text_encoder=ours.text_encoder)
    fresh = _ref_pipeline(folder, adapters=False)
    # diffusers reads a file's metadata only on its safetensors path (folder + weight_name)
    fresh.unet.load_lora_adapter(str(tmp_path), weight_name="ours.safetensors", prefix="unet", adapter_name="default")
    assert fresh.unet.peft_config["default"].r == UNET_RANK
    assert fresh.unet.peft_config["default"].lora_alpha == UNET_ALPHA
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    te_config = LoraConfig(**{k[len("text_encoder."):]: v for k, v in meta.items() if k.startswith("text_encoder.")})
    assert (te_config.r, te_config.lora_alpha) == (TEXT_RANK, TEXT_ALPHA)
    peft.inject_adapter_in_model(te_config, fresh.text_encoder)
    te_sd = {k[len("text_encoder."):]: v for k, v in load_file(str(path)).items() if k.startswith("text_encoder.")}
    result = set_peft_model_state_dict(fresh.text_encoder, te_sd)
    assert not [k for k in result.unexpected_keys if "lora_" in k]
    _compare(ours, fresh, "npdiff file in diffusers / peft")


def test_files_saved_by_diffusers_load_in_npdiff(folder, tmp_path):
    """diffusers' pipeline file (unet. + text_encoder. keys, prefixed metadata) and its bare
    ``save_lora_adapter`` file both load, with rank and alpha read from the metadata."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    ref = _ref_pipeline(folder, adapters=True)
    te_config = LoraConfig(r=TEXT_RANK, lora_alpha=TEXT_ALPHA, target_modules=list(TEXT_ENCODER_TARGETS))
    diffusers.StableDiffusionPipeline.save_lora_weights(
        tmp_path / "d", unet_lora_layers=get_peft_model_state_dict(ref.unet),
        text_encoder_lora_layers={k: torch.from_numpy(v) for k, v in _peft_state_dict(ref.text_encoder).items()},
        unet_lora_adapter_metadata=ref.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=te_config.to_dict())
    ours = tiny_pipeline()
    loaded = load_lora_weights(tmp_path / "d", unet=ours.unet, text_encoder=ours.text_encoder)
    assert loaded["unet"]["r"] == UNET_RANK and loaded["unet"]["lora_alpha"] == UNET_ALPHA
    assert loaded["text_encoder"]["lora_alpha"] == TEXT_ALPHA
    _compare(ours, ref, "diffusers file in npdiff")

    ref.unet.save_lora_adapter(tmp_path / "bare")
    alone = tiny_pipeline()
    load_lora_weights(tmp_path / "bare" / "pytorch_lora_weights.safetensors", unet=alone.unet)
    x, t, text = _inputs()
    with nd.no_grad():
        np.testing.assert_array_equal(alone.unet(x, t, text).numpy(), ours.unet(x, t, text).numpy())


def test_token_rows_saved_by_npdiff_load_into_peft(folder, tmp_path):
    """A text-encoder LoRA plus learned token rows (``add_trainable_tokens``: the concept word's rows),
    saved by npdiff, load into peft: ``LoraConfig`` from the file's ``text_encoder.*`` metadata (its
    ``trainable_token_indices``), ``set_peft_model_state_dict`` on the ``text_encoder.`` tensors (the rows
    under peft's ``token_adapter.trainable_tokens_delta``); the text encoder's output is the same, on prompts
    with the learned ids and without them."""
    import json

    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open
    from safetensors.torch import load_file

    from npdiff.models.lora import add_lora, add_trainable_tokens, token_adapters

    ours = tiny_pipeline()
    learned = ours.tokenizer.encode("circle square", add_special_tokens=False)  # rows of words CAPTIONS hold
    add_lora(ours.text_encoder, TEXT_RANK, TEXT_ALPHA, target_modules=TEXT_ENCODER_TARGETS)
    add_trainable_tokens(ours.text_encoder, learned)
    rng = np.random.default_rng(4)
    for name, p in ours.text_encoder.named_parameters():
        if p.requires_grad:  # B is zero and the rows are the base's at init: make both matter
            p.data = (p.data + 0.3 * rng.standard_normal(p.shape)).astype(np.float32)
    emb = token_adapters(ours.text_encoder)["embeddings.token_embedding"]
    assert np.abs(emb.token_adapter.trainable_tokens_delta.numpy() - emb.trainable_tokens_original).min() > 0
    path = save_lora_weights(tmp_path / "rows.safetensors", text_encoder=ours.text_encoder)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    te_config = LoraConfig(**{k[len("text_encoder."):]: v for k, v in meta.items() if k.startswith("text_encoder.")})
    assert te_config.trainable_token_indices == {"embeddings.token_embedding": sorted(learned)}
    ref = _ref_pipeline(folder, adapters=False)
    peft.inject_adapter_in_model(te_config, ref.text_encoder)
    te_sd = {k[len("text_encoder."):]: v for k, v in load_file(str(path)).items()}
    result = set_peft_model_state_dict(ref.text_encoder, te_sd)
    assert not result.unexpected_keys
    ids = ours.tokenizer(CAPTIONS + ["a green triangle at the top"], padding="max_length", max_length=12,
                         truncation=True, return_tensors="np")["input_ids"]
    assert np.isin(ids, learned).any(axis=1).tolist() == [True, True, False, True, False]  # with and without
    with torch.no_grad():
        want = ref.text_encoder(torch.from_numpy(ids)).last_hidden_state.numpy()
    with nd.no_grad():
        got = ours.text_encoder(ids).last_hidden_state.numpy()
    assert_close(got, want, "npdiff LoRA + token rows in peft: text encoder")
    with nd.no_grad():  # and the adapters matter: the base's text encoder gives something else
        base = tiny_pipeline().text_encoder(ids).last_hidden_state.numpy()
    assert np.abs(base - want).max() > 1e-2
