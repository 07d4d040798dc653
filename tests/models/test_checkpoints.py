"""from_pretrained / save_pretrained: round trips, safety rules and the error cases (no torch needed)."""

import json
import os
import pickle
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import npdiff as nd
from npdiff.models import UNet2DModel
from npdiff.models.modeling_utils import CONFIG_NAME, WEIGHTS_NAME

TINY = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4, attention_head_dim=8, num_class_embeds=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny model folder and the model itself."""
    nd.manual_seed(0)
    model = UNet2DModel(**TINY).eval()
    folder = tmp_path_factory.mktemp("ckpt") / "unet"
    model.save_pretrained(folder)
    return folder, model


def _copy(src, dst, weights=None, config=None):
    os.makedirs(dst, exist_ok=True)
    cfg = json.loads((src / CONFIG_NAME).read_text())
    if config is not None:
        cfg = config(cfg)
    (dst / CONFIG_NAME).write_text(json.dumps(cfg))
    if weights is not None:
        save_file(weights, str(dst / WEIGHTS_NAME))
    return dst


def _run(model, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    with nd.no_grad():
        return model(x, np.array([5, 900]), class_labels=np.array([0, 2])).numpy()


def test_round_trip_layout_and_function(saved):
    folder, model = saved
    assert sorted(os.listdir(folder)) == [CONFIG_NAME, WEIGHTS_NAME]
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    assert cfg["_class_name"] == "UNet2DModel" and cfg["block_out_channels"] == [8, 16]
    weights = load_file(str(folder / WEIGHTS_NAME))
    assert set(weights) == set(model.state_dict())
    loaded = UNet2DModel.from_pretrained(folder)
    assert dict(loaded.config) == dict(model.config)
    np.testing.assert_array_equal(_run(loaded), _run(model))


def test_pickle_only_folder_is_refused_without_unpickling(saved, tmp_path, monkeypatch):
    folder, _ = saved
    dst = _copy(folder, tmp_path / "pickled")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (dst / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Evil()))

    def forbidden(*a, **k):
        raise AssertionError("npdiff must never unpickle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin.*never unpickles"):
        UNet2DModel.from_pretrained(dst)
    assert not marker.exists()


def test_truncated_and_corrupt_files_name_the_file(saved, tmp_path):
    folder, _ = saved
    blob = (folder / WEIGHTS_NAME).read_bytes()
    for name, data in [("truncated", blob[: len(blob) // 2]), ("corrupt", b"\xff" * 8 + blob[8:]),
                       ("empty", b"")]:
        dst = _copy(folder, tmp_path / name)
        (dst / WEIGHTS_NAME).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name}/{WEIGHTS_NAME}: cannot read safetensors"):
            UNet2DModel.from_pretrained(dst)


def test_wrong_shape_missing_and_unexpected_keys_are_named(saved, tmp_path):
    folder, _ = saved
    good = load_file(str(folder / WEIGHTS_NAME))
    bad_shape = dict(good, **{"conv_in.weight": np.zeros((8, 1, 5, 5), np.float32)})
    dst = _copy(folder, tmp_path / "shape", bad_shape)
    with pytest.raises(ValueError, match=r"shape/diffusion_pytorch_model\.safetensors.*conv_in\.weight.*\(8, 1, 5, 5\)"):
        UNet2DModel.from_pretrained(dst)
    missing = {k: v for k, v in good.items() if k != "time_embedding.linear_2.bias"}
    dst = _copy(folder, tmp_path / "missing", missing)
    with pytest.raises(ValueError, match=r"missing/diffusion_pytorch_model\.safetensors.*missing keys: "
                                         r"time_embedding\.linear_2\.bias"):
        UNet2DModel.from_pretrained(dst)
    extra = dict(good, **{"foo.weight": np.zeros(3, np.float32)})
    dst = _copy(folder, tmp_path / "extra", extra)
    with pytest.raises(ValueError, match=r"extra/diffusion_pytorch_model\.safetensors.*unexpected keys: foo\.weight"):
        UNet2DModel.from_pretrained(dst)


def test_deprecated_attention_key_names_load(saved, tmp_path):
    folder, model = saved
    old = {}
    for k, v in load_file(str(folder / WEIGHTS_NAME)).items():
        for new, legacy in [("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")]:
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        old[k] = v
    assert any(".proj_attn." in k for k in old)
    dst = _copy(folder, tmp_path / "legacy", old)
    np.testing.assert_array_equal(_run(UNet2DModel.from_pretrained(dst)), _run(model))


def test_sharded_checkpoint_loads(saved, tmp_path):
    folder, model = saved
    weights = load_file(str(folder / WEIGHTS_NAME))
    keys = sorted(weights)
    dst = _copy(folder, tmp_path / "sharded")
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2:]}
    for fname, ks in shards.items():
        save_file({k: weights[k] for k in ks}, str(dst / fname))
    index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (dst / (WEIGHTS_NAME + ".index.json")).write_text(json.dumps(index))
    np.testing.assert_array_equal(_run(UNet2DModel.from_pretrained(dst)), _run(model))


def test_config_errors_and_warnings(saved, tmp_path):
    folder, _ = saved
    weights = load_file(str(folder / WEIGHTS_NAME))
    dst = _copy(folder, tmp_path / "unknown", weights, lambda c: dict(c, some_future_flag=True))
    with pytest.warns(UserWarning, match="some_future_flag"):
        UNet2DModel.from_pretrained(dst)
    dst = _copy(folder, tmp_path / "fourier", weights, lambda c: dict(c, time_embedding_type="fourier"))
    with pytest.raises(ValueError, match="time_embedding_type='fourier' is not supported"):
        UNet2DModel.from_pretrained(dst)
    dst = _copy(folder, tmp_path / "block", weights,
                lambda c: dict(c, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"]))
    with pytest.raises(ValueError, match="down_block_types: block type 'CrossAttnDownBlock2D' is not supported"):
        UNet2DModel.from_pretrained(dst)
    dst = _copy(folder, tmp_path / "other", weights, lambda c: dict(c, _class_name="AutoencoderKL"))
    with pytest.raises(ValueError, match=r"config.json: config is for class 'AutoencoderKL'"):
        UNet2DModel.from_pretrained(dst)
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match=r"badjson/config.json: invalid JSON"):
        UNet2DModel.from_pretrained(tmp_path / "badjson")
    with pytest.raises(ValueError, match="does not exist"):
        UNet2DModel.from_pretrained(tmp_path / "nowhere")
    dst = _copy(folder, tmp_path / "noweights")
    with pytest.raises(ValueError, match=r"has no diffusion_pytorch_model\.safetensors"):
        UNet2DModel.from_pretrained(dst)


def test_save_is_atomic(saved, tmp_path, monkeypatch):
    """A save that fails mid-way leaves the previous files intact and no temporary files."""
    folder, model = saved
    dst = tmp_path / "atomic"
    model.save_pretrained(dst)
    before = {f: (dst / f).read_bytes() for f in os.listdir(dst)}
    nd.manual_seed(1)
    other = UNet2DModel(**TINY)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(dst)
    monkeypatch.undo()
    assert {f: (dst / f).read_bytes() for f in os.listdir(dst)} == before


def test_forward_input_errors(saved):
    _, model = saved
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"sample must have shape \(B, 1, H, W\), got \(2, 3, 8, 8\)"):
        model(np.zeros((2, 3, 8, 8), np.float32), 1, class_labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="multiples of 2"):
        model(np.zeros((2, 1, 7, 8), np.float32), 1, class_labels=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"timestep must be a scalar or have shape \(2,\)"):
        model(x, np.array([1, 2, 3]), class_labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="class_labels are required"):
        model(x, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = UNet2DModel(**dict(TINY, num_class_embeds=None))
    with pytest.raises(ValueError, match="no class embedding"):
        plain(x, 1, class_labels=np.array([0, 1]))
