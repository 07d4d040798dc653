"""Atomic writes, safetensors, JSON, image grids and plots in npdiff.io."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from npdiff import io

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _leftovers(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


# ----------------------------------------------------------------------------
# atomic_write
# ----------------------------------------------------------------------------


def test_atomic_write_bytes_str_callable_and_creates_folders(tmp_path):
    p = tmp_path / "sub" / "dir" / "f.bin"
    io.atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    io.atomic_write(p, "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    io.atomic_write(p, lambda f: f.write(b"via callable"))
    assert p.read_bytes() == b"via callable"
    assert _leftovers(p.parent) == []
    assert oct(os.stat(p).st_mode & 0o777) == oct(0o666 & ~io._current_umask())


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_failure_keeps_old_file_and_no_partial(tmp_path, exc):
    p = tmp_path / "ckpt.safetensors"
    p.write_bytes(b"old good content")

    def half_then_fail(f):
        f.write(b"partial new con")
        raise exc("disk on fire")

    with pytest.raises(exc):
        io.atomic_write(p, half_then_fail)
    assert p.read_bytes() == b"old good content"
    assert _leftovers(tmp_path) == []
    with pytest.raises(exc):
        io.atomic_write(tmp_path / "new.bin", half_then_fail)
    assert not (tmp_path / "new.bin").exists() and _leftovers(tmp_path) == []


def test_atomic_write_rejects_other_types(tmp_path):
    with pytest.raises(TypeError):
        io.atomic_write(tmp_path / "x", 12345)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "unet.conv_in.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "step": np.array(1234, dtype=np.int64),
        "strided": rng.standard_normal((6, 8)).astype(np.float32)[::2, ::-1],  # non-contiguous
        "mask": np.array([True, False]),
        "half": np.arange(3, dtype=np.float16),
    }
    p = tmp_path / "m.safetensors"
    io.save_safetensors(p, tensors, metadata={"format": "np", "step": "1234"})
    back = io.load_safetensors(p)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    assert io.load_safetensors_metadata(p) == {"format": "np", "step": "1234"}
    assert _leftovers(tmp_path) == []


def test_safetensors_bad_input(tmp_path):
    with pytest.raises(ValueError, match="'names'"):
        io.save_safetensors(tmp_path / "a", {"names": np.array(["a", "b"])})
    with pytest.raises(ValueError, match="metadata"):
        io.save_safetensors(tmp_path / "a", {"w": np.zeros(2)}, metadata={"step": 3})
    with pytest.raises(ValueError, match="does not exist"):
        io.load_safetensors(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------
# JSON and JSONL
# ----------------------------------------------------------------------------


def test_json_round_trip_with_numpy_values(tmp_path):
    p = tmp_path / "config.json"
    io.save_json(p, {"lr": np.float32(0.5), "steps": np.int64(10), "shape": np.array([1, 16, 16]), "name": "x"})
    assert io.load_json(p) == {"lr": 0.5, "steps": 10, "shape": [1, 16, 16], "name": "x"}
    p.write_text("{broken")
    with pytest.raises(ValueError, match="invalid JSON"):
        io.load_json(p)
    with pytest.raises(TypeError):
        io.save_json(tmp_path / "y.json", {"obj": object()})
    assert not (tmp_path / "y.json").exists()


def test_jsonl_append_and_truncated_last_line(tmp_path):
    p = tmp_path / "log.jsonl"
    for step in range(3):
        io.append_jsonl(p, {"step": step, "loss": np.float64(1.0 / (step + 1))})
    with open(p, "a") as f:
        f.write('{"step": 3, "lo')  # a crash mid-append
    recs = io.read_jsonl(p)
    assert [r["step"] for r in recs] == [0, 1, 2] and recs[1]["loss"] == 0.5
    p.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        io.read_jsonl(p)


# ----------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------


def test_to_uint8_maps_range_and_clips():
    x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5)
    np.testing.assert_array_equal(io.to_uint8(x)[0, 0, :, 0], [0, 0, 128, 255, 255])
    np.testing.assert_array_equal(io.to_uint8(x, (0, 1))[0, 0, :, 0], [0, 0, 0, 255, 255])


def test_image_grid_layout():
    imgs = np.stack([np.full((1, 4, 5), v) for v in np.linspace(-1, 1, 7)])  # (7, 1, 4, 5)
    g = io.image_grid(imgs, nrow=3, padding=1)
    assert g.shape == (3 * 5 + 1, 3 * 6 + 1, 1) and g.dtype == np.uint8
    # tile k sits at row k // 3, column k % 3
    for k in range(7):
        r, c = divmod(k, 3)
        tile = g[1 + r * 5 : 1 + r * 5 + 4, 1 + c * 6 : 1 + c * 6 + 5, 0]
        assert np.all(tile == io.to_uint8(imgs[k : k + 1])[0, 0, 0, 0])
    assert np.all(g[0] == 255)  # white padding
    big = io.image_grid(imgs[:, :, :2, :2], nrow=7, padding=0, scale=3)
    assert big.shape == (6, 42, 1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        io.image_grid(np.zeros((2, 2, 4, 4)))


def test_save_image_grid_and_strip_and_load_image(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.uniform(-1, 1, (5, 3, 6, 6))
    grid = io.save_image_grid(tmp_path / "g.png", rgb, nrow=2, padding=2)
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "RGB" and im.size == (grid.shape[1], grid.shape[0])
        np.testing.assert_array_equal(np.asarray(im), grid)
    io.save_image_strip(tmp_path / "s.png", rgb[:, :1], padding=0)
    with Image.open(tmp_path / "s.png") as im:
        assert im.mode == "L" and im.size == (30, 6)
    back = io.load_image(tmp_path / "s.png", mode="L")
    assert back.shape == (1, 6, 30)
    np.testing.assert_allclose(back[0, :, :6], rgb[0, 0], atol=1.0 / 255 + 1e-6)
    with pytest.raises(ValueError, match="does not exist"):
        io.load_image(tmp_path / "none.png")


# ----------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------


def _is_png(path):
    return path.read_bytes()[:8] == PNG_SIGNATURE


def test_plots_write_pngs(tmp_path):
    steps = np.arange(1, 201)
    io.save_loss_curve(tmp_path / "loss.png", steps, 1.0 / steps + 0.01)
    t = np.arange(1000)
    curves = {"linear": np.exp(-t / 300), "cosine": np.cos(t / 1000 * np.pi / 2) ** 2}
    io.save_curves(tmp_path / "curves.png", t, curves, xlabel="t", ylabel="ᾱ_t")
    io.save_scatter(tmp_path / "scatter.png", np.random.default_rng(0).standard_normal((300, 2)),
                    reference=np.zeros((10, 2)), lim=3, title="moons")
    for name in ("loss.png", "curves.png", "scatter.png"):
        assert _is_png(tmp_path / name)
    assert _leftovers(tmp_path) == []


def test_smooth_ema_is_bias_corrected():
    np.testing.assert_allclose(io.smooth_ema(np.full(50, 3.0), 0.9), 3.0)
    assert io.smooth_ema([1.0, 0.0], 0.5)[1] == pytest.approx(1.0 / 3.0)


def test_plot_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="equal-length"):
        io.save_loss_curve(tmp_path / "l.png", [1, 2, 3], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"'b' has shape \(2,\)"):
        io.save_curves(tmp_path / "c.png", [1, 2, 3], {"a": [1, 2, 3], "b": [1, 2]})
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        io.save_scatter(tmp_path / "s.png", np.zeros((5, 3)))
    assert os.listdir(tmp_path) == []
