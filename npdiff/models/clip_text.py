"""``CLIPTextModel``: CLIP's text encoder (Radford et al. 2021), built as transformers builds it.

Same configuration keys (transformers' ``CLIPTextConfig``), defaults, submodule names and
state-dict keys as transformers' ``CLIPTextModel`` (5.24), so the ``text_encoder/`` folder
of a Stable Diffusion pipeline loads unchanged and computes the same function.

Letters: B batch, L tokens, D = hidden_size, n heads, d = D / n, F = intermediate_size.

    h_0 = token_embedding(ids) + position_embedding(0 … L−1)                 (B, L, D)
    per layer ℓ (pre-norm transformer, GPT-2 style; Radford et al. 2021, §2.4):
        h = h + out_proj(MHA(layer_norm1(h), causal mask [+ padding mask]))
        h = h + fc2(act(fc1(layer_norm2(h))))                               act: quick_gelu
                                                                              x·σ(1.702x) or gelu
    last_hidden_state = final_layer_norm(h_N)                                (B, L, D)
    pooler_output     = last_hidden_state[b, eos position of sequence b]     (B, D)

The causal mask lets token i attend to tokens j ≤ i only (the text encoder of CLIP is a
language-model-shaped transformer); an ``attention_mask`` (B, L), 1 = real token, in
addition hides padding keys. The EOS position follows transformers' rule: with the
legacy ``eos_token_id == 2`` (configs written before transformers PR #24773) it is the
position of the largest token id (CLIP's EOS has the largest id of its vocabulary);
otherwise it is the first position whose id equals ``eos_token_id`` (position 0 when
there is none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend, nn
from ..autograd import Tensor
from ..nn import functional as F
from .modeling_utils import ModelMixin, register_to_config

TRANSFORMERS_LAYOUT_VERSION = "5.24.0"
MODEL_TYPE = "clip_text_model"
# keys every transformers config.json carries (PreTrainedConfig's bookkeeping): not ours to build
_PRETRAINED_CONFIG_KEYS = frozenset({
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "output_hidden_states",
    "output_attentions", "return_dict", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
    "problem_type", "tie_word_embeddings", "use_cache", "name_or_path"})


class QuickGELU(nn.Module):
    """x·σ(1.702·x), the sigmoid approximation of GELU that OpenAI's CLIP was trained with
    (Hendrycks & Gimpel 2016, §2); transformers' "quick_gelu"."""

    def forward(self, x):
        return x * F.sigmoid(x * 1.702)


def get_clip_activation(name: str) -> nn.Module:
    """transformers' ``hidden_act`` names that CLIP checkpoints use."""
    table = {"quick_gelu": QuickGELU, "gelu": nn.GELU,
             "gelu_new": lambda: nn.GELU(approximate="tanh"), "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh")}
    if name not in table:
        raise ValueError(f"hidden_act={name!r} is not supported by npdiff's CLIPTextModel; supported: {sorted(table)}")
    return table[name]()


@dataclass
class BaseModelOutputWithPooling:
    """transformers' output type: ``last_hidden_state`` (B, L, D), ``pooler_output`` (B, D),
    ``hidden_states``: the embeddings and every layer's output (N + 1 Tensors, before the
    final layer norm) when asked for, else None."""

    last_hidden_state: Tensor
    pooler_output: Tensor
    hidden_states: tuple | None = None


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, max_position_embeddings: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_position_embeddings, hidden_size)

    def forward(self, input_ids):
        L = input_ids.shape[-1]
        return self.token_embedding(input_ids) + self.position_embedding(np.arange(L))  # (B, L, D)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with transformers' key names (k_proj, v_proj, q_proj, out_proj)."""

    def __init__(self, hidden_size: int, num_attention_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_attention_heads, hidden_size // num_attention_heads
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states, attention_mask):
        """(B, L, D), a bool mask broadcastable to (B, n, L, L) (True = attend) -> (B, L, D)."""
        B, L, D = hidden_states.shape
        n, d = self.num_heads, self.head_dim
        q = self.q_proj(hidden_states).reshape(B, L, n, d).transpose(1, 2)  # (B, n, L, d)
        k = self.k_proj(hidden_states).reshape(B, L, n, d).transpose(1, 2)  # (B, n, L, d)
        v = self.v_proj(hidden_states).reshape(B, L, n, d).transpose(1, 2)  # (B, n, L, d)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)  # (B, n, L, d), scale 1/√d
        return self.out_proj(a.transpose(1, 2).reshape(B, L, D))  # (B, L, D): heads side by side


class CLIPMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str):
        super().__init__()
        self.activation_fn = get_clip_activation(hidden_act)
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states):
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class CLIPEncoderLayer(nn.Module):
    def __init__(self, hidden_size: int, num_attention_heads: int, intermediate_size: int, hidden_act: str,
                 layer_norm_eps: float):
        super().__init__()
        self.self_attn = CLIPAttention(hidden_size, num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = CLIPMLP(hidden_size, intermediate_size, hidden_act)
        self.layer_norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, hidden_states, attention_mask):
        h = hidden_states + self.self_attn(self.layer_norm1(hidden_states), attention_mask)
        return h + self.mlp(self.layer_norm2(h))


class CLIPEncoder(nn.Module):
    def __init__(self, num_hidden_layers: int, **layer):
        super().__init__()
        self.layers = nn.ModuleList([CLIPEncoderLayer(**layer) for _ in range(num_hidden_layers)])


class CLIPTextModel(ModelMixin):
    """transformers' ``CLIPTextModel``; see the module docstring for the maths.

    ``CLIPTextModel(**config)`` takes ``CLIPTextConfig``'s keys; ``from_pretrained(folder)``
    reads ``config.json`` + ``model.safetensors`` (keys with or without the ``text_model.``
    prefix that transformers 4 wrote; a stale ``embeddings.position_ids`` buffer is
    dropped); ``save_pretrained`` writes the layout transformers 5.24 writes and loads.
    ``projection_dim``, ``initializer_range``, ``initializer_factor``, ``pad_token_id`` and
    ``bos_token_id`` are kept in the config and do not change this model (as in
    transformers). ``attention_dropout`` must be 0 (attention-weight dropout is not built).

    ``model(input_ids, attention_mask=None, output_hidden_states=False)`` ->
    ``BaseModelOutputWithPooling``; ``input_ids`` (B, L) integers (numpy), ``attention_mask``
    (B, L) with 1 / True for real tokens.
    """

    weights_name = "model.safetensors"
    _ignored_config_keys = _PRETRAINED_CONFIG_KEYS

    @register_to_config
    def __init__(self, vocab_size: int = 49408, hidden_size: int = 512, intermediate_size: int = 2048,
                 projection_dim: int | None = 512, num_hidden_layers: int = 12, num_attention_heads: int = 8,
                 max_position_embeddings: int = 77, hidden_act: str = "quick_gelu", layer_norm_eps: float = 1e-5,
                 attention_dropout: float = 0.0, initializer_range: float = 0.02, initializer_factor: float = 1.0,
                 pad_token_id: int | None = 1, bos_token_id: int | None = 49406, eos_token_id: int | None = 49407):
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size={hidden_size} must be a multiple of num_attention_heads={num_attention_heads}")
        if attention_dropout:
            raise ValueError(f"attention_dropout={attention_dropout!r} is not supported by npdiff's CLIPTextModel; "
                             "supported: [0.0]")
        if not isinstance(eos_token_id, int):
            raise ValueError(f"eos_token_id must be one int (the EOS token the pooling looks for), got {eos_token_id!r}")
        get_clip_activation(hidden_act)  # refuse an unknown activation before building anything
        self.eos_token_id = eos_token_id
        self.embeddings = CLIPTextEmbeddings(vocab_size, hidden_size, max_position_embeddings)
        self.encoder = CLIPEncoder(num_hidden_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                                   intermediate_size=intermediate_size, hidden_act=hidden_act,
                                   layer_norm_eps=layer_norm_eps)
        self.final_layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    # -- transformers' folder layout ---------------------------------------------
    @classmethod
    def _config_to_kwargs(cls, config: dict, source: str) -> dict:
        model_type = config.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            hint = " (a full CLIP config: pass its 'text_config')" if model_type == "clip" else ""
            raise ValueError(f"{source}: model_type {model_type!r} is not {MODEL_TYPE!r}{hint}")
        return super()._config_to_kwargs({k: v for k, v in config.items() if k != "_class_name"}, source)

    def _fix_state_dict_keys_on_load(self, state_dict: dict) -> dict:
        """Strip transformers 4's ``text_model.`` prefix; drop the ``position_ids`` buffer that
        old checkpoints stored (it is always arange(max_position_embeddings))."""
        out = {}
        for k, v in state_dict.items():
            k = k[len("text_model."):] if k.startswith("text_model.") else k
            if k != "embeddings.position_ids":
                out[k] = v
        return out

    def _config_to_save(self) -> dict:
        return {"architectures": [type(self).__name__], "model_type": MODEL_TYPE, "dtype": str(self.dtype),
                "transformers_version": TRANSFORMERS_LAYOUT_VERSION, **self.config}

    @property
    def dtype(self):
        return np.dtype(self.final_layer_norm.weight.dtype)

    # -- forward -----------------------------------------------------------------
    def _masks(self, input_ids, attention_mask):
        """Causal (L, L) mask, and the padding mask (B, 1, 1, L) when given: bool, True = attend."""
        B, L = input_ids.shape
        mask = np.tril(np.ones((L, L), dtype=bool))  # (L, L): query i sees keys j <= i
        if attention_mask is not None:
            pad = np.asarray(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
            if pad.shape != (B, L):
                raise ValueError(f"attention_mask must have the shape of input_ids {(B, L)}, got {pad.shape}")
            mask = mask[None, None] & (pad != 0)[:, None, None, :]  # (B, 1, L, L)
        return mask

    def _eos_positions(self, input_ids):
        if self.eos_token_id == 2:  # legacy configs: the EOS token has the largest id
            return input_ids.argmax(axis=-1)
        return (input_ids == self.eos_token_id).argmax(axis=-1)  # first EOS (0 when none)

    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
        ids = np.asarray(input_ids.data if isinstance(input_ids, Tensor) else input_ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"input_ids must be a (B, L) integer array, got shape {ids.shape} dtype {ids.dtype}")
        L, Lmax = ids.shape[1], self.config.max_position_embeddings
        if L > Lmax:
            raise ValueError(f"input_ids has {L} tokens, more than max_position_embeddings={Lmax}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size}), got "
                             f"[{ids.min()}, {ids.max()}]")
        mask = self._masks(ids, attention_mask)
        h = self.embeddings(ids)  # (B, L, D)
        states = (h,)
        for layer in self.encoder.layers:
            h = layer(h, mask)
            states += (h,)
        last = self.final_layer_norm(h)  # (B, L, D)
        # the EOS rows, picked by host indices sent where the states are (one copy on a GPU)
        rows = backend.to_device(np.stack([np.arange(ids.shape[0]), self._eos_positions(ids)]), last.device)
        pooled = last[rows[0], rows[1]]  # (B, D)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=states if output_hidden_states else None)
