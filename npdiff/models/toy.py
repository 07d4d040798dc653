"""A small time-conditioned MLP denoiser for 2-D toy data (two moons, swiss roll, ...).

Letters: B batch, D data dimension (2), H hidden width, E = H (embedding width).

    e   = time_mlp(sinusoid(t)) [+ class_embedding(y)]       (B, H)
    h   = input_proj(x)                                          (B, H)
    h  ← h + block_k(silu(h + e))      for k = 1 … num_blocks      (B, H)  residual MLP blocks
    out = output_proj(silu(h))                                   (B, D)

The timestep enters as the Transformer sinusoidal code followed by a two-layer MLP,
as in the DDPM U-Net (Ho et al. 2020, Appendix B); it is added before every block so
that each layer knows the noise level. The call signature is the U-Net's,
``model(x, t, class_labels=None) -> Tensor``, so the trainer and the sampling loop treat
both alike; the output has the shape of x and means ε, x₀ or v depending on how the
model was trained.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from ..nn import functional as F
from ..autograd import Tensor
from ..backend import get_array_module
from .embeddings import get_timestep_embedding
from .modeling_utils import ModelMixin, register_to_config


class ToyMLPDenoiser(ModelMixin):
    """Residual MLP ε/x₀/v-predictor for (B, D) points, conditioned on t (and optionally a class).

    ``num_class_embeds`` adds a learned class embedding (include one extra index for the
    "null" class when training with label dropout for classifier-free guidance).
    """

    @register_to_config
    def __init__(self, in_dim: int = 2, hidden_dim: int = 128, num_blocks: int = 3, time_embed_dim: int = 64,
                 num_class_embeds: int | None = None):
        super().__init__()
        if in_dim < 1 or hidden_dim < 1 or num_blocks < 0 or time_embed_dim < 2:
            raise ValueError(f"ToyMLPDenoiser: bad sizes in_dim={in_dim}, hidden_dim={hidden_dim}, "
                             f"num_blocks={num_blocks}, time_embed_dim={time_embed_dim}")
        self.time_linear_1 = nn.Linear(time_embed_dim, hidden_dim)  # the MLP on the sinusoidal code
        self.time_linear_2 = nn.Linear(hidden_dim, hidden_dim)
        self.class_embedding = nn.Embedding(num_class_embeds, hidden_dim) if num_class_embeds else None
        self.input_proj = nn.Linear(in_dim, hidden_dim)
        self.blocks = nn.ModuleList([nn.Linear(hidden_dim, hidden_dim) for _ in range(num_blocks)])
        self.output_proj = nn.Linear(hidden_dim, in_dim)

    def forward(self, sample, timestep, class_labels=None):
        x = sample if isinstance(sample, Tensor) else Tensor(np.asarray(sample, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.config.in_dim:
            raise ValueError(f"ToyMLPDenoiser expects samples of shape (B, {self.config.in_dim}), got {x.shape}")
        b = x.shape[0]
        xp = get_array_module(x.data)  # the time code is made where the sample is (a host t is copied over)
        t = xp.asarray(getattr(timestep, "data", timestep), dtype=np.float32)
        t = xp.broadcast_to(t, (b,)) if t.ndim == 0 else t  # scalar t -> (B,)
        if t.shape != (b,):
            raise ValueError(f"timestep must be a scalar or shape ({b},), got {t.shape}")
        code = Tensor(get_timestep_embedding(t, self.config.time_embed_dim))  # (B, time_embed_dim)
        emb = self.time_linear_2(F.silu(self.time_linear_1(code)))  # (B, H)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels must be given to a class-conditional ToyMLPDenoiser")
            emb = emb + self.class_embedding(np.asarray(getattr(class_labels, "data", class_labels), dtype=np.int64))
        h = self.input_proj(x)  # (B, H)
        for block in self.blocks:
            h = h + block(F.silu(h + emb))
        return self.output_proj(F.silu(h))  # (B, D)
