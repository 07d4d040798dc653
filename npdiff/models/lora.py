"""LoRA: low-rank adapters on a model's linear layers (Hu et al. 2021), with peft's and diffusers' names.

A linear layer y = W x + b (W: out × in) gets two small matrices, A (r × in) and
B (out × r), and computes

    y = W x + b + (α / r) · B (A x)                   (Hu et al. 2021, eq. 3; α / r is peft's ``scaling``)

W and b stay frozen; only A and B train. B starts at zero, so the adapted model is
exactly the base model at step 0; A starts random (torch's Linear init, as peft's
default ``init_lora_weights=True``), so ∂L/∂B = (α/r) · g (A x)ᵀ ≠ 0 and training moves B.
A rank-r update of an out × in layer holds r · (in + out) numbers instead of in · out.

    add_lora(model, rank, alpha=None, target_modules=...)   wrap every matching nn.Linear, freeze the rest
    merge_lora(model)                                       W ← W + (α/r) B A; plain Linears again
    remove_lora(model)                                      drop the adapters unmerged
    set_lora_scale(model, s)                                y = W x + b + s (α/r) B A x (diffusers' "scale")
    lora_state_dict(model)                                  {"<path>.lora_A.weight": A, "<path>.lora_B.weight": B}
    load_lora_state_dict(model, sd)                         the other way (adds the adapters if needed)
    save_lora_weights(file, unet=..., text_encoder=...)     one safetensors file, diffusers' SD layout
    load_lora_weights(file, unet=..., text_encoder=...)
    add_trainable_tokens(model, token_indices)              learn some rows of the token embedding only
                                                            (peft's ``trainable_token_indices``)

Key names are peft's (``get_peft_model_state_dict``) and diffusers' (``save_lora_adapter``):
``<module path>.lora_A.weight`` / ``.lora_B.weight``. A pipeline file (diffusers'
``save_lora_weights``, ``pytorch_lora_weights.safetensors``) prefixes them with ``unet.`` /
``text_encoder.`` and stores the adapter configuration (``r``, ``lora_alpha``,
``target_modules``, each prefixed the same way) as JSON under the safetensors metadata key
``lora_adapter_metadata``, which is what diffusers reads back to build peft's ``LoraConfig``.

A target name matches a linear layer whose dotted path equals it or ends with "." + it
(peft's rule), so "to_q" adapts every attention's query projection and "to_out.0" its
output projection; the CLIP text encoder's projections are "q_proj", "k_proj", "v_proj",
"out_proj".

Trainable tokens (peft's ``TrainableTokensLayer``; textual inversion, Gal et al. 2023, on existing
vocabulary rows): an ``nn.Embedding`` whose rows t ∈ T are replaced by learned vectors v_t,

    E'[t] = E[t] + s · (v_t − E[t])   for t ∈ T,      E'[t] = E[t] otherwise        (v_t starts at E[t])

so a prompt none of whose token ids is in T is encoded exactly as by the base, bit for bit: a
new word whose pieces no old caption contains gets a meaning without touching any old prompt.
The learned rows are stored as peft stores them, ``<path>.token_adapter.trainable_tokens_delta``
(k, D) holding the new rows themselves (peft's "delta" is the new value, not a difference), and
the ids in the file's metadata (``trainable_token_indices``: {path: [ids]}).
"""

from __future__ import annotations

import json
import os

import numpy as np

from .. import backend
from .. import io as nd_io
from .. import nn
from ..nn import functional as F

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
_PARTS = (".lora_A.weight", ".lora_B.weight")
TOKENS_KEY = ".token_adapter.trainable_tokens_delta"  # peft's key of trainable token rows


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` plus a rank-r adapter: y = W x + b + s · (α/r) · B (A x).

    Holds the base layer's own ``weight`` / ``bias`` Parameters (same objects, same keys),
    and the submodules ``lora_A`` (in → r, no bias) and ``lora_B`` (r → out, no bias, zeros)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        if base.bias is None:
            self.bias = None
        else:
            self.bias = base.bias
        dtype = base.weight.dtype
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, dtype=dtype)  # kaiming-uniform(√5), as peft
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, dtype=dtype)
        self.lora_B.weight.data[...] = 0
        self.rank, self.alpha, self.scale = int(rank), float(alpha), 1.0

    @property
    def scaling(self) -> float:
        """α / r (peft's ``scaling``)."""
        return self.alpha / self.rank

    def delta_weight(self):
        """(α/r) · B A, (out, in): what merging adds to W (times ``scale``)."""
        return (self.scale * self.scaling) * (self.lora_B.weight.data @ self.lora_A.weight.data)

    def forward(self, x):
        base = F.linear(x, self.weight, self.bias)
        return base + self.lora_B(self.lora_A(x)) * (self.scale * self.scaling)

    def extra_repr(self):
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


class TokenAdapter(nn.Module):
    """Holds the learned rows (peft's ``token_adapter`` submodule): ``trainable_tokens_delta`` (k, D)."""

    def __init__(self, rows: np.ndarray):
        super().__init__()
        self.trainable_tokens_delta = nn.Parameter(np.array(rows, copy=True))


class TrainableTokensEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose rows ``token_indices`` are learned: E'[t] = E[t] + s (v_t − E[t])
    for t in the indices, E[t] otherwise (module docstring). Holds the base table's own ``weight``
    Parameter (frozen, same object) and ``token_adapter.trainable_tokens_delta`` (the v_t, (k, D))."""

    def __init__(self, base: nn.Embedding, token_indices):
        nn.Module.__init__(self)
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.weight = base.weight
        ids = np.asarray(sorted({int(t) for t in token_indices}), dtype=np.int64)
        if ids.size == 0 or ids[0] < 0 or ids[-1] >= self.num_embeddings:
            raise ValueError(f"trainable tokens: indices must be a non-empty set in [0, {self.num_embeddings}), "
                             f"got {list(token_indices)!r}")
        self.token_indices = ids
        self.trainable_tokens_original = np.array(backend.to_device(self.weight.data, "cpu")[ids], copy=True)  # (k, D)
        self.token_adapter = TokenAdapter(self.weight.data[ids])
        self.scale = 1.0

    def rows(self) -> np.ndarray:
        """E'[t] for t in ``token_indices``, (k, D): the rows merging writes."""
        v = backend.to_device(self.token_adapter.trainable_tokens_delta.data, "cpu")
        if self.scale == 1.0:
            return np.array(v, copy=True)  # exactly what forward uses
        return (self.trainable_tokens_original + self.scale * (v - self.trainable_tokens_original)).astype(v.dtype)

    def forward(self, idx):
        idx = np.asarray(getattr(idx, "data", idx))
        base = F.embedding(idx, self.weight)  # (..., D)
        hit = idx[..., None] == self.token_indices  # (..., k)
        chosen = hit.any(axis=-1)  # (...)
        if not chosen.any():
            return base  # no learned token in the batch: the base's rows, bit for bit
        j = hit.argmax(axis=-1)  # (...) which learned row
        new = F.embedding(j, self.token_adapter.trainable_tokens_delta)  # (..., D)
        if self.scale != 1.0:
            new = new * self.scale + F.embedding(j, self.trainable_tokens_original) * (1.0 - self.scale)
        keep = backend.to_device(chosen[..., None].astype(base.dtype), self.weight.device)  # (..., 1)
        return base * (1.0 - keep) + new * keep  # exact: x·1 + y·0 = x, x·0 + y·1 = y

    def extra_repr(self):
        return f"{super().extra_repr()}, trainable tokens {self.token_indices.tolist()}"


def _matches(path: str, targets) -> bool:
    return any(path == t or path.endswith("." + t) for t in targets)


def _submodule(model: nn.Module, path: str) -> nn.Module:
    m = model
    for name in path.split(".") if path else ():
        m = m._modules[name]
    return m


def _set_child(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    _submodule(model, parent_path)._modules[name] = module


def lora_layers(model: nn.Module) -> dict:
    """{dotted path: LoRALinear} of every adapted layer, in module order."""
    return {p: m for p, m in model.named_modules() if isinstance(m, LoRALinear)}


def token_adapters(model: nn.Module) -> dict:
    """{dotted path: TrainableTokensEmbedding} of every embedding with trainable tokens."""
    return {p: m for p, m in model.named_modules() if isinstance(m, TrainableTokensEmbedding)}


def _freeze(model: nn.Module) -> None:
    """Remember every parameter's ``requires_grad`` (once: the first adapter added) and freeze all
    but the adapters already there (LoRA A and B, trainable token rows)."""
    if "_lora_saved_requires_grad" not in model.__dict__:
        object.__setattr__(model, "_lora_saved_requires_grad", {n: p.requires_grad for n, p in model.named_parameters()})
    for p in model.parameters():
        p.requires_grad = False
    for p in lora_parameters(model):
        p.requires_grad = True
    for emb in token_adapters(model).values():
        emb.token_adapter.trainable_tokens_delta.requires_grad = True


def add_trainable_tokens(model: nn.Module, token_indices, target: str = "token_embedding") -> nn.Module:
    """Make the rows ``token_indices`` of the ``nn.Embedding`` at ``target`` (a path equal to or
    ending with "." + it, as for LoRA) learnable, freeze every other parameter (peft's
    ``trainable_token_indices``). Returns ``model``; ``merge_lora`` / ``remove_lora`` undo it too."""
    chosen = [p for p, m in model.named_modules() if type(m) is nn.Embedding and p and _matches(p, (target,))]
    if len(chosen) != 1:
        raise ValueError(f"add_trainable_tokens: expected one nn.Embedding of {type(model).__name__} matching "
                         f"{target!r}, found {chosen}")
    if token_adapters(model):
        raise ValueError("add_trainable_tokens: the model already has trainable tokens; merge or remove them first")
    layer = TrainableTokensEmbedding(_submodule(model, chosen[0]), token_indices)
    _freeze(model)
    _set_child(model, chosen[0], layer)
    return model


def _check_rank_alpha(rank, alpha):
    if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive int, got {rank!r}")
    alpha = rank if alpha is None else alpha
    if not isinstance(alpha, (int, float, np.number)) or not alpha > 0:
        raise ValueError(f"LoRA alpha must be a positive number, got {alpha!r}")
    return int(rank), float(alpha)


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, target_modules=UNET_TARGETS) -> nn.Module:
    """Wrap every ``nn.Linear`` of ``model`` whose path equals or ends with "." + a target in a
    ``LoRALinear`` (A random, B zero), freeze every other parameter, and return ``model``.

    ``alpha`` defaults to ``rank`` (scaling 1). Raises if nothing matches or if the model
    already has adapters (merge or remove them first)."""
    rank, alpha = _check_rank_alpha(rank, alpha)
    targets = (target_modules,) if isinstance(target_modules, str) else tuple(target_modules)
    if not targets:
        raise ValueError("add_lora: target_modules is empty")
    if lora_layers(model):
        raise ValueError("add_lora: the model already has LoRA adapters; merge_lora or remove_lora them first")
    chosen = [p for p, m in model.named_modules() if type(m) is nn.Linear and p and _matches(p, targets)]
    if not chosen:
        raise ValueError(f"add_lora: no nn.Linear of {type(model).__name__} matches target_modules {list(targets)} "
                         "(a target matches a layer whose path equals it or ends with '.' + it)")
    _freeze(model)
    object.__setattr__(model, "_lora_targets", targets)
    for path in chosen:
        _set_child(model, path, LoRALinear(_submodule(model, path), rank, alpha))
    return model


def _unwrap(model: nn.Module, merge: bool, scale: float | None = None) -> nn.Module:
    layers, tokens = lora_layers(model), token_adapters(model)
    if not layers and not tokens:
        raise ValueError(f"{'merge_lora' if merge else 'remove_lora'}: the model has no LoRA adapters")
    for path, emb in tokens.items():
        if merge:
            s = emb.scale
            emb.scale = s if scale is None else float(scale)
            rows = emb.rows()
            emb.scale = s
            emb.weight.data[emb.token_indices] = backend.to_device(rows, emb.weight.device)
        base = nn.Embedding.__new__(nn.Embedding)
        nn.Module.__init__(base)
        base.num_embeddings, base.embedding_dim = emb.num_embeddings, emb.embedding_dim
        base.weight = emb.weight
        _set_child(model, path, base)
    for path, layer in layers.items():
        base = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(base)
        base.in_features, base.out_features = layer.in_features, layer.out_features
        if merge:
            s = layer.scale if scale is None else scale
            layer.weight.data += ((s * layer.scaling) * (layer.lora_B.weight.data @ layer.lora_A.weight.data)
                                  ).astype(layer.weight.dtype)
        base.weight = layer.weight
        base.bias = layer.bias
        _set_child(model, path, base)
    flags = model.__dict__.pop("_lora_saved_requires_grad", {})
    model.__dict__.pop("_lora_targets", None)
    for name, p in model.named_parameters():
        p.requires_grad = flags.get(name, True)
    return model


def merge_lora(model: nn.Module, scale: float | None = None) -> nn.Module:
    """W ← W + s · (α/r) · B A in every adapted layer (s: the layer's ``scale`` unless given), then
    plain ``nn.Linear``s again: the state dict has the base model's keys, and the parameters their
    ``requires_grad`` from before ``add_lora``."""
    return _unwrap(model, merge=True, scale=scale)


def remove_lora(model: nn.Module) -> nn.Module:
    """Drop the adapters without merging: the base model again, bit for bit."""
    return _unwrap(model, merge=False)


def set_lora_scale(model: nn.Module, scale: float) -> nn.Module:
    """y = W x + b + scale · (α/r) · B A x in every adapted layer (diffusers'
    ``cross_attention_kwargs={"scale": s}``), and E[t] + scale · (v_t − E[t]) in trainable tokens."""
    layers = list(lora_layers(model).values()) + list(token_adapters(model).values())
    if not layers:
        raise ValueError("set_lora_scale: the model has no LoRA adapters")
    for layer in layers:
        layer.scale = float(scale)
    return model


def lora_parameters(model: nn.Module) -> list:
    """The adapters' parameters (A, B of every layer, in module order): what an optimiser gets."""
    return [p for layer in lora_layers(model).values() for p in (layer.lora_A.weight, layer.lora_B.weight)]


def lora_state_dict(model: nn.Module, prefix: str | None = None) -> dict:
    """{"<path>.lora_A.weight": A (r, in), "<path>.lora_B.weight": B (out, r)} as numpy copies, peft's
    ``get_peft_model_state_dict`` keys (with ``prefix + "."`` in front when given)."""
    layers, tokens = lora_layers(model), token_adapters(model)
    if not layers and not tokens:
        raise ValueError("lora_state_dict: the model has no LoRA adapters")
    lead = f"{prefix}." if prefix else ""
    out = {}
    for path, layer in layers.items():
        out[f"{lead}{path}.lora_A.weight"] = np.array(layer.lora_A.weight.data)
        out[f"{lead}{path}.lora_B.weight"] = np.array(layer.lora_B.weight.data)
    for path, emb in tokens.items():  # the learned rows v_t, (k, D); their ids go in lora_config
        out[f"{lead}{path}{TOKENS_KEY}"] = np.array(emb.token_adapter.trainable_tokens_delta.data)
    return out


def lora_config(model: nn.Module) -> dict:
    """The adapter configuration as peft's ``LoraConfig`` keys: r, lora_alpha, target_modules (LoRA
    layers), trainable_token_indices ({path: [ids]}, trainable tokens)."""
    layers, tokens = lora_layers(model), token_adapters(model)
    if not layers and not tokens:
        raise ValueError("lora_config: the model has no LoRA adapters")
    extra = {"trainable_token_indices": {p: m.token_indices.tolist() for p, m in tokens.items()}} if tokens else {}
    if not layers:
        return extra
    ranks = {m.rank for m in layers.values()}
    alphas = {m.alpha for m in layers.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(f"lora_config: the layers have several ranks {sorted(ranks)} / alphas {sorted(alphas)}")
    targets = model.__dict__.get("_lora_targets") or tuple(layers)
    alpha = alphas.pop()
    return {"r": ranks.pop(), "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
            "target_modules": sorted(targets), **extra}


def _canonical_key(key: str) -> str:
    """peft's spellings of one adapter key → "<path>.lora_A.weight": drops a ``base_model.model.``
    lead (a PeftModel's state dict) and the adapter name in ``.lora_A.default.weight``."""
    if key.startswith("base_model.model."):
        key = key[len("base_model.model."):]
    for part in ("lora_A", "lora_B"):
        key = key.replace(f".{part}.default.weight", f".{part}.weight")
    return key


def load_lora_state_dict(model: nn.Module, state_dict: dict, alpha: float | None = None,
                         prefix: str = "unet", token_indices: dict | None = None) -> nn.Module:
    """Load adapter weights keyed as ``lora_state_dict`` writes them (a leading ``prefix + "."``,
    ``unet.`` by default, is accepted, as are peft's ``base_model.model.`` and ``.default.``).

    A model without adapters gets them on exactly the layers the keys name (rank from A's
    shape, ``alpha`` default: the rank); a model with adapters must have exactly those layers.
    Trainable-token rows (``<path>.token_adapter.trainable_tokens_delta``) need their ids in
    ``token_indices`` ({path: [ids]}, ``lora_config``'s ``trainable_token_indices``).
    Unknown, missing or mis-shaped keys raise ValueError naming the key."""
    lead = f"{prefix}." if prefix else ""
    sd = {}
    for key, value in state_dict.items():
        k = key[len(lead):] if lead and key.startswith(lead) else key
        sd[_canonical_key(k)] = np.asarray(getattr(value, "data", value))
    tokens = {key[: -len(TOKENS_KEY)]: sd.pop(key) for key in list(sd) if key.endswith(TOKENS_KEY)}
    if tokens:
        _load_tokens(model, tokens, token_indices or {})
        if not sd:
            return model
    paths = {}
    for key in sd:
        if not key.endswith(_PARTS):
            raise ValueError(f"load_lora_state_dict: unexpected key {key!r} (expected '<path>.lora_A.weight' or "
                             "'<path>.lora_B.weight')")
        paths.setdefault(key[: -len(_PARTS[0])], []).append(key)
    modules = dict(model.named_modules())
    for path in paths:
        m = modules.get(path)
        if not isinstance(m, nn.Linear):
            raise ValueError(f"load_lora_state_dict: key {path + '.lora_A.weight'!r} names "
                             f"{'no module' if m is None else type(m).__name__} of {type(model).__name__}, "
                             "not a linear layer")
    for path in paths:
        for part in _PARTS:
            if path + part not in sd:
                raise ValueError(f"load_lora_state_dict: missing key {path + part!r}")
    layers = lora_layers(model)
    if not layers:
        ranks = {sd[p + _PARTS[0]].shape[0] for p in paths} if paths else set()
        if len(ranks) != 1:
            raise ValueError(f"load_lora_state_dict: expected one rank over all lora_A keys, got {sorted(ranks)}")
        add_lora(model, ranks.pop(), alpha, target_modules=tuple(paths))
        layers = lora_layers(model)
    else:
        missing = [p + part for p in layers if p not in paths for part in _PARTS]
        unknown = [paths[p][0] for p in paths if p not in layers]
        if missing or unknown:
            raise ValueError(f"load_lora_state_dict: missing keys {missing}, keys of layers without adapters "
                             f"{unknown}")
    for path, layer in layers.items():
        for part, target in zip(_PARTS, (layer.lora_A.weight, layer.lora_B.weight)):
            value = sd[path + part]
            if value.shape != target.shape:
                raise ValueError(f"load_lora_state_dict: {path + part!r} has shape {value.shape}, the model's "
                                 f"adapter has {target.shape}")
            target.data = value.astype(target.dtype).copy()
    return model


def _load_tokens(model: nn.Module, rows: dict, token_indices: dict) -> None:
    """Trainable-token rows {path: (k, D)} into ``model`` (adding the adapters where needed)."""
    have = token_adapters(model)
    for path, value in rows.items():
        key = path + TOKENS_KEY
        if path not in token_indices:
            raise ValueError(f"load_lora_state_dict: {key!r} has no token ids (trainable_token_indices[{path!r}] "
                             "in the file's metadata)")
        if path not in have:
            if have:
                raise ValueError(f"load_lora_state_dict: {key!r}: the model has trainable tokens at {sorted(have)}")
            m = dict(model.named_modules()).get(path)
            if type(m) is not nn.Embedding:
                raise ValueError(f"load_lora_state_dict: key {key!r} names "
                                 f"{'no module' if m is None else type(m).__name__} of {type(model).__name__}, "
                                 "not an embedding")
            add_trainable_tokens(model, token_indices[path], target=path)
            have = token_adapters(model)
        emb = have[path]
        if sorted({int(t) for t in token_indices[path]}) != emb.token_indices.tolist():
            raise ValueError(f"load_lora_state_dict: {key!r}: token ids {token_indices[path]} differ from the "
                             f"model's {emb.token_indices.tolist()}")
        target = emb.token_adapter.trainable_tokens_delta
        if value.shape != target.shape:
            raise ValueError(f"load_lora_state_dict: {key!r} has shape {value.shape}, the model's trainable "
                             f"tokens have {target.shape}")
        target.data = value.astype(target.dtype).copy()


# -- files -------------------------------------------------------------------------------


def save_lora_weights(path, unet=None, text_encoder=None) -> str:
    """One safetensors file as diffusers' ``StableDiffusionPipeline.save_lora_weights`` writes it:
    keys ``unet.<path>.lora_A.weight`` … and ``text_encoder.…``, metadata ``format: pt`` and
    ``lora_adapter_metadata`` = JSON of {"unet.r", "unet.lora_alpha", "unet.target_modules", …}.

    ``path``: a file, or a folder (then ``pytorch_lora_weights.safetensors`` inside it). Written
    atomically; returns the file's path."""
    models = {name: m for name, m in (("unet", unet), ("text_encoder", text_encoder)) if m is not None}
    if not models:
        raise ValueError("save_lora_weights: pass unet= and/or text_encoder= (models with LoRA adapters)")
    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".safetensors"):
        os.makedirs(path, exist_ok=True)
        path = os.path.join(path, WEIGHT_NAME)
    tensors, meta = {}, {}
    for name, model in models.items():
        tensors.update(lora_state_dict(model, prefix=name))
        meta.update({f"{name}.{k}": v for k, v in lora_config(model).items()})
    nd_io.save_safetensors(path, tensors, metadata={"format": "pt",
                                                    METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True)})
    return path


def read_lora_file(path) -> tuple[dict, dict]:
    """(tensors, adapter metadata) of a LoRA safetensors file (or a folder holding
    ``pytorch_lora_weights.safetensors``); metadata is {} when the file has none."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, WEIGHT_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"LoRA file {path!r} does not exist")
    try:
        tensors = nd_io.load_safetensors(path)
        raw = nd_io.load_safetensors_metadata(path).get(METADATA_KEY)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: cannot read LoRA safetensors ({type(e).__name__}: {e})") from None
    try:
        meta = json.loads(raw) if raw else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata {METADATA_KEY!r} is not JSON ({e})") from None
    return tensors, meta


def load_lora_weights(path, unet=None, text_encoder=None) -> dict:
    """Load a LoRA file (ours or diffusers': pipeline keys ``unet.`` / ``text_encoder.``, or a bare
    ``save_lora_adapter`` file for one model) into the given models, adding adapters with the
    file's rank and ``lora_alpha``. Returns {component: config} of what was loaded.

    Keys for a component that was not passed, or a component passed that the file does not
    hold, raise ValueError naming it."""
    tensors, meta = read_lora_file(path)
    groups = {}
    for key, value in tensors.items():
        head, _, rest = key.partition(".")
        name = head if head in ("unet", "text_encoder") else None
        groups.setdefault(name, {})[rest if name else key] = value
    if None in groups:  # a bare adapter file (diffusers' save_lora_adapter): all keys belong to one model
        if len(groups) > 1:
            raise ValueError(f"{path}: mixes keys with and without a 'unet.' / 'text_encoder.' prefix, e.g. "
                             f"{next(iter(groups[None]))!r}")
        if (unet is None) == (text_encoder is None):
            raise ValueError(f"{path}: the keys have no component prefix; pass exactly one of unet= / text_encoder=")
        name = "unet" if unet is not None else "text_encoder"
        groups = {name: groups.pop(None)}
        meta = {f"{name}.{k}": v for k, v in meta.items()}
    passed = {"unet": unet, "text_encoder": text_encoder}
    loaded = {}
    for name, sd in groups.items():
        model = passed[name]
        if model is None:
            raise ValueError(f"{path}: holds LoRA weights for {name!r} ({len(sd)} tensors) but no {name}= was given")
        config = {k[len(name) + 1:]: v for k, v in meta.items() if k.startswith(name + ".")}
        for key in ("alpha_pattern", "rank_pattern"):
            if config.get(key):
                raise ValueError(f"{path}: {name}.{key} (per-layer ranks or alphas) is not supported")
        try:
            load_lora_state_dict(model, sd, alpha=config.get("lora_alpha"), prefix=None,
                                 token_indices=config.get("trainable_token_indices"))
        except ValueError as e:
            raise ValueError(f"{path} ({name}): {e}") from None
        loaded[name] = lora_config(model)
    for name, model in passed.items():
        if model is not None and name not in loaded:
            raise ValueError(f"{path}: holds no LoRA weights for {name!r} (it has {sorted(groups)})")
    return loaded
