"""``AutoencoderKL``: the KL-regularised VAE of latent diffusion, built as diffusers builds it.

Same constructor arguments, defaults, submodule names, state-dict keys and
parameter order as diffusers' ``AutoencoderKL`` (0.42), so a diffusers folder
(e.g. Stable Diffusion's ``vae/``) loads unchanged and computes the same function.

Letters: B batch, c = latent_channels, f = 2^(K−1) for K = len(block_out_channels).

    encode:  x (B, C_in, H, W) → Encoder → (B, 2c, H/f, W/f) → quant_conv (1×1)
             → DiagonalGaussianDistribution  q(z|x) = N(μ, diag σ²)
    decode:  z (B, c, H/f, W/f) → post_quant_conv (1×1) → Decoder → (B, C_out, H, W)
    forward: decode(mode or sample of encode(x))

``scaling_factor`` (and ``shift_factor``, ``latents_mean``/``latents_std``) are
configuration only: pipelines multiply latents by it before diffusion and divide
before decoding (Rombach et al. 2022, §4.3.2 and Appendix G: rescale z to unit
variance); the model itself never applies it, as in diffusers. ``force_upcast``
is a float16 concern and has no effect here (npdiff computes in float32/float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..autograd import Tensor
from .. import nn
from .modeling_utils import ModelMixin, register_to_config
from .vae import Decoder, DiagonalGaussianDistribution, Encoder


@dataclass
class AutoencoderKLOutput:
    """``encode`` returns this: ``latent_dist`` is the posterior q(z|x)."""

    latent_dist: DiagonalGaussianDistribution


@dataclass
class DecoderOutput:
    """``decode`` and ``forward`` return this: ``sample`` is the image (B, C_out, H, W)."""

    sample: Tensor


def _refuse_blocks(key: str, names, supported: str, n: int) -> None:
    names = list(names)
    if len(names) != n:
        raise ValueError(f"{key} has {len(names)} entries but block_out_channels has {n}; they must match")
    bad = [b for b in names if b != supported]
    if bad:
        raise ValueError(f"{key}: block types {bad} are not supported by npdiff's AutoencoderKL; "
                         f"only {supported!r} is")


class AutoencoderKL(ModelMixin):
    """Diffusers' ``AutoencoderKL``; see the module docstring for the data flow.

    Refused by name: down/up block types other than "DownEncoderBlock2D" /
    "UpDecoderBlock2D", a ``norm_num_groups`` that does not divide every channel
    count, an unknown ``act_fn``. Tiling and slicing (memory tricks for large
    images) are not implemented.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        block_out_channels = tuple(int(c) for c in block_out_channels)
        n = len(block_out_channels)
        if n < 1:
            raise ValueError("block_out_channels must have at least one entry")
        _refuse_blocks("down_block_types", down_block_types, "DownEncoderBlock2D", n)
        _refuse_blocks("up_block_types", up_block_types, "UpDecoderBlock2D", n)
        if not isinstance(norm_num_groups, int) or norm_num_groups < 1:
            raise ValueError(f"norm_num_groups must be a positive int, got {norm_num_groups!r}")
        bad = [c for c in block_out_channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block_out_channels entry; "
                             f"{bad} in {list(block_out_channels)} are not divisible")
        for key, value in (("in_channels", in_channels), ("out_channels", out_channels),
                           ("latent_channels", latent_channels), ("layers_per_block", layers_per_block)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        common = dict(block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                      norm_num_groups=norm_num_groups, act_fn=act_fn, mid_block_add_attention=mid_block_add_attention)
        self.encoder = Encoder(in_channels=in_channels, out_channels=latent_channels,
                               down_block_types=down_block_types, double_z=True, **common)
        self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels, up_block_types=up_block_types,
                               **common)
        c = latent_channels
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, kernel_size=1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, kernel_size=1) if use_post_quant_conv else None

    @property
    def downsampling_factor(self) -> int:
        """f: the image side over the latent side (2^(levels − 1))."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def dtype(self):
        return np.dtype(self.encoder.conv_in.weight.dtype)

    def _as_input(self, x, channels: int, what: str, multiple: int = 1) -> Tensor:
        x = x if isinstance(x, Tensor) else Tensor(np.asarray(x, dtype=self.dtype))
        if x.ndim != 4 or x.shape[1] != channels:
            raise ValueError(f"{what} must have shape (B, {channels}, H, W), got {x.shape}")
        if x.shape[2] % multiple or x.shape[3] % multiple:
            raise ValueError(f"{what} height and width must be multiples of the downsampling factor {multiple}, "
                             f"got shape {x.shape}")
        return x

    def encode(self, x, return_dict: bool = True):
        """Images (B, in_channels, H, W) -> ``AutoencoderKLOutput(latent_dist=q(z|x))``."""
        x = self._as_input(x, self.config.in_channels, "encode: x", self.downsampling_factor)
        h = self.encoder(x)  # (B, 2c, H/f, W/f)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        posterior = DiagonalGaussianDistribution(h)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z, return_dict: bool = True):
        """Latents (B, latent_channels, h, w) -> ``DecoderOutput(sample=image)``, image (B, out_channels, f·h, f·w)."""
        z = self._as_input(z, self.config.latent_channels, "decode: z")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        out = self.decoder(z)
        return DecoderOutput(sample=out) if return_dict else (out,)

    def forward(self, sample, sample_posterior: bool = False, return_dict: bool = True,
                generator: np.random.Generator | None = None):
        """Reconstruct: decode the posterior's mode (or a sample of it, drawn from ``generator``)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)
