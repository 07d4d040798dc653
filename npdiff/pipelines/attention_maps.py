"""Which pixels listen to which word: the cross-attention maps of a text-conditioned U-Net.

Every cross-attention layer (``BasicTransformerBlock.attn2``) of a ``UNet2DConditionModel``
computes, per head, P = softmax(Q Kᵀ / √d) with Q from the L = h·w image tokens and K from
the Lk text tokens (Rombach et al. 2022, eq. 3). Column j of P, reshaped to h × w, says how
much each position of the image reads token j (Hertz et al. 2022, "Prompt-to-Prompt", §3.1).
``CrossAttentionRecorder`` wraps each attn2 for the duration of a ``with`` block and records
P averaged over heads (conditional half of a guided batch only); ``word_maps`` averages the
records over layers (each resized to the largest map) and denoising steps.
"""

from __future__ import annotations

import numpy as np

from .. import nn


class _Recording(nn.Module):
    """An ``Attention`` that also records its attention probabilities (computed again, no tape)."""

    def __init__(self, inner, store: list, conditional_half: bool):
        super().__init__()
        self.inner, self.store, self.conditional_half = inner, store, conditional_half

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None):
        out = self.inner(hidden_states, encoder_hidden_states, attention_mask)
        if encoder_hidden_states is not None:
            self.store.append(self.probabilities(np.asarray(hidden_states.data),
                                                 np.asarray(getattr(encoder_hidden_states, "data", encoder_hidden_states))))
        return out

    def probabilities(self, x: np.ndarray, c: np.ndarray) -> np.ndarray:
        """softmax(Q Kᵀ/√d) averaged over heads: x (B, L, C), c (B, Lk, D) -> (B', L, Lk)."""
        a = self.inner
        if self.conditional_half and len(x) % 2 == 0 and len(x) > 1:
            x, c = x[len(x) // 2:], c[len(c) // 2:]  # [∅ | text]: the text half (StableDiffusionPipeline's order)

        def proj(lin, h):
            y = h @ np.asarray(lin.weight.data).T
            return y if lin.bias is None else y + np.asarray(lin.bias.data)

        b, n, d = len(x), a.heads, a.dim_head
        q = proj(a.to_q, x).reshape(b, -1, n, d).transpose(0, 2, 1, 3)  # (B, n, L, d)
        k = proj(a.to_k, c).reshape(b, -1, n, d).transpose(0, 2, 1, 3)  # (B, n, Lk, d)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)  # (B, n, L, Lk)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return p.mean(axis=1)  # (B, L, Lk)


class CrossAttentionRecorder:
    """``with CrossAttentionRecorder(unet) as maps:`` … run the pipeline … ``maps`` is the list of
    (B, L, Lk) head-averaged cross-attention probabilities, one per layer call, in call order."""

    def __init__(self, unet, guided: bool = True):
        from ..models.attention import BasicTransformerBlock

        self.blocks = [m for _, m in unet.named_modules() if isinstance(m, BasicTransformerBlock) and m.attn2 is not None]
        if not self.blocks:
            raise ValueError("the model has no cross-attention layers (expected a UNet2DConditionModel with "
                             "CrossAttn blocks)")
        self.guided, self.maps = guided, []

    def __enter__(self) -> list:
        for block in self.blocks:
            block.attn2 = _Recording(block.attn2, self.maps, self.guided)
        return self.maps

    def __exit__(self, *exc) -> None:
        for block in self.blocks:
            block.attn2 = block.attn2.inner


def word_maps(maps: list, size: int | None = None) -> np.ndarray:
    """Average recorded maps (B, h·w, Lk) over calls, each resized (nearest) to ``size`` × ``size``
    (default: the largest map's side): (B, Lk, size, size), rows summing to about 1 over tokens."""
    sides = [int(round(np.sqrt(m.shape[1]))) for m in maps]
    size = size or max(sides)
    total = 0.0
    for m, side in zip(maps, sides):
        b, _, lk = m.shape
        grid = m.transpose(0, 2, 1).reshape(b, lk, side, side)  # (B, Lk, h, w)
        rep = size // side
        total = total + np.repeat(np.repeat(grid, rep, axis=2), rep, axis=3)  # (B, Lk, size, size)
    return total / len(maps)


def token_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions (with BOS at 0) of ``word``'s tokens in the tokenised prompt; ValueError if absent."""
    ids = tokenizer.encode(prompt)
    target = tokenizer.encode(word, add_special_tokens=False)
    for start in range(len(ids) - len(target) + 1):
        if ids[start:start + len(target)] == target:
            return list(range(start, start + len(target)))
    raise ValueError(f"{word!r} is not a word of the prompt {prompt!r}")
