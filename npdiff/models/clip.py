"""CLIP pre-training (Radford et al. 2021): a text encoder and an image encoder trained so that
matching (image, caption) pairs have similar embeddings.

Letters: N pairs in a batch, D_t / D_i encoder widths, E the shared embedding width, τ the
temperature (``logit_scale`` = log(1/τ), a learned scalar, initial value log(1/0.07)).

    t_j = normalise(text_projection(text_model(caption_j).pooler_output))     (N, E), ‖t_j‖ = 1
    v_i = normalise(visual_projection(vision_model(image_i)))                 (N, E), ‖v_i‖ = 1
    S   = exp(logit_scale) · V Tᵀ          S_ij = cos(v_i, t_j) / τ           (N, N)
    L   = ½ [CE(S, diag) + CE(Sᵀ, diag)],  CE(S, diag) = −(1/N) Σ_i log softmax(S_i·)_i

Radford et al. (2021), Fig. 3: a symmetric cross-entropy over the similarity matrix — each
image must pick its caption among the N captions of the batch, and each caption its image.
The temperature is clipped so that exp(logit_scale) ≤ 100 (ibid., §2.5).

Zero-shot classification (ibid., §3.1.2): embed one prompt per class ("a red circle" …) and
give each image the class whose prompt embedding has the largest cosine similarity.

The vision side here is a small convolutional encoder (ResNet blocks of the diffusion U-Net,
global average pooling), not CLIP's ViT: the images are 32×32 shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import nn
from ..autograd import Tensor
from ..nn import functional as F
from .clip_text import CLIPTextModel
from .unet_blocks import DownBlock2D

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # 2.6592, Radford et al. 2021, §2.5
LOGIT_SCALE_MAX = math.log(100.0)


def normalize(x, eps: float = 1e-12) -> Tensor:
    """x / ‖x‖ along the last axis (the norm floored at eps against division by zero)."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    return x / ((x * x).sum(axis=-1, keepdims=True) + eps * eps).sqrt()


def contrastive_loss(image_embeds, text_embeds, logit_scale) -> Tensor:
    """CLIP's symmetric cross-entropy (see the module docstring) for N matching pairs.

    image_embeds (N, E), text_embeds (N, E) (normalised here, so any positive scaling of a
    row changes nothing); logit_scale: a scalar Tensor (learned) or number, clipped to
    log 100. Row i of each is one pair. Returns a scalar Tensor."""
    v, t = normalize(image_embeds), normalize(text_embeds)
    if v.ndim != 2 or v.shape != t.shape:
        raise ValueError(f"contrastive_loss: image_embeds {v.shape} and text_embeds {t.shape} must be the same (N, E)")
    s = logit_scale if isinstance(logit_scale, Tensor) else Tensor(np.asarray(logit_scale, dtype=v.dtype))
    logits = (v @ t.T) * s.clip(max=LOGIT_SCALE_MAX).exp()  # (N, N): S_ij, images × captions
    diag = np.arange(v.shape[0])
    image_to_text = -F.log_softmax(logits, dim=1)[diag, diag].mean()  # each image picks its caption
    text_to_image = -F.log_softmax(logits, dim=0)[diag, diag].mean()  # each caption picks its image
    return (image_to_text + text_to_image) * 0.5


class CLIPImageEncoder(nn.Module):
    """A small convolutional image encoder: conv_in, one ``DownBlock2D`` (ResNet blocks, no
    time embedding) per width, halving the resolution between them, GroupNorm, SiLU, global
    average pooling. (B, C, H, W) -> (B, block_out_channels[-1])."""

    def __init__(self, in_channels: int = 3, block_out_channels: tuple[int, ...] = (32, 64, 128),
                 layers_per_block: int = 1, norm_num_groups: int = 8):
        super().__init__()
        chans = tuple(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, chans[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList([
            DownBlock2D(chans[max(k - 1, 0)], chans[k], temb_channels=None, num_layers=layers_per_block,
                        resnet_groups=norm_num_groups, add_downsample=k < len(chans) - 1)
            for k in range(len(chans))])
        self.norm_out = nn.GroupNorm(norm_num_groups, chans[-1], eps=1e-6)
        self.act = nn.SiLU()
        self.out_channels = chans[-1]

    def forward(self, pixel_values):
        h = self.conv_in(pixel_values if isinstance(pixel_values, Tensor) else Tensor(pixel_values))
        for block in self.down_blocks:
            h, _ = block(h)
        h = self.act(self.norm_out(h))  # (B, C, h, w)
        return h.mean(axis=(2, 3))  # (B, C): global average pool


@dataclass
class CLIPOutput:
    """transformers' names: ``logits_per_image`` (N_img, N_txt) = ``logits_per_text``ᵀ,
    the normalised ``image_embeds`` / ``text_embeds``, and ``loss`` when asked for."""

    logits_per_image: Tensor
    logits_per_text: Tensor
    image_embeds: Tensor
    text_embeds: Tensor
    loss: Tensor | None = None


class CLIPModel(nn.Module):
    """Text encoder + image encoder + projections + temperature, with transformers' CLIPModel
    attribute names (``text_model``, ``vision_model``, ``text_projection``,
    ``visual_projection``, ``logit_scale``)."""

    def __init__(self, text_config: dict, projection_dim: int = 64, vision_channels: tuple[int, ...] = (32, 64, 128),
                 in_channels: int = 3, logit_scale_init_value: float = LOGIT_SCALE_INIT):
        super().__init__()
        self.text_model = CLIPTextModel(**text_config)
        self.vision_model = CLIPImageEncoder(in_channels, vision_channels)
        self.visual_projection = nn.Linear(self.vision_model.out_channels, projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_model.config.hidden_size, projection_dim, bias=False)
        self.logit_scale = nn.Parameter(np.array(logit_scale_init_value, dtype=np.float32))

    def get_text_features(self, input_ids, attention_mask=None) -> Tensor:
        return self.text_projection(self.text_model(input_ids, attention_mask=attention_mask).pooler_output)

    def get_image_features(self, pixel_values) -> Tensor:
        return self.visual_projection(self.vision_model(pixel_values))

    def forward(self, input_ids, pixel_values, attention_mask=None, return_loss: bool = False) -> CLIPOutput:
        v = normalize(self.get_image_features(pixel_values))  # (N_img, E)
        t = normalize(self.get_text_features(input_ids, attention_mask))  # (N_txt, E)
        logits_per_image = (v @ t.T) * self.logit_scale.clip(max=LOGIT_SCALE_MAX).exp()  # (N_img, N_txt)
        loss = contrastive_loss(v, t, self.logit_scale) if return_loss else None
        return CLIPOutput(logits_per_image, logits_per_image.T, v, t, loss)


def zero_shot_classify(image_embeds, class_text_embeds) -> np.ndarray:
    """Index of the class prompt with the largest cosine similarity, per image.

    image_embeds (N, E), class_text_embeds (K, E) -> (N,) int64."""
    v = normalize(image_embeds).numpy()
    t = normalize(class_text_embeds).numpy()
    return np.argmax(v @ t.T, axis=1).astype(np.int64)  # (N, K) similarities -> best class
