"""Datasets and a seeded batch iterator.

Every loader returns plain numpy arrays: images as ``(N, C, H, W)`` float32 in
``[-1, 1]`` (the range a DDPM is trained on, Ho et al. 2020, §3.3) and labels as
``(N,)`` int64; 2-D toy distributions as ``(N, 2)`` float32 points of roughly unit
standard deviation.

Sources
-------
``"digits"`` (default)  scikit-learn's 1,797 real 8×8 handwritten digits (values
                        0..16, shipped inside scikit-learn: no download), resized
                        bilinearly to ``size`` × ``size`` (16 by default).
``"shapes"``            procedural 32×32 RGB images of one or two coloured shapes with
                        captions and ground truth (``make_shapes``), generated from a seed;
                        splits train / test / unseen (held-out colour-shape pairs).
toy names               ``TOY_DATASETS``: two moons, swiss roll, 8 Gaussians,
                        checkerboard, sampled fresh from a seed.
a folder of images      PNG/JPEG/BMP/WebP through Pillow (``ImageFolder``), flat or
                        with one sub-folder per class.
an MNIST folder         IDX files with the standard names, raw or gzipped
                        (MNIST and Fashion-MNIST use the same format).
an ``.npz`` file        keys ``images`` (or ``x``) and optionally ``labels`` (or ``y``).

``load_dataset(name_or_path, ...)`` picks the right one and returns a ``Dataset``.
``DataLoader`` cuts a dataset into shuffled batches; the shuffle of epoch ``e``
is a pure function of ``(seed, e)``, so a loader's ``state_dict()`` (two
integers and the seed) restores the exact batch stream after a resume.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

import numpy as np

from .io import decode_image

TOY_DATASETS = ("moons", "swiss_roll", "8gaussians", "checkerboard")
SPLITS = ("train", "test", "all")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Dataset:
    """What ``load_dataset`` returns.

    images:      (N, C, H, W) float32 in [-1, 1], or (N, 2) float32 toy points.
    labels:      (N,) int64 class indices, or None for unlabelled data.
    num_classes: number of classes (0 when unlabelled).
    class_names: one name per class index (sub-folder names, "0".."9" ...), or None.
    name:        the name or path the data came from.
    captions:    one caption per image for captioned data ("shapes"), else None; such
                 data also carries its ground truth (``ShapesData.attributes`` / ``masks``).
    """

    images: np.ndarray
    labels: np.ndarray | None
    num_classes: int
    name: str
    class_names: list[str] | None = field(default=None)
    captions: list[str] | None = field(default=None)
    attributes: np.ndarray | None = field(default=None)
    masks: np.ndarray | None = field(default=None)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def is_toy(self) -> bool:
        """True for 2-D point clouds, False for images."""
        return self.images.ndim == 2

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one item: (C, H, W) for images, (2,) for toy points."""
        return tuple(self.images.shape[1:])


# ----------------------------------------------------------------------------
# helpers shared by the image loaders
# ----------------------------------------------------------------------------


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _split_indices(n: int, split: str, test_fraction: float, seed: int, labels=None) -> np.ndarray:
    """Indices of ``split`` in a seeded (stratified when labels are given) split of ``n`` items."""
    _check_split(split)
    if split == "all":
        return np.arange(n)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    # Stratify: shuffle each class separately and send the first test_fraction of
    # it to the test split, so both splits keep the class proportions.
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    test = []
    for idx in groups:
        idx = rng.permutation(idx)
        test.append(idx[: int(round(test_fraction * len(idx)))])
    is_test = np.zeros(n, dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def _uint8_to_unit(x: np.ndarray) -> np.ndarray:
    """0..255 -> [-1, 1] float32."""
    return (x.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def _resize_gray_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, H, W) float images to (N, size, size) through Pillow mode "F"."""
    from PIL import Image

    if images.shape[1:] == (size, size):
        return images.astype(np.float32)
    out = np.empty((len(images), size, size), dtype=np.float32)
    for i, img in enumerate(images):
        out[i] = np.asarray(
            Image.fromarray(img.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
        )
    return out


# ----------------------------------------------------------------------------
# scikit-learn digits
# ----------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _digits_all(size: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    img = d.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    img = np.clip(_resize_gray_batch(img, size), 0.0, 1.0)  # (1797, size, size)
    img = (img * 2.0 - 1.0)[:, None]  # (N, 1, size, size) in [-1, 1]
    img.setflags(write=False)
    labels = d.target.astype(np.int64)
    labels.setflags(write=False)
    return img, labels


def load_digits(size: int = 16, split: str = "train", test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's handwritten digits as ``(images, labels)``.

    images: (N, 1, size, size) float32 in [-1, 1] (the 0..16 pixel values scaled,
    then resized bilinearly from 8×8); labels: (N,) int64 in 0..9.
    The train/test split is stratified by class and fixed by ``seed``: with the
    defaults, 1,438 training and 359 test images.
    """
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    img, labels = _digits_all(int(size))
    idx = _split_indices(len(img), split, test_fraction, seed, labels)
    return img[idx].copy(), labels[idx].copy()


# ----------------------------------------------------------------------------
# 2-D toy distributions
# ----------------------------------------------------------------------------

# (centre, scale) per toy, fixed constants (not estimated per sample, so that every
# sample of a toy comes from the same distribution whatever n is): subtracting the
# centre and dividing by the scale gives mean 0 and a per-axis std near 1.
_TOY_NORMALISATION = {
    "moons": ((0.5, 0.25), 0.71),  # analytic mean; RMS of the two axis stds
    "swiss_roll": ((2.0, 2.0 / (3.0 * np.pi)), 6.8),  # mean of (t cos t, t sin t), t ~ U(1.5π, 4.5π)
    "8gaussians": ((0.0, 0.0), np.sqrt(2.0 + 0.2**2)),  # radius-2 ring + N(0, 0.2²) noise
    "checkerboard": ((0.0, 0.0), 4.0 / np.sqrt(12.0)),  # uniform marginals on [-2, 2]
}


def make_toy(name: str, n: int, seed=0) -> np.ndarray:
    """``n`` fresh points of a 2-D toy distribution, shape (n, 2) float32.

    moons:        two interleaved half circles with N(0, 0.1²) noise.
    swiss_roll:   the spiral (t cos t, t sin t), t ~ U(1.5π, 4.5π), N(0, 0.3²) noise.
    8gaussians:   eight N(·, 0.2²) blobs evenly spaced on a circle of radius 2.
    checkerboard: uniform on the 8 dark squares of a 4×4 board on [-2, 2]².
    Each is then centred and divided by a fixed scale (roughly unit std).
    ``seed`` is an int or a ``numpy.random.Generator``.
    """
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}: expected one of {TOY_DATASETS}")
    if int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n = int(n)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if name == "moons":
        t = rng.uniform(0.0, np.pi, n)
        upper = rng.random(n) < 0.5
        x = np.where(upper, np.cos(t), 1.0 - np.cos(t))
        y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
        p = np.stack([x, y], axis=1) + 0.1 * rng.standard_normal((n, 2))
    elif name == "swiss_roll":
        t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
        p = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.3 * rng.standard_normal((n, 2))
    elif name == "8gaussians":
        angle = rng.integers(0, 8, n) * (np.pi / 4.0)
        centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        p = centres + 0.2 * rng.standard_normal((n, 2))
    else:  # checkerboard: cell (i, j) of the 4×4 board is dark when i + j is even
        i = rng.integers(0, 4, n)
        j = 2 * rng.integers(0, 2, n) + (i % 2)  # the two dark columns of row i
        p = np.stack([j, i], axis=1) + rng.random((n, 2)) - 2.0  # cell origin + U[0,1)², on [-2, 2]²
    centre, scale = _TOY_NORMALISATION[name]
    return ((p - np.asarray(centre)) / scale).astype(np.float32)


# ----------------------------------------------------------------------------
# image folders
# ----------------------------------------------------------------------------


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class ImageFolder:
    """All images under ``path``, loaded into memory as (N, C, size, size) float32 in [-1, 1].

    Layout, as torchvision's ImageFolder: if ``path`` has sub-folders holding images,
    each sub-folder is a class (sorted names -> indices 0, 1, ...; images found
    recursively inside it) and ``labels`` is set; otherwise the images directly in
    ``path`` are loaded and ``labels`` is None. Mixing both is an error.

    Each image is resized so its shorter side is ``size`` (bicubic), then
    centre-cropped to ``size`` × ``size``. ``mode`` "L" gives C = 1, "RGB" gives C = 3.
    Images of another 8-bit mode (palette, RGBA, LA, CMYK, 1-bit ...) are **converted**
    to ``mode`` (alpha is dropped); 16-bit and float images ("I;16", "I", "F") are
    **refused** with a ValueError naming the file, because Pillow would clip them.
    A missing folder, a folder without images or an unreadable file raise ValueError.
    """

    def __init__(self, path: str, size: int = 32, mode: str = "L"):
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' (grayscale) or 'RGB', got {mode!r}")
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if not os.path.isdir(path):
            raise ValueError(f"image folder {path!r} does not exist or is not a folder")
        self.root, self.size, self.mode = path, int(size), mode
        files, labels, classes = self._find_images(path)
        self.files = files
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)} if classes else {}
        stack = np.stack([decode_image(f, mode, self.size) for f in files])  # (N, C, size, size)
        self.images = _uint8_to_unit(stack)
        self.labels = None if classes is None else np.asarray(labels, dtype=np.int64)

    @staticmethod
    def _find_images(path: str):
        entries = sorted(os.listdir(path))
        top = [os.path.join(path, e) for e in entries if _is_image_file(e) and os.path.isfile(os.path.join(path, e))]
        class_files = {}
        for e in entries:
            sub = os.path.join(path, e)
            if e.startswith(".") or not os.path.isdir(sub):
                continue
            found = []
            for dirpath, dirnames, filenames in os.walk(sub):
                dirnames.sort()
                found += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image_file(f)]
            if found:
                class_files[e] = found
        if class_files and top:
            raise ValueError(
                f"{path!r} holds both images and class sub-folders with images "
                f"({len(top)} loose images, e.g. {os.path.basename(top[0])!r}); expected one or the other"
            )
        if class_files:
            classes = sorted(class_files)
            files, labels = [], []
            for i, c in enumerate(classes):
                files += class_files[c]
                labels += [i] * len(class_files[c])
            return files, labels, classes
        if not top:
            raise ValueError(
                f"no images found in {path!r}: expected files ending in {IMAGE_EXTENSIONS}, "
                f"directly in the folder or in class sub-folders"
            )
        return top, None, None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], (None if self.labels is None else self.labels[i])


# ----------------------------------------------------------------------------
# MNIST / Fashion-MNIST IDX files
# ----------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: str) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip file ({e})") from e
    return raw


def read_idx(path: str, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a numpy array.

    Format (LeCun et al., MNIST page): a big-endian 4-byte magic ``0x0000TTDD`` where
    TT is the element type (0x08 = uint8) and DD the number of dimensions, then DD
    big-endian uint32 sizes, then the elements in C order. A wrong magic
    (``expected_magic`` given) or a size that does not match the header raises
    ValueError naming the file.
    """
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    type_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: bad IDX magic number 0x{magic:08X}, expected 0x{expected_magic:08X}")
    if magic >> 16 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: not an IDX file (magic number 0x{magic:08X})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected} data bytes) but file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


# (images, labels) file stems per split; each may end in .gz, and some mirrors
# write "train-images.idx3-ubyte" with a dot.
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_mnist_file(folder: str, stem: str) -> str | None:
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def is_mnist_folder(folder: str) -> bool:
    """True when ``folder`` holds the MNIST training or test image file."""
    return os.path.isdir(folder) and any(_find_mnist_file(folder, imgs) for imgs, _ in _MNIST_FILES.values())


def load_mnist(folder: str, split: str = "train", size: int | None = None):
    """MNIST or Fashion-MNIST from IDX files in ``folder`` as ``(images, labels)``.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally
    ending in ``.gz``. images: (N, 1, H, W) float32 in [-1, 1] (28×28 unless
    ``size`` resizes them bilinearly); labels: (N,) int64. ``split="all"``
    concatenates train and test.
    """
    _check_split(split)
    if not os.path.isdir(folder):
        raise ValueError(f"MNIST folder {folder!r} does not exist")
    parts = ("train", "test") if split == "all" else (split,)
    images, labels = [], []
    for part in parts:
        img_stem, lab_stem = _MNIST_FILES[part]
        img_path, lab_path = _find_mnist_file(folder, img_stem), _find_mnist_file(folder, lab_stem)
        missing = [s for s, p in ((img_stem, img_path), (lab_stem, lab_path)) if p is None]
        if missing:
            raise ValueError(f"{folder!r}: missing MNIST file(s) {missing} (raw or .gz) for split {part!r}")
        img = read_idx(img_path, IDX_IMAGES_MAGIC)  # (N, rows, cols) uint8
        lab = read_idx(lab_path, IDX_LABELS_MAGIC)  # (N,) uint8
        if len(img) != len(lab):
            raise ValueError(f"{img_path} has {len(img)} images but {lab_path} has {len(lab)} labels")
        images.append(img)
        labels.append(lab)
    img = np.concatenate(images)
    if size is not None and img.shape[1:] != (size, size):
        img = np.clip(_resize_gray_batch(img.astype(np.float32), size), 0, 255)
    return _uint8_to_unit(img)[:, None], np.concatenate(labels).astype(np.int64)  # (N, 1, H, W)


# ----------------------------------------------------------------------------
# .npz files
# ----------------------------------------------------------------------------


def _to_nchw_unit(x: np.ndarray, path: str) -> np.ndarray:
    """Images in a common layout and range -> (N, C, H, W) float32 in [-1, 1].

    Layouts: (N, H, W) grayscale; (N, C, H, W) with C in {1, 3}; (N, H, W, C) with
    C in {1, 3, 4} (alpha dropped). Ranges: integers 0..255; floats in [0, 1]
    (mapped to [-1, 1]) or already in [-1, 1] (kept when any value is negative).
    """
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    elif x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3, 4):
        pass  # already NCHW
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        x = x[..., :3].transpose(0, 3, 1, 2) if x.shape[-1] == 4 else x.transpose(0, 3, 1, 2)  # (N, C, H, W)
    else:
        raise ValueError(
            f"{path}: images of shape {x.shape}; expected (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3"
        )
    if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
        lo, hi = int(x.min(initial=0)), int(x.max(initial=0))
        if lo < 0 or hi > 255:
            raise ValueError(f"{path}: integer images must lie in 0..255, found {lo}..{hi}")
        return _uint8_to_unit(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{path}: images have dtype {x.dtype}; expected integers or floats")
    lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
        raise ValueError(f"{path}: float images must lie in [0, 1] or [-1, 1], found [{lo}, {hi}]")
    x = x.astype(np.float32)
    return np.ascontiguousarray(x if lo < 0 else x * 2.0 - 1.0)


def load_npz(path: str):
    """Arrays from an ``.npz`` file as ``(images, labels)``.

    Reads key ``images`` (or ``x``) and, if present, ``labels`` (or ``y``; else
    labels is None). Images go through the layouts and ranges listed in
    ``_to_nchw_unit``; a 2-D array (N, 2) is taken as a toy point cloud and
    returned unchanged as float32. A missing key raises ValueError listing the keys found.
    """
    if not os.path.isfile(path):
        raise ValueError(f".npz file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read as .npz ({e})") from e
    img_key = next((k for k in ("images", "x") if k in arrays), None)
    if img_key is None:
        raise ValueError(f"{path}: expected an array named 'images' or 'x', found keys {sorted(arrays)}")
    lab_key = next((k for k in ("labels", "y") if k in arrays), None)
    x = arrays[img_key]
    if x.ndim == 2:
        if x.shape[1] != 2:
            raise ValueError(f"{path}: 2-D array {img_key!r} of shape {x.shape}; expected (N, 2) points")
        images = x.astype(np.float32)
    else:
        images = _to_nchw_unit(x, path)
    labels = None
    if lab_key is not None:
        labels = np.asarray(arrays[lab_key])
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
            raise ValueError(
                f"{path}: {lab_key!r} must be non-negative integers of shape ({len(images)},), "
                f"got {labels.dtype} of shape {labels.shape}"
            )
        labels = labels.astype(np.int64)
    return images, labels


# ----------------------------------------------------------------------------
# shapes: procedural captioned images for text-to-image models
# ----------------------------------------------------------------------------

SHAPE_NAMES = ("circle", "square", "triangle")
COLOURS = {  # name -> RGB in [0, 1]; six hues far apart in RGB
    "red": (0.90, 0.10, 0.10), "orange": (1.00, 0.55, 0.00), "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.75, 0.20), "blue": (0.15, 0.30, 0.95), "purple": (0.60, 0.15, 0.80)}
COLOUR_NAMES = tuple(COLOURS)
SIZE_NAMES = ("small", "large")
POSITION_NAMES = ("top left", "top right", "bottom left", "bottom right")  # the four quadrants
ATTRIBUTES = ("shape", "colour", "size", "position")  # the columns of ShapesData.attributes
# (colour, shape) pairs that never occur in the train and test splits, only in "unseen":
# a model that composes attributes can still draw them (every colour and shape is seen)
HELD_OUT_PAIRS = (("red", "triangle"), ("green", "circle"), ("blue", "square"))
SHAPES_SPLITS = ("train", "test", "unseen", "all")
SHAPES_SIZE = 32
SHAPES_DEFAULT_N = {"train": 6000, "test": 1000, "unseen": 1000}
_SHAPES_RADIUS = {"small": 3.5, "large": 6.5}  # pixels; a large shape fits its 16×16 quadrant with jitter
_SHAPES_SUPERSAMPLE = 4  # coverage is averaged over 4×4 sub-pixels (anti-aliased edges)


@dataclass
class ShapesData:
    """What ``make_shapes`` returns.

    images:     (N, 3, 32, 32) float32 in [-1, 1].
    captions:   N strings, e.g. "a small red circle at the top left and a large blue square
                at the bottom right" (objects in random order).
    attributes: (N, 2, 4) int64, per object (shape, colour, size, position) indices into
                SHAPE_NAMES, COLOUR_NAMES, SIZE_NAMES, POSITION_NAMES; the second object's
                row is −1 when the image has one object.
    masks:      (N, 2, 32, 32) bool, the pixels each object covers (more than half).
    """

    images: np.ndarray
    captions: list[str]
    attributes: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def shapes_caption(attributes, colour_names=COLOUR_NAMES, shape_names=SHAPE_NAMES) -> str:
    """The caption of one image's (2, 4) attribute rows (a row of −1 is no object); ``colour_names``
    and ``shape_names`` map indices to words (a LoRA concept set adds one, see npdiff.conditions)."""
    parts = []
    for shape, colour, size, position in np.asarray(attributes):
        if shape < 0:
            continue
        parts.append(f"a {SIZE_NAMES[size]} {colour_names[colour]} {shape_names[shape]} at the {POSITION_NAMES[position]}")
    if not parts:
        raise ValueError("an image of the shapes dataset has at least one object")
    return " and ".join(parts)


def _shape_coverage(shape: str, cx: float, cy: float, r: float, top: int, left: int, size: int = 16) -> np.ndarray:
    """Fraction of each pixel of the ``size``×``size`` window at (top, left) inside the shape
    (sub-pixel average); the shape is centred at (cx, cy) in image pixel units.

    circle: (x−cx)² + (y−cy)² ≤ r²;  square: |x−cx|, |y−cy| ≤ 0.85 r (same area order);
    triangle: apex (cx, cy − r), base y = cy + r of half-width r (pointing up);
    ring (a LoRA concept shape, npdiff.conditions; never in the dataset): r/2 ≤ distance ≤ r."""
    k = _SHAPES_SUPERSAMPLE
    t = (np.arange(size * k) + 0.5) / k  # sub-pixel centres in pixel units, from the window's corner
    y, x = top + t[:, None], left + t[None, :]  # (size·k, 1), (1, size·k)
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(x - cx) <= 0.85 * r) & (np.abs(y - cy) <= 0.85 * r)
    elif shape == "ring":
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        inside = (d2 <= r * r) & (d2 >= 0.25 * r * r)
    else:
        inside = (y >= cy - r) & (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2.0)
    return inside.reshape(size, k, size, k).mean(axis=(1, 3))  # (size, size)


def _draw_object(rng, force_held_out: bool) -> list[int]:
    """(shape, colour, size) indices; train/test never draw a held-out pair."""
    held = {(COLOUR_NAMES.index(c), SHAPE_NAMES.index(s)) for c, s in HELD_OUT_PAIRS}
    if force_held_out:
        c, s = sorted(held)[rng.integers(len(held))]
    else:
        while True:
            c, s = int(rng.integers(len(COLOUR_NAMES))), int(rng.integers(len(SHAPE_NAMES)))
            if (c, s) not in held:
                break
    return [int(s), int(c), int(rng.integers(len(SIZE_NAMES)))]


def _render_shapes_image(rng, attrs: np.ndarray, shape_names=SHAPE_NAMES):
    """One image (3, 32, 32) in [0, 1] and its masks (2, 32, 32) for (2, 4) attribute rows
    (``shape_names``: the shape indices' names; a LoRA concept set adds one)."""
    S = SHAPES_SIZE
    if rng.random() < 0.5:  # plain background, a dark grey
        img = np.full((3, S, S), rng.uniform(0.0, 0.2), dtype=np.float64)
    else:  # noisy background
        img = np.clip(rng.uniform(0.0, 0.2) + 0.06 * rng.standard_normal((3, S, S)), 0.0, 1.0)
    masks = np.zeros((2, S, S), dtype=bool)
    for k, (shape, colour, size, position) in enumerate(attrs):
        if shape < 0:
            continue
        row, col = divmod(int(position), 2)
        top, left = 16 * row, 16 * col  # the object's quadrant; it never leaves it
        cx = left + 8.0 + rng.uniform(-1.0, 1.0)  # quadrant centre + jitter
        cy = top + 8.0 + rng.uniform(-1.0, 1.0)
        cov = _shape_coverage(shape_names[shape], cx, cy, _SHAPES_RADIUS[SIZE_NAMES[size]], top, left)
        rgb = np.clip(np.asarray(COLOURS[COLOUR_NAMES[colour]]) + rng.uniform(-0.05, 0.05, 3), 0.0, 1.0)
        window = img[:, top:top + 16, left:left + 16]
        img[:, top:top + 16, left:left + 16] = window * (1.0 - cov) + rgb[:, None, None] * cov  # paint over
        masks[k, top:top + 16, left:left + 16] = cov > 0.5
    return img, masks


@lru_cache(maxsize=8)
def _make_shapes_cached(n: int, split: str, seed: int) -> ShapesData:
    stream = {"train": 0, "test": 1, "unseen": 2}[split]
    rng = np.random.default_rng([seed, 1234, stream])
    images = np.empty((n, 3, SHAPES_SIZE, SHAPES_SIZE), dtype=np.float32)
    attributes = np.full((n, 2, 4), -1, dtype=np.int64)
    masks = np.empty((n, 2, SHAPES_SIZE, SHAPES_SIZE), dtype=bool)
    for i in range(n):
        count = 1 + int(rng.random() < 0.5)
        positions = rng.permutation(len(POSITION_NAMES))[:count]
        for k in range(count):
            attributes[i, k, :3] = _draw_object(rng, force_held_out=(split == "unseen" and k == 0))
            attributes[i, k, 3] = positions[k]
        if count == 2 and rng.random() < 0.5:  # the held-out object is not always named first
            attributes[i] = attributes[i, ::-1]
        img, masks[i] = _render_shapes_image(rng, attributes[i])
        images[i] = img * 2.0 - 1.0
    for a in (images, attributes, masks):
        a.setflags(write=False)
    return ShapesData(images, [shapes_caption(a) for a in attributes], attributes, masks)


def make_shapes(n: int | None = None, split: str = "train", seed: int = 0) -> ShapesData:
    """The seeded ``shapes`` dataset: 32×32 RGB images of one or two coloured shapes.

    Each object has a shape (circle, square, triangle), one of six colours, a size
    (small, large) and a position (one of the four quadrants, jittered by up to 1 px);
    two objects never share a quadrant. Backgrounds are plain dark grey or noisy.
    Splits are independent streams of the same generator: "train" and "test" never
    contain the (colour, shape) pairs of ``HELD_OUT_PAIRS``; every image of "unseen"
    contains at least one (to test composition); "all" is the three concatenated.
    ``n`` defaults to ``SHAPES_DEFAULT_N[split]``. The result is cached per (n, split,
    seed) and read-only.
    """
    if split not in SHAPES_SPLITS:
        raise ValueError(f"shapes: split must be one of {SHAPES_SPLITS}, got {split!r}")
    if split == "all":
        parts = [make_shapes(None if n is None else n, s, seed) for s in ("train", "test", "unseen")]
        return ShapesData(np.concatenate([p.images for p in parts]), sum((p.captions for p in parts), []),
                          np.concatenate([p.attributes for p in parts]), np.concatenate([p.masks for p in parts]))
    n = SHAPES_DEFAULT_N[split] if n is None else n
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"shapes: n must be a positive integer, got {n!r}")
    return _make_shapes_cached(int(n), split, int(seed))


# ----------------------------------------------------------------------------
# one entry point
# ----------------------------------------------------------------------------


def _num_classes(labels) -> int:
    return 0 if labels is None or len(labels) == 0 else int(labels.max()) + 1


def load_dataset(
    name_or_path: str = "digits",
    split: str = "train",
    *,
    size: int | None = None,
    mode: str = "L",
    n: int = 8192,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name or path.

    ``"digits"``            ``load_digits(size or 16, split, test_fraction, seed)``.
    ``"shapes"``            ``make_shapes(n=None, split, seed)`` (its default sizes; split may
                            also be "unseen"); the Dataset carries captions, attributes, masks.
    a name in TOY_DATASETS  ``n`` fresh points; the train, test and all splits are
                            independent draws from ``seed``.
    a folder of MNIST IDX   ``load_mnist`` (its own train/test files; ``size`` resizes).
    any other folder        ``ImageFolder(path, size or 32, mode)`` + a seeded split.
    a ``.npz`` file         ``load_npz`` + a seeded split.
    """
    name = str(name_or_path)
    if name == "shapes":
        if size not in (None, SHAPES_SIZE):
            raise ValueError(f"shapes images are {SHAPES_SIZE}×{SHAPES_SIZE}; got size={size}")
        d = make_shapes(None, split, seed)
        return Dataset(d.images, None, 0, name, captions=d.captions, attributes=d.attributes, masks=d.masks)
    _check_split(split)
    if name == "digits":
        images, labels = load_digits(size or 16, split, test_fraction, seed)
        return Dataset(images, labels, 10, name, [str(d) for d in range(10)])
    if name in TOY_DATASETS:
        stream = {"train": 0, "test": 1, "all": 2}[split]
        return Dataset(make_toy(name, n, np.random.default_rng([seed, stream])), None, 0, name)
    if os.path.isdir(name):
        if is_mnist_folder(name):
            images, labels = load_mnist(name, split, size)
            return Dataset(images, labels, 10, name, [str(d) for d in range(10)])
        folder = ImageFolder(name, size or 32, mode)
        images, labels, class_names = folder.images, folder.labels, folder.classes
    elif os.path.isfile(name) and name.lower().endswith(".npz"):
        images, labels = load_npz(name)
        class_names = None
    else:
        what = "no such file or folder" if not os.path.exists(name) else "not a folder or an .npz file"
        raise ValueError(
            f"cannot load dataset {name!r} ({what}); expected 'digits', 'shapes', a toy name {TOY_DATASETS}, "
            f"a folder of PNG/JPEG images (optionally in class sub-folders), a folder of MNIST IDX "
            f"files (train-images-idx3-ubyte[.gz] ...), or an .npz file with 'images'/'x' [+ 'labels'/'y']"
        )
    idx = _split_indices(len(images), split, test_fraction, seed, labels)
    labels = None if labels is None else labels[idx]
    nc = len(class_names) if class_names else _num_classes(labels)
    return Dataset(images[idx], labels, nc, name, class_names)


# ----------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------


class DataLoader:
    """Seeded mini-batches over in-memory arrays, resumable exactly.

    Epoch ``e`` visits the items in the order ``default_rng([seed, e]).permutation(N)``
    (or 0..N-1 when ``shuffle=False``), so the whole stream is a function of
    ``(seed, epoch, batch)``; ``state_dict()`` records that position and
    ``load_state_dict()`` continues from it. With ``hflip=True`` each image is
    mirrored left-right with probability 1/2, drawn from the same per-epoch generator.

    Iterating (``for x, y in loader``) yields the rest of the current epoch and then
    moves to the next one; ``infinite()`` yields batches forever, for step-based
    training. Each batch is ``(x, y)``: x (B, ...) float32 (a copy), y (B,) int64 or None.

    Sharding for data-parallel training (``num_replicas`` = R processes, this one ``rank``):
    every process walks the same seeded order in global batches of R·B items and keeps
    items [rank·B, (rank+1)·B) of each, so R processes with batch B together see exactly
    the batches (and flips) one process with batch R·B sees, and the resumable position
    (seed, epoch, batch) is the same on every rank. Shards must be equal (``drop_last``).
    """

    def __init__(self, data, labels=None, batch_size: int = 64, *, shuffle: bool = True,
                 drop_last: bool = True, hflip: bool = False, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0):
        if isinstance(data, Dataset):
            data, labels = data.images, data.labels
        data = np.asarray(data)
        if labels is not None and len(labels) != len(data):
            raise ValueError(f"labels of length {len(labels)} do not match data of length {len(data)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas) with num_replicas >= 1, got rank {rank} of "
                             f"{num_replicas}")
        if num_replicas > 1 and not drop_last:
            raise ValueError("a sharded DataLoader (num_replicas > 1) needs drop_last=True: every rank must get "
                             "a batch of the same size")
        global_batch = batch_size * num_replicas
        if len(data) == 0 or (drop_last and global_batch > len(data)):
            what = f"batch_size {batch_size}" + (f" × {num_replicas} ranks" if num_replicas > 1 else "")
            raise ValueError(f"{what} with drop_last={drop_last} gives no batches from {len(data)} items")
        if hflip and data.ndim != 4:
            raise ValueError(f"hflip needs images (N, C, H, W), got data of shape {data.shape}")
        self.data = data
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.batch_size, self.shuffle, self.drop_last, self.hflip = int(batch_size), shuffle, drop_last, hflip
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self.epoch = 0
        self.batch = 0  # index of the next batch within self.epoch

    def __len__(self) -> int:
        """Batches per epoch (global batches of batch_size · num_replicas items)."""
        n, b = len(self.data), self.batch_size * self.num_replicas
        return n // b if self.drop_last else -(-n // b)

    def _epoch_plan(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.data)) if self.shuffle else np.arange(len(self.data))
        flip = rng.random(len(self.data)) < 0.5 if self.hflip else None
        return order, flip

    def _make_batch(self, idx: np.ndarray, flip) -> tuple:
        x = self.data[idx].astype(np.float32, copy=True)
        if flip is not None:
            f = flip[: len(idx)]
            x[f] = x[f][..., ::-1]  # mirror the W axis of the chosen images
        y = None if self.labels is None else self.labels[idx]
        return x, y

    def __iter__(self) -> Iterator[tuple]:
        if self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0
        order, flip = self._epoch_plan(self.epoch)
        while self.batch < len(self):
            start = (self.batch * self.num_replicas + self.rank) * self.batch_size  # this rank's shard
            sl = slice(start, start + self.batch_size)
            self.batch += 1  # advance before yielding: state_dict() now points past this batch
            yield self._make_batch(order[sl], None if flip is None else flip[sl])

    def infinite(self) -> Iterator[tuple]:
        """Batches forever, crossing epoch boundaries; the state stays resumable."""
        while True:
            yield from iter(self)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        missing = {"seed", "epoch", "batch"} - set(state)
        if missing:
            raise ValueError(f"DataLoader state is missing keys {sorted(missing)}; got {sorted(state)}")
        self.seed, self.epoch, self.batch = int(state["seed"]), int(state["epoch"]), int(state["batch"])
