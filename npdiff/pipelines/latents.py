"""Between pixels and latents for the editing pipelines: encode, decode, and the mask at latent size.

A latent model (Rombach et al. 2022) denoises z = s · E(x), s = ``vae.config.scaling_factor``;
the pipelines encode their input images, run the same loops on z, and decode. ``vae=None``
means a pixel-space model: every function here is then the identity, so one pipeline class
serves both. The VAE is used through the API contract (``vae.encode(x).latent_dist.mode()``,
``vae.decode(z).sample``, ``vae.config.scaling_factor``), nothing else.
"""

from __future__ import annotations

import numpy as np

from ..autograd import Tensor, no_grad


def _scaling_factor(vae) -> float:
    cfg = getattr(vae, "config", None)
    return float(getattr(cfg, "scaling_factor", 1.0) if cfg is not None else 1.0)


def encode_images(vae, images: np.ndarray) -> np.ndarray:
    """z = s · mode(q(z | x)) for images (B, C, H, W); the images themselves when ``vae`` is None.

    The posterior mode (not a sample) so that an edit of the same image is deterministic.
    """
    if vae is None:
        return np.asarray(images, dtype=np.float32)
    with no_grad():
        z = vae.encode(Tensor(np.asarray(images, dtype=np.float32))).latent_dist.mode()
    return (np.asarray(z.data if isinstance(z, Tensor) else z) * _scaling_factor(vae)).astype(np.float32)


def decode_latents(vae, z: np.ndarray) -> np.ndarray:
    """x = D(z / s); ``z`` itself when ``vae`` is None."""
    if vae is None:
        return np.asarray(z, dtype=np.float32)
    with no_grad():
        x = vae.decode(Tensor(np.asarray(z, dtype=np.float32) / _scaling_factor(vae))).sample
    return np.asarray(x.data if isinstance(x, Tensor) else x, dtype=np.float32)


def latent_mask(mask: np.ndarray, latent_shape) -> np.ndarray:
    """A pixel mask (B or 1, 1 or C, H, W) at the latent size (h, w): 1 only where all f×f pixels are 1.

    f = H / h must be an integer (the VAE's downsampling factor); the channel axis becomes 1.
    """
    b, _, H, W = mask.shape
    h, w = latent_shape[-2:]
    if (H, W) == (h, w):
        return mask
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"mask size {H}×{W} is not an integer multiple of the latent size {h}×{w}")
    f = H // h
    keep = mask.min(axis=1, keepdims=True)  # (B, 1, H, W): kept in every channel
    return keep.reshape(b, 1, h, f, w, f).min(axis=(3, 5))  # (B, 1, h, w)
