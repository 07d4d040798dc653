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
"""

from __future__ import annotations

import json
import os

import numpy as np

from .. import io as nd_io
from .. import nn
from ..nn import functional as F

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
_PARTS = (".lora_A.weight", ".lora_B.weight")


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
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    object.__setattr__(model, "_lora_saved_requires_grad", flags)
    object.__setattr__(model, "_lora_targets", targets)
    for p in model.parameters():
        p.requires_grad = False
    for path in chosen:
        _set_child(model, path, LoRALinear(_submodule(model, path), rank, alpha))
    return model


def _unwrap(model: nn.Module, merge: bool, scale: float | None = None) -> nn.Module:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{'merge_lora' if merge else 'remove_lora'}: the model has no LoRA adapters")
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
    ``cross_attention_kwargs={"scale": s}``)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("set_lora_scale: the model has no LoRA adapters")
    for layer in layers.values():
        layer.scale = float(scale)
    return model


def lora_parameters(model: nn.Module) -> list:
    """The adapters' parameters (A, B of every layer, in module order): what an optimiser gets."""
    return [p for layer in lora_layers(model).values() for p in (layer.lora_A.weight, layer.lora_B.weight)]


def lora_state_dict(model: nn.Module, prefix: str | None = None) -> dict:
    """{"<path>.lora_A.weight": A (r, in), "<path>.lora_B.weight": B (out, r)} as numpy copies, peft's
    ``get_peft_model_state_dict`` keys (with ``prefix + "."`` in front when given)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("lora_state_dict: the model has no LoRA adapters")
    lead = f"{prefix}." if prefix else ""
    out = {}
    for path, layer in layers.items():
        out[f"{lead}{path}.lora_A.weight"] = np.array(layer.lora_A.weight.data)
        out[f"{lead}{path}.lora_B.weight"] = np.array(layer.lora_B.weight.data)
    return out


def lora_config(model: nn.Module) -> dict:
    """The adapter configuration as peft's ``LoraConfig`` keys: r, lora_alpha, target_modules."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("lora_config: the model has no LoRA adapters")
    ranks = {m.rank for m in layers.values()}
    alphas = {m.alpha for m in layers.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(f"lora_config: the layers have several ranks {sorted(ranks)} / alphas {sorted(alphas)}")
    targets = model.__dict__.get("_lora_targets") or tuple(layers)
    alpha = alphas.pop()
    return {"r": ranks.pop(), "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
            "target_modules": sorted(targets)}


def _canonical_key(key: str) -> str:
    """peft's spellings of one adapter key → "<path>.lora_A.weight": drops a ``base_model.model.``
    lead (a PeftModel's state dict) and the adapter name in ``.lora_A.default.weight``."""
    if key.startswith("base_model.model."):
        key = key[len("base_model.model."):]
    for part in ("lora_A", "lora_B"):
        key = key.replace(f".{part}.default.weight", f".{part}.weight")
    return key


def load_lora_state_dict(model: nn.Module, state_dict: dict, alpha: float | None = None,
                         prefix: str = "unet") -> nn.Module:
    """Load adapter weights keyed as ``lora_state_dict`` writes them (a leading ``prefix + "."``,
    ``unet.`` by default, is accepted, as are peft's ``base_model.model.`` and ``.default.``).

    A model without adapters gets them on exactly the layers the keys name (rank from A's
    shape, ``alpha`` default: the rank); a model with adapters must have exactly those layers.
    Unknown, missing or mis-shaped keys raise ValueError naming the key."""
    lead = f"{prefix}." if prefix else ""
    sd = {}
    for key, value in state_dict.items():
        k = key[len(lead):] if lead and key.startswith(lead) else key
        sd[_canonical_key(k)] = np.asarray(getattr(value, "data", value))
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
            load_lora_state_dict(model, sd, alpha=config.get("lora_alpha"), prefix=None)
        except ValueError as e:
            raise ValueError(f"{path} ({name}): {e}") from None
        loaded[name] = lora_config(model)
    for name, model in passed.items():
        if model is not None and name not in loaded:
            raise ValueError(f"{path}: holds no LoRA weights for {name!r} (it has {sorted(groups)})")
    return loaded
