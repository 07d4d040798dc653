"""Files in and out: atomic writes, safetensors, JSON/JSONL, image grids and plots.

Every writer here goes through ``atomic_write``: the bytes go to a temporary file
in the destination folder, which is flushed, fsynced and then renamed over the
destination with ``os.replace``. A crash or an exception mid-write leaves the old
file (or no file) in place, never a truncated one — a checkpoint is either the
previous good one or the new good one.

Pictures: images are (N, C, H, W) arrays in ``value_range`` (default [-1, 1], the
range the models work in), C = 1 or 3. Plots use matplotlib's Agg canvas directly
(``matplotlib.figure.Figure``), never pyplot, so nothing global is touched and no
display is needed.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Iterable, Mapping

import numpy as np

from .backend import to_device


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file


def _host(x) -> np.ndarray:
    """A numpy array from a numpy/cupy array or an npdiff Tensor (whose ``.data`` is the array)."""
    if isinstance(x, np.ndarray):
        return to_device(x, "cpu")  # itself; an array of the simulated device is copied back (a counted read)
    inner = getattr(x, "data", None)
    if inner is not None and hasattr(inner, "shape"):  # a Tensor; cupy's .data is a pointer without a shape
        x = inner
    return np.asarray(to_device(x, "cpu"))


# ----------------------------------------------------------------------------
# atomic writes
# ----------------------------------------------------------------------------


def atomic_write(path: str, data: bytes | str | Callable) -> None:
    """Write ``path`` atomically.

    ``data`` is bytes, a str (written as UTF-8), or a callable ``fn(f)`` that writes
    into the binary file object ``f``. The parent folder is created if needed.
    On any exception the temporary file is removed, ``path`` is left untouched and
    the exception propagates.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            elif isinstance(data, str):
                f.write(data.encode("utf-8"))
            elif isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                raise TypeError(f"atomic_write: data must be bytes, str or a callable, got {type(data).__name__}")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temp file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable (best effort; not possible on every OS)
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ----------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------


def save_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Save a flat ``{name: array}`` dict as a safetensors file, atomically.

    Arrays may be numpy or cupy (moved to the host); non-contiguous arrays are copied.
    ``metadata`` is an optional ``{str: str}`` header dict.
    """
    from safetensors.numpy import save

    arrays = {}
    for k, v in tensors.items():
        if not isinstance(k, str):
            raise ValueError(f"safetensors keys must be strings, got {k!r}")
        a = _host(v)
        if a.dtype.kind not in "biuf":
            raise ValueError(f"value for key {k!r} is not a bool/int/float array (got dtype {a.dtype})")
        # copy only when needed: np.ascontiguousarray would turn 0-d arrays into (1,)
        arrays[k] = a if a.flags.c_contiguous else a.copy(order="C")
    if metadata is not None:
        bad = {k: type(v).__name__ for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise ValueError(f"safetensors metadata must map str to str; offending entries: {bad}")
        metadata = dict(metadata)
    atomic_write(path, save(arrays, metadata=metadata))


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """Load a safetensors file as ``{name: numpy array}``."""
    from safetensors.numpy import load_file

    if not os.path.isfile(path):
        raise ValueError(f"safetensors file {path!r} does not exist")
    return dict(load_file(path))


def load_safetensors_metadata(path: str) -> dict[str, str]:
    """The ``__metadata__`` header of a safetensors file ({} when absent)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise ValueError(f"safetensors file {path!r} does not exist")
    with safe_open(path, framework="numpy") as f:
        return dict(f.metadata() or {})


# ----------------------------------------------------------------------------
# JSON and JSON lines
# ----------------------------------------------------------------------------


def _json_default(obj):
    """numpy scalars and arrays -> plain Python, for json.dumps."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def save_json(path: str, obj, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically (numpy scalars/arrays are converted)."""
    atomic_write(path, json.dumps(obj, indent=indent, default=_json_default, sort_keys=False) + "\n")


def load_json(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"JSON file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e


def append_jsonl(path: str, record: Mapping) -> None:
    """Append one JSON object as a line (a log: appending is not atomic, reading tolerates it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")


def read_jsonl(path: str) -> list[dict]:
    """All records of a JSON-lines file; a truncated last line (a crash mid-append) is skipped."""
    if not os.path.isfile(path):
        raise ValueError(f"JSON-lines file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    out = []
    for i, ln in enumerate(lines):
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e})") from e
    return out


# ----------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------


def to_uint8(images, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(..., C, H, W) floats in ``value_range`` -> (..., H, W, C) uint8 (values outside are clipped)."""
    x = _host(images).astype(np.float64)
    lo, hi = value_range
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return np.moveaxis(np.round(x * 255.0).astype(np.uint8), -3, -1)  # (..., H, W, C)


def image_grid(images, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0,
               value_range: tuple[float, float] = (-1.0, 1.0), scale: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images into one (H', W', C) uint8 picture, ``nrow`` images per row.

    Like torchvision's make_grid: ``padding`` pixels of ``pad_value`` (in [0, 1],
    1 = white) around every tile; ``nrow`` defaults to ceil(sqrt(N)). ``scale``
    enlarges each pixel to a ``scale`` × ``scale`` block (for 16×16 digits).
    """
    x = _host(images)
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise ValueError(f"images must be (N, C, H, W) with C = 1 or 3 and N >= 1, got shape {x.shape}")
    if scale < 1 or padding < 0:
        raise ValueError(f"scale must be >= 1 and padding >= 0, got scale={scale}, padding={padding}")
    tiles = to_uint8(x, value_range)  # (N, H, W, C)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)  # (N, sH, sW, C)
    n, h, w, c = tiles.shape
    nrow = int(nrow or int(np.ceil(np.sqrt(n))))
    ncol_rows = -(-n // nrow)
    grid = np.full((ncol_rows * (h + padding) + padding, nrow * (w + padding) + padding, c),
                   int(round(pad_value * 255)), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[top : top + h, left : left + w] = tiles[k]
    return grid


def _save_png(path: str, array: np.ndarray) -> None:
    from PIL import Image

    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    atomic_write(path, lambda f: img.save(f, format="PNG"))


def save_image_grid(path: str, images, nrow: int | None = None, padding: int = 2, pad_value: float = 1.0,
                    value_range: tuple[float, float] = (-1.0, 1.0), scale: int = 1) -> np.ndarray:
    """Save ``image_grid(images, ...)`` as a PNG (atomically) and return the grid array."""
    grid = image_grid(images, nrow, padding, pad_value, value_range, scale)
    _save_png(path, grid)
    return grid


def save_image_strip(path: str, images, padding: int = 2, pad_value: float = 1.0,
                     value_range: tuple[float, float] = (-1.0, 1.0), scale: int = 1) -> np.ndarray:
    """Save (N, C, H, W) images side by side in one row (e.g. x_t at increasing t)."""
    return save_image_grid(path, images, len(images), padding, pad_value, value_range, scale)


# Pillow modes that hold 8 bits per channel and convert losslessly (up to
# dropping alpha) to "L" or "RGB". Higher bit depths ("I", "I;16", "F") are
# refused: Pillow's convert() clips them to 0..255 instead of rescaling.
CONVERTIBLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La")


def decode_image(path: str, mode: str = "RGB", size: int | None = None) -> np.ndarray:
    """One image file -> (C, H, W) uint8 in ``mode`` ("L": C = 1, "RGB": C = 3); the one decoder.

    The EXIF rotation of camera photos is applied; palette images go through RGBA so
    transparency is honoured; modes that are not 8-bit (``CONVERTIBLE_MODES``) are refused.
    With ``size``: the shorter side is resized to ``size`` (bicubic), then centre-cropped to
    size × size.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    if not os.path.isfile(path):
        raise ValueError(f"image file {path!r} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # camera photos: apply the EXIF rotation
            if img.mode not in CONVERTIBLE_MODES:
                raise ValueError(
                    f"{path}: image mode {img.mode!r} is not supported; expected an 8-bit image "
                    f"(one of {CONVERTIBLE_MODES}); convert it to 8-bit grayscale or RGB first"
                )
            if img.mode in ("P", "PA"):  # palette: expand through RGBA so transparency is honoured
                img = img.convert("RGBA")
            img = img.convert(mode)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: cannot read image ({e})") from e
    if size is not None:
        w, h = img.size
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((new_w, new_h), Image.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


def load_image(path: str, mode: str = "RGB", value_range: tuple[float, float] = (-1.0, 1.0),
               size: int | None = None) -> np.ndarray:
    """A PNG/JPEG file as a (C, H, W) float32 array in ``value_range`` (``decode_image``, then scaled)."""
    arr = decode_image(str(path), mode, size).astype(np.float32) / 255.0
    lo, hi = value_range
    return (arr * (hi - lo) + lo).astype(np.float32)


# ----------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(path: str, fig) -> None:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))


def save_curves(path: str, x, curves: Mapping[str, Iterable[float]], *, xlabel: str = "", ylabel: str = "",
                title: str = "", logy: bool = False, logx: bool = False, figsize=(6.0, 4.0)) -> None:
    """Plot several named curves against a shared ``x`` and save a PNG.

    ``curves`` maps a legend label to y values of the same length as ``x``
    (e.g. ᾱ_t of each beta schedule against t). With ``x=None`` each curve is its own
    ``(x, y)`` pair instead (e.g. quality against the NFE each sampler actually used).
    """
    fig = _new_figure(figsize)
    ax = fig.add_subplot(1, 1, 1)
    for label, y in curves.items():
        cx = np.asarray(x if x is not None else y[0], dtype=np.float64)
        y = np.asarray(y if x is not None else y[1], dtype=np.float64)
        if y.shape != cx.shape:
            raise ValueError(f"curve {label!r} has shape {y.shape}, its x has shape {cx.shape}")
        ax.plot(cx, y, label=label, marker="o" if x is None else None, markersize=3)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    _save_figure(path, fig)


def smooth_ema(values, beta: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing)."""
    v = np.asarray(values, dtype=np.float64)
    out = np.empty_like(v)
    m = 0.0
    for i, val in enumerate(v):
        m = beta * m + (1.0 - beta) * val
        out[i] = m / (1.0 - beta ** (i + 1))
    return out


def save_loss_curve(path: str, steps, losses, *, smoothing: float = 0.98, logy: bool = True,
                    title: str = "training loss") -> None:
    """Raw loss (faint) and its EMA-smoothed curve against the step, as a PNG."""
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if steps.shape != losses.shape or steps.ndim != 1 or len(steps) == 0:
        raise ValueError(f"steps and losses must be equal-length 1-D, got {steps.shape} and {losses.shape}")
    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, losses, alpha=0.3, color="C0", label="loss")
    if 0.0 < smoothing < 1.0:
        ax.plot(steps, smooth_ema(losses, smoothing), color="C0", label=f"EMA ({smoothing})")
        ax.legend()
    if logy and np.all(losses > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save_figure(path, fig)


def save_scatter(path: str, points, reference=None, *, title: str = "", lim: float | None = None,
                 figsize=(5.0, 5.0)) -> None:
    """Scatter plot of (N, 2) points, optionally over (M, 2) reference points (grey)."""
    pts = _host(points).astype(np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {pts.shape}")
    fig = _new_figure(figsize)
    ax = fig.add_subplot(1, 1, 1)
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        if ref.ndim != 2 or ref.shape[1] != 2:
            raise ValueError(f"reference must have shape (M, 2), got {ref.shape}")
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.7", label="data")
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="C3", label="samples")
    if reference is not None:
        ax.legend(loc="upper right", markerscale=4)
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    _save_figure(path, fig)


def save_class_scatter(path: str, points, labels=None, class_names=None, *, xlabel: str = "", ylabel: str = "",
                       title: str = "", figsize=(6.0, 5.5)) -> None:
    """Scatter plot of (N, 2) points, one colour per class of ``labels`` (N,) (e.g. a VAE's latent means)."""
    pts = _host(points).astype(np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {pts.shape}")
    fig = _new_figure(figsize)
    ax = fig.add_subplot(1, 1, 1)
    if labels is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=4, c="C0")
    else:
        labels = np.asarray(labels)
        if labels.shape != (len(pts),):
            raise ValueError(f"labels must have shape ({len(pts)},), got {labels.shape}")
        from matplotlib import colormaps

        classes = np.unique(labels)
        cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for k, c in enumerate(classes):
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            sel = labels == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=6, color=cmap(k % cmap.N), label=name)
        ax.legend(loc="best", markerscale=2, fontsize="small", ncol=2 if len(classes) > 5 else 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    _save_figure(path, fig)
