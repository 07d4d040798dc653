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

from .. import backend, nn
from ..autograd import Tensor, cat
from ..nn import functional as F
from .clip_text import CLIPTextModel
from .modeling_utils import ModelMixin, register_to_config
from .unet_blocks import DownBlock2D

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # 2.6592, Radford et al. 2021, §2.5
LOGIT_SCALE_MAX = math.log(100.0)


def normalize(x, eps: float = 1e-12) -> Tensor:
    """x / ‖x‖ along the last axis (the norm floored at eps against division by zero)."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    return x / ((x * x).sum(axis=-1, keepdims=True) + eps * eps).sqrt()


def contrastive_loss(image_embeds, text_embeds, logit_scale, negative_text_embeds=None) -> Tensor:
    """CLIP's symmetric cross-entropy (see the module docstring) for N matching pairs.

    image_embeds (N, E), text_embeds (N, E) (normalised here, so any positive scaling of a
    row changes nothing); logit_scale: a scalar Tensor (learned) or number, clipped to
    log 100. Row i of each is one pair. Returns a scalar Tensor.

    ``negative_text_embeds`` (M, E): extra captions that match no image of the batch (hard
    negatives, NegCLIP of Yuksekgonul et al. 2023: a caption with one attribute changed).
    They join the candidates each image chooses among, S = V [T; T⁻]ᵀ (N, N + M); the
    caption → image direction stays over the N true captions."""
    v, t = normalize(image_embeds), normalize(text_embeds)
    if v.ndim != 2 or v.shape != t.shape:
        raise ValueError(f"contrastive_loss: image_embeds {v.shape} and text_embeds {t.shape} must be the same (N, E)")
    s = logit_scale if isinstance(logit_scale, Tensor) else \
        Tensor(backend.to_device(np.asarray(logit_scale, dtype=v.dtype), v.device))
    scale = s.clip(max=LOGIT_SCALE_MAX).exp()
    logits = (v @ t.T) * scale  # (N, N): S_ij, images × captions
    diag = backend.to_device(np.arange(v.shape[0]), v.device)  # the pairs' indices, where the logits are
    if negative_text_embeds is None:
        image_logits = logits
    else:
        t_neg = normalize(negative_text_embeds)
        if t_neg.ndim != 2 or t_neg.shape[1] != v.shape[1]:
            raise ValueError(f"contrastive_loss: negative_text_embeds {t_neg.shape} must be (M, {v.shape[1]})")
        image_logits = cat([logits, (v @ t_neg.T) * scale], dim=1)  # (N, N + M)
    image_to_text = -F.log_softmax(image_logits, dim=1)[diag, diag].mean()  # each image picks its caption
    text_to_image = -F.log_softmax(logits, dim=0)[diag, diag].mean()  # each caption picks its image
    return (image_to_text + text_to_image) * 0.5


class AttentionPool2d(nn.Module):
    """CLIP's attention pooling (Radford et al. 2021, §2.4, the ModifiedResNet's last layer):
    the mean token queries the h·w tokens of the feature map, all with learned positional
    embeddings, through one multi-head attention. Unlike a global average it can tell *where*
    a feature is, which the captions' positions (and "which object is which") need.

        x = [mean_hw(h); h_1 … h_hw] + P          (B, 1 + hw, C)
        out = W_c · MHA(q = x_0, k = v = x)        (B, C_out)
    """

    def __init__(self, spatial_size: int, channels: int, num_heads: int, out_channels: int | None = None):
        super().__init__()
        rng = np.random.default_rng(0)
        init = rng.standard_normal((spatial_size * spatial_size + 1, channels)) / math.sqrt(channels)
        self.positional_embedding = nn.Parameter(init.astype(np.float32))
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(channels, channels) for _ in range(3))
        self.c_proj = nn.Linear(channels, out_channels or channels)
        self.num_heads = num_heads

    def forward(self, h):
        b, c, hh, ww = h.shape
        x = h.reshape(b, c, hh * ww).transpose(1, 2)  # (B, hw, C)
        x = cat([x.mean(axis=1, keepdims=True), x], dim=1) + self.positional_embedding  # (B, 1 + hw, C)
        n, d = self.num_heads, c // self.num_heads
        q = self.q_proj(x[:, :1]).reshape(b, 1, n, d).transpose(1, 2)  # (B, n, 1, d)
        k = self.k_proj(x).reshape(b, 1 + hh * ww, n, d).transpose(1, 2)  # (B, n, 1 + hw, d)
        v = self.v_proj(x).reshape(b, 1 + hh * ww, n, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, n, 1, d)
        return self.c_proj(out.transpose(1, 2).reshape(b, c))  # (B, C_out)


class CLIPImageEncoder(nn.Module):
    """A small convolutional image encoder: conv_in, one ``DownBlock2D`` (ResNet blocks, no
    time embedding) per width, halving the resolution between them, GroupNorm, SiLU, then
    global average pooling (``pooling="mean"``) or CLIP's ``AttentionPool2d``
    (``pooling="attention"``, needs ``image_size``). (B, C, H, W) -> (B, block_out_channels[-1])."""

    def __init__(self, in_channels: int = 3, block_out_channels: tuple[int, ...] = (32, 64, 128),
                 layers_per_block: int = 1, norm_num_groups: int = 8, pooling: str = "mean",
                 image_size: int | None = None):
        super().__init__()
        chans = tuple(block_out_channels)
        if pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got {pooling!r}")
        factor = 2 ** (len(chans) - 1)
        if pooling == "attention" and (image_size is None or image_size % factor):
            raise ValueError(f"attention pooling needs image_size divisible by {factor}, got {image_size!r}")
        self.conv_in = nn.Conv2d(in_channels, chans[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList([
            DownBlock2D(chans[max(k - 1, 0)], chans[k], temb_channels=None, num_layers=layers_per_block,
                        resnet_groups=norm_num_groups, add_downsample=k < len(chans) - 1)
            for k in range(len(chans))])
        self.norm_out = nn.GroupNorm(norm_num_groups, chans[-1], eps=1e-6)
        self.act = nn.SiLU()
        self.attnpool = (AttentionPool2d(image_size // factor, chans[-1], max(1, chans[-1] // 32))
                         if pooling == "attention" else None)
        self.out_channels = chans[-1]

    def forward(self, pixel_values):
        h = self.conv_in(pixel_values if isinstance(pixel_values, Tensor) else Tensor(pixel_values))
        for block in self.down_blocks:
            h, _ = block(h)
        h = self.act(self.norm_out(h))  # (B, C, h, w)
        if self.attnpool is not None:
            return self.attnpool(h)
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


class CLIPModel(ModelMixin):
    """Text encoder + image encoder + projections + temperature, with transformers' CLIPModel
    attribute names (``text_model``, ``vision_model``, ``text_projection``,
    ``visual_projection``, ``logit_scale``). A ``ModelMixin``: ``from_config``,
    ``save_pretrained`` / ``from_pretrained`` (npdiff's own layout; the text half alone is
    transformers' ``CLIPTextModel``, ``model.text_model.save_pretrained``)."""

    @register_to_config
    def __init__(self, text_config: dict, projection_dim: int = 64, vision_channels: tuple[int, ...] = (32, 64, 128),
                 in_channels: int = 3, logit_scale_init_value: float = LOGIT_SCALE_INIT,
                 vision_layers_per_block: int = 1, vision_norm_num_groups: int = 8, vision_pooling: str = "mean",
                 image_size: int | None = None):
        super().__init__()
        self.text_model = CLIPTextModel(**text_config)
        self.vision_model = CLIPImageEncoder(in_channels, vision_channels, vision_layers_per_block,
                                             vision_norm_num_groups, vision_pooling, image_size)
        self.visual_projection = nn.Linear(self.vision_model.out_channels, projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_model.config.hidden_size, projection_dim, bias=False)
        self.logit_scale = nn.Parameter(np.array(logit_scale_init_value, dtype=np.float32))

    def get_text_features(self, input_ids, attention_mask=None) -> Tensor:
        return self.text_projection(self.text_model(input_ids, attention_mask=attention_mask).pooler_output)

    def get_image_features(self, pixel_values) -> Tensor:
        return self.visual_projection(self.vision_model(pixel_values))

    def forward(self, input_ids, pixel_values, attention_mask=None, return_loss: bool = False,
                negative_input_ids=None) -> CLIPOutput:
        """``negative_input_ids`` (M, L): hard-negative captions for the loss (see ``contrastive_loss``),
        encoded in the same text batch as ``input_ids``."""
        n_txt = len(input_ids)
        ids = input_ids if negative_input_ids is None else np.concatenate([input_ids, negative_input_ids])
        mask = attention_mask
        if negative_input_ids is not None and attention_mask is not None:
            raise ValueError("negative_input_ids with an attention_mask is not supported: pass EOS-padded ids")
        v = normalize(self.get_image_features(pixel_values))  # (N_img, E)
        t_all = normalize(self.get_text_features(ids, mask))  # (N_txt + M, E)
        t = t_all[:n_txt] if negative_input_ids is not None else t_all
        logits_per_image = (v @ t.T) * self.logit_scale.clip(max=LOGIT_SCALE_MAX).exp()  # (N_img, N_txt)
        negatives = t_all[n_txt:] if negative_input_ids is not None else None
        loss = contrastive_loss(v, t, self.logit_scale, negatives) if return_loss else None
        return CLIPOutput(logits_per_image, logits_per_image.T, v, t, loss)


def zero_shot_classify(image_embeds, class_text_embeds) -> np.ndarray:
    """Index of the class prompt with the largest cosine similarity, per image.

    image_embeds (N, E), class_text_embeds (K, E) -> (N,) int64."""
    v = normalize(image_embeds).numpy()
    t = normalize(class_text_embeds).numpy()
    return np.argmax(v @ t.T, axis=1).astype(np.int64)  # (N, K) similarities -> best class
