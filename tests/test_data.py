"""Loaders and the batch iterator in npdiff.data."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from npdiff import data
from npdiff.data import (
    TOY_DATASETS,
    DataLoader,
    ImageFolder,
    load_dataset,
    load_digits,
    load_mnist,
    load_npz,
    make_toy,
    read_idx,
)

# ----------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------


def test_digits_shapes_range_and_labels():
    x, y = load_digits()
    assert x.shape[1:] == (1, 16, 16) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.shape == (len(x),)
    assert x.min() == -1.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_digits_split_is_a_stratified_deterministic_partition():
    xa, ya = load_digits(split="all")
    assert len(xa) == 1797
    xtr, ytr = load_digits(split="train", seed=3)
    xte, yte = load_digits(split="test", seed=3)
    assert len(xtr) + len(xte) == 1797 and abs(len(xte) - 0.2 * 1797) <= 10
    # every test class holds about 20 % of that class
    np.testing.assert_allclose(np.bincount(yte) / np.bincount(ya), 0.2, atol=0.01)
    # disjoint and covering: each image of "all" appears in exactly one split
    key = lambda a: {r.tobytes() for r in a.reshape(len(a), -1)}  # noqa: E731
    assert key(xtr).isdisjoint(key(xte))
    assert key(xtr) | key(xte) == key(xa)
    # same seed, same split; another seed, another split
    np.testing.assert_array_equal(load_digits(split="test", seed=3)[0], xte)
    assert not np.array_equal(load_digits(split="test", seed=4)[0], xte)


def test_digits_size_8_is_the_raw_data_rescaled():
    from sklearn.datasets import load_digits as sk_digits

    x, y = load_digits(size=8, split="all")
    raw = sk_digits()
    np.testing.assert_allclose(x[:, 0], raw.images / 8.0 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(y, raw.target)


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_digits(split="validation")
    with pytest.raises(ValueError, match="size"):
        load_digits(size=0)


# ----------------------------------------------------------------------------
# toys
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shape_scale_and_seeding(name):
    p = make_toy(name, 20000, seed=1)
    assert p.shape == (20000, 2) and p.dtype == np.float32 and np.all(np.isfinite(p))
    np.testing.assert_allclose(p.mean(0), 0.0, atol=0.05)
    assert 0.9 < np.sqrt(np.mean(p.var(0))) < 1.1  # roughly unit std overall
    np.testing.assert_array_equal(make_toy(name, 100, seed=1), make_toy(name, 100, seed=1))
    assert not np.array_equal(make_toy(name, 100, seed=1), make_toy(name, 100, seed=2))


def test_checkerboard_points_lie_on_dark_squares():
    p = make_toy("checkerboard", 5000, 0) * (4.0 / np.sqrt(12.0))  # back to [-2, 2]²
    assert np.all(np.abs(p) <= 2.0)
    col, row = np.floor(p[:, 0] + 2).astype(int), np.floor(p[:, 1] + 2).astype(int)
    assert np.all((col + row) % 2 == 0)


def test_8gaussians_has_eight_tight_modes():
    p = make_toy("8gaussians", 4000, 0) * np.sqrt(2.04)  # back to a radius-2 ring
    angles = np.arange(8) * np.pi / 4
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    d = np.linalg.norm(p[:, None] - centres[None], axis=2)  # (N, 8)
    assert np.percentile(d.min(1), 99) < 0.8
    counts = np.bincount(d.argmin(1), minlength=8)
    assert counts.min() > 400


def test_toy_unknown_name():
    with pytest.raises(ValueError, match="moons"):
        make_toy("spiral", 10, 0)


# ----------------------------------------------------------------------------
# image folders
# ----------------------------------------------------------------------------


def _save(path, arr, mode=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path, format=fmt)


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / "dog" / "a.png", rng.integers(0, 255, (20, 30), dtype=np.uint8))
    _save(tmp_path / "dog" / "deeper" / "b.jpg", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    _save(tmp_path / "cat" / "c.png", rng.integers(0, 255, (12, 12, 4), dtype=np.uint8))  # RGBA: converted
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()  # a sub-folder without images is not a class
    ds = ImageFolder(str(tmp_path), size=8, mode="L")
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert ds.images.shape == (3, 1, 8, 8) and ds.images.dtype == np.float32
    assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0
    np.testing.assert_array_equal(ds.labels, [0, 1, 1])
    rgb = ImageFolder(str(tmp_path), size=8, mode="RGB")
    assert rgb.images.shape == (3, 3, 8, 8)


def test_image_folder_resizes_shorter_side_and_centre_crops(tmp_path):
    # 60 wide, 20 high: black | white | black thirds. Shorter side -> 10 gives 30×10,
    # the centre 10×10 crop is exactly the white third.
    img = np.zeros((20, 60), dtype=np.uint8)
    img[:, 20:40] = 255
    _save(tmp_path / "wide.png", img)
    ds = ImageFolder(str(tmp_path), size=10)
    assert ds.labels is None and ds.classes is None
    np.testing.assert_allclose(ds.images[0, 0, :, 2:8], 1.0, atol=0.02)


def test_image_folder_palette_image_is_converted(tmp_path):
    img = Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).convert("P", palette=Image.ADAPTIVE, colors=4)
    img.save(tmp_path / "p.png")
    ds = ImageFolder(str(tmp_path), size=8, mode="RGB")
    np.testing.assert_allclose(ds.images, 200 / 127.5 - 1, atol=0.02)


def test_image_folder_refuses_16_bit_images(tmp_path):
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ValueError, match=r"deep\.png.*mode"):
        ImageFolder(str(tmp_path), size=8)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolder(str(tmp_path / "nope"), size=8)
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(str(tmp_path), size=8)
    (tmp_path / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match=r"broken\.png"):
        ImageFolder(str(tmp_path), size=8)
    with pytest.raises(ValueError, match="mode"):
        ImageFolder(str(tmp_path), size=8, mode="CMYK")


# ----------------------------------------------------------------------------
# IDX (MNIST) files
# ----------------------------------------------------------------------------


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape) + arr.astype(">u1").tobytes()


def _write_mnist(folder, n_train=12, n_test=5, gz=False, rng=np.random.default_rng(0)):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for stem, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr, magic in (("images-idx3", imgs, 0x803), ("labels-idx1", labs, 0x801)):
            raw = _idx_bytes(arr, magic)
            name = f"{stem}-{kind}-ubyte" + (".gz" if gz else "")
            (folder / name).write_bytes(gzip.compress(raw) if gz else raw)
        arrays[stem] = (imgs, labs)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_raw_and_gzipped(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    x, y = load_mnist(str(tmp_path), "train")
    assert x.shape == (12, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x[:, 0], arrays["train"][0] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(y, arrays["train"][1])
    xt, yt = load_mnist(str(tmp_path), "test")
    np.testing.assert_array_equal(yt, arrays["t10k"][1])
    xa, _ = load_mnist(str(tmp_path), "all", size=14)
    assert xa.shape == (17, 1, 14, 14)


def test_idx_bad_magic_names_file_and_magic(tmp_path):
    _write_mnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(_idx_bytes(np.zeros((2, 28, 28), np.uint8), 0x802))  # claims 2 dimensions
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*0x00000802.*0x00000803"):
        load_mnist(str(tmp_path), "train")


def test_idx_truncated_and_not_idx(tmp_path):
    p = tmp_path / "x.idx"
    p.write_bytes(_idx_bytes(np.zeros((3, 4), np.uint8), 0x802)[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(str(p))
    p.write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(str(p))


def test_load_mnist_missing_file(tmp_path):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        load_mnist(str(tmp_path), "test")


# ----------------------------------------------------------------------------
# npz
# ----------------------------------------------------------------------------


def test_npz_keys_layouts_and_ranges(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=nhwc, labels=np.arange(6))
    x, y = load_npz(str(tmp_path / "a.npz"))
    assert x.shape == (6, 3, 5, 5)
    np.testing.assert_allclose(x, nhwc.transpose(0, 3, 1, 2) / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(y, np.arange(6))
    unit = rng.random((4, 7, 7)).astype(np.float32)
    np.savez(tmp_path / "b.npz", x=unit)
    x, y = load_npz(str(tmp_path / "b.npz"))
    assert y is None and x.shape == (4, 1, 7, 7)
    np.testing.assert_allclose(x[:, 0], unit * 2 - 1, atol=1e-6)
    pts = rng.standard_normal((10, 2))
    np.savez(tmp_path / "c.npz", x=pts, y=np.zeros(10, int))
    x, _ = load_npz(str(tmp_path / "c.npz"))
    np.testing.assert_allclose(x, pts, atol=1e-6)


def test_npz_errors_list_what_was_found(tmp_path):
    np.savez(tmp_path / "a.npz", pixels=np.zeros((2, 4, 4)), targets=np.zeros(2))
    with pytest.raises(ValueError, match=r"'images' or 'x'.*\['pixels', 'targets'\]"):
        load_npz(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", images=np.zeros((2, 4, 4)), labels=np.zeros(3, int))
    with pytest.raises(ValueError, match=r"labels.*\(2,\)"):
        load_npz(str(tmp_path / "b.npz"))
    np.savez(tmp_path / "c.npz", images=np.full((2, 4, 4), 3.0))
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[-1, 1\]"):
        load_npz(str(tmp_path / "c.npz"))
    with pytest.raises(ValueError, match="does not exist"):
        load_npz(str(tmp_path / "missing.npz"))


# ----------------------------------------------------------------------------
# load_dataset dispatch
# ----------------------------------------------------------------------------


def test_load_dataset_dispatch(tmp_path):
    d = load_dataset()
    assert d.name == "digits" and d.num_classes == 10 and d.sample_shape == (1, 16, 16) and not d.is_toy
    t = load_dataset("moons", n=100, seed=2)
    assert t.is_toy and t.images.shape == (100, 2) and t.labels is None
    assert not np.array_equal(t.images, load_dataset("moons", "test", n=100, seed=2).images)

    _write_mnist(tmp_path / "mnist", n_train=7)
    m = load_dataset(str(tmp_path / "mnist"))
    assert len(m) == 7 and m.num_classes == 10

    for i in range(10):
        _save(tmp_path / "imgs" / ("a" if i < 5 else "b") / f"{i}.png", np.full((9, 9), 25 * i, np.uint8))
    f = load_dataset(str(tmp_path / "imgs"), "all", size=6)
    assert f.images.shape == (10, 1, 6, 6) and f.class_names == ["a", "b"] and f.num_classes == 2
    ftr = load_dataset(str(tmp_path / "imgs"), "train", size=6, test_fraction=0.2)
    assert len(ftr) == 8 and np.bincount(ftr.labels).tolist() == [4, 4]

    np.savez(tmp_path / "d.npz", images=np.zeros((10, 4, 4), np.uint8))
    assert len(load_dataset(str(tmp_path / "d.npz"), "test")) == 2


def test_load_dataset_bad_path_says_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match=r"no such file.*expected 'digits'"):
        load_dataset(str(tmp_path / "nowhere"))
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"not a folder or an \.npz file.*\.npz"):
        load_dataset(str(tmp_path / "data.csv"))


# ----------------------------------------------------------------------------
# DataLoader
# ----------------------------------------------------------------------------


def _tagged_images(n=10):
    """(n, 1, 2, 3) images whose first pixel is the item index, labels = index."""
    x = np.zeros((n, 1, 2, 3), np.float32)
    x[:, 0, 0, 0] = np.arange(n)
    x[:, 0, 1, 2] = -1.0  # marks the right edge, to see flips
    return x, np.arange(n)


def test_loader_epoch_is_a_permutation():
    x, y = _tagged_images(10)
    loader = DataLoader(x, y, batch_size=3, drop_last=False, seed=0)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [3, 3, 3, 1]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(seen) == list(range(10)) and not np.array_equal(seen, np.arange(10))
    for bx, by in batches:
        np.testing.assert_array_equal(bx[:, 0, 0, 0], by)
    second = np.concatenate([b[1] for b in loader])  # next epoch: another order
    assert sorted(second) == list(range(10)) and not np.array_equal(second, seen)
    dropped = DataLoader(x, y, batch_size=3, drop_last=True)
    assert len(dropped) == 3 and all(len(b[1]) == 3 for b in dropped)
    ordered = DataLoader(x, None, batch_size=5, shuffle=False)
    b0, lab = next(iter(ordered))
    assert lab is None and b0[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]


def test_loader_resume_continues_the_exact_stream():
    x, y = _tagged_images(10)
    straight = DataLoader(x, y, batch_size=4, hflip=True, seed=7).infinite()
    ref = [next(straight) for _ in range(11)]
    first = DataLoader(x, y, batch_size=4, hflip=True, seed=7)
    it = first.infinite()
    got = [next(it) for _ in range(5)]  # stop mid-epoch
    state = dict(first.state_dict())
    resumed = DataLoader(x, y, batch_size=4, hflip=True, seed=0)
    resumed.load_state_dict(state)
    it = resumed.infinite()
    got += [next(it) for _ in range(6)]
    for (rx, ry), (gx, gy) in zip(ref, got):
        np.testing.assert_array_equal(rx, gx)
        np.testing.assert_array_equal(ry, gy)
    with pytest.raises(ValueError, match="missing keys"):
        resumed.load_state_dict({"epoch": 1})


def test_loader_hflip_mirrors_about_half():
    x, y = _tagged_images(400)
    loader = DataLoader(x, y, batch_size=400, hflip=True, seed=1)
    bx, by = next(iter(loader))
    flipped = bx[:, 0, 1, 0] == -1.0  # the right-edge mark moved to the left
    assert 150 < flipped.sum() < 250
    np.testing.assert_array_equal(bx[flipped], x[by[flipped]][..., ::-1])
    np.testing.assert_array_equal(bx[~flipped], x[by[~flipped]])
    assert x[0, 0, 1, 2] == -1.0  # the source array is untouched


def test_loader_bad_arguments():
    x, y = _tagged_images(5)
    with pytest.raises(ValueError, match="no batches"):
        DataLoader(x, y, batch_size=8, drop_last=True)
    with pytest.raises(ValueError, match="labels of length 4"):
        DataLoader(x, y[:4], batch_size=2)
    with pytest.raises(ValueError, match="hflip needs images"):
        DataLoader(np.zeros((5, 2)), None, batch_size=2, hflip=True)
    ds = data.Dataset(x, y, 5, "tagged")
    assert len(DataLoader(ds, batch_size=2)) == 2
