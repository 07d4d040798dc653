"""Checkpoint folders in the diffusers layout, shared by every npdiff model.

A model folder holds two files:

    config.json                           the constructor arguments (+ "_class_name")
    diffusion_pytorch_model.safetensors   the state dict, keyed exactly as diffusers keys it

``ModelMixin.from_pretrained(folder)`` rebuilds the model from ``config.json`` and
loads the weights; ``save_pretrained(folder)`` writes the same two files (each one
atomically: temporary file, fsync, rename — see ``npdiff.io.atomic_write``), so a
folder written by diffusers loads here unchanged and the other way round.

Safety rules:
  - Never unpickle. ``.bin`` / ``.ckpt`` / ``.pt`` / ``.pth`` files are PyTorch pickles,
    and loading a pickle can run arbitrary code; a folder that only has those is
    refused with a message that says so and how to convert it.
  - Every failure names the file: unreadable or truncated safetensors, missing /
    unexpected / mis-shaped keys (from ``Module.load_state_dict``), a config for
    another class, config values this model does not support (the constructor
    refuses those by name).
  - Config keys the constructor does not know are ignored with a warning; keys
    starting with "_" (``_class_name``, ``_diffusers_version``, ``_name_or_path``)
    are bookkeeping and ignored silently.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import warnings

import numpy as np

from .. import __version__ as _npdiff_version
from .. import io as nd_io
from .. import nn
from ..configuration_utils import FrozenConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = WEIGHTS_NAME + ".index.json"
# the diffusers version whose layout and key names we follow (written into config.json)
DIFFUSERS_LAYOUT_VERSION = "0.42.1"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def register_to_config(init):
    """Decorator for a model ``__init__``: records every argument (defaults filled
    in) as ``self.config`` before the body runs, as diffusers' decorator of the same
    name does."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config = {k: _jsonable(v) for k, v in bound.arguments.items() if k != "self"}
        object.__setattr__(self, "config", FrozenConfig(config))
        init(self, *args, **kwargs)

    return wrapper


def _read_config(path: str) -> dict:
    """A JSON file holding one object (config.json, vocab.json …); every failure names the file."""
    if not os.path.isfile(path):
        raise ValueError(f"model config {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _load_weight_file(path: str) -> dict:
    """One safetensors file as {key: numpy array}; any decoding failure names the file."""
    try:
        return nd_io.load_safetensors(path)
    except Exception as e:  # safetensors raises its own SafetensorError types
        raise ValueError(
            f"{path}: cannot read safetensors weights ({type(e).__name__}: {e}); "
            "the file is truncated, corrupt or uses a dtype numpy cannot hold (bfloat16)"
        ) from None


def _weight_files(folder: str, weights_name: str = WEIGHTS_NAME) -> list[str]:
    """The safetensors file(s) of a model folder (one file, or the shards of an index)."""
    single = os.path.join(folder, weights_name)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(folder, weights_name + ".index.json")
    if os.path.isfile(index):
        weight_map = _read_config(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no 'weight_map' object mapping keys to shard files")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if missing:
            raise ValueError(f"{index}: shard files {missing} listed in the index are not in {folder!r}")
        return [os.path.join(folder, s) for s in shards]
    present = sorted(os.listdir(folder))
    pickles = [f for f in present if f.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"{folder!r} holds only pickle-based weights {pickles} and no {weights_name}. npdiff never "
            "unpickles files: loading a pickle can execute arbitrary code. Convert the checkpoint once, "
            "in an environment you trust, e.g. with diffusers: "
            "`Model.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`."
        )
    raise ValueError(f"{folder!r} has no {weights_name} (files present: {present})")


class ModelMixin(nn.Module):
    """Base class of npdiff's models: config bookkeeping and diffusers-layout checkpoints.

    A subclass decorates its ``__init__`` with ``@register_to_config`` and builds
    submodules with diffusers' attribute names; nothing else is needed for
    ``from_pretrained`` / ``save_pretrained`` / ``from_config``.
    """

    config: FrozenConfig
    # the weights file of a folder (transformers' models override: "model.safetensors")
    weights_name = WEIGHTS_NAME
    # bookkeeping keys of a foreign config.json that are neither arguments nor worth a warning
    _ignored_config_keys: frozenset = frozenset()

    # -- config -------------------------------------------------------------
    @classmethod
    def _config_to_kwargs(cls, config: dict, source: str) -> dict:
        name = config.get("_class_name")
        if name is not None and name != cls.__name__:
            raise ValueError(f"{source}: config is for class {name!r}, not {cls.__name__!r}")
        params = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in config.items() if k in params and k != "self"}
        unknown = sorted(k for k in config
                         if k not in params and not k.startswith("_") and k not in cls._ignored_config_keys)
        if unknown:
            warnings.warn(f"{source}: ignoring config keys {unknown} that {cls.__name__} does not take", stacklevel=3)
        return kwargs

    @classmethod
    def from_config(cls, config: dict):
        """Build a model (random weights) from a config dict, e.g. ``other.config``."""
        return cls(**cls._config_to_kwargs(dict(config), "config"))

    # -- checkpoints -----------------------------------------------------------
    def _fix_state_dict_keys_on_load(self, state_dict: dict) -> dict:
        """Rename the key names of diffusers' pre-0.14 attention blocks
        (``query``/``key``/``value``/``proj_attn``) to the current ones
        (``to_q``/``to_k``/``to_v``/``to_out.0``), as diffusers does on load."""
        renames = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
        for path, module in self.named_modules():
            if not getattr(module, "_from_deprecated_attn_block", False):
                continue
            for old, new in renames.items():
                for suffix in ("weight", "bias"):
                    k = f"{path}.{old}.{suffix}"
                    if k in state_dict:
                        state_dict[f"{path}.{new}.{suffix}"] = state_dict.pop(k)
        return state_dict

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, dtype=None):
        """Load ``config.json`` + ``diffusion_pytorch_model.safetensors`` from a local folder.

        ``subfolder`` picks a model inside a pipeline folder (e.g. ``"unet"``);
        ``dtype`` casts the loaded parameters (default: the dtype of a fresh model,
        float32). Pickle-only folders are refused (see the module docstring).
        """
        folder = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            folder = os.path.join(folder, subfolder)
        if not os.path.isdir(folder):
            raise ValueError(f"model folder {folder!r} does not exist (only local folders are supported)")
        config_path = os.path.join(folder, CONFIG_NAME)
        model = cls(**cls._config_to_kwargs(_read_config(config_path), config_path))
        files = _weight_files(folder, cls.weights_name)
        state_dict = {}
        for path in files:
            state_dict.update(_load_weight_file(path))
        state_dict = model._fix_state_dict_keys_on_load(state_dict)
        try:
            model.load_state_dict(state_dict, strict=True)
        except ValueError as e:
            where = files[0] if len(files) == 1 else f"{folder} (shards {[os.path.basename(f) for f in files]})"
            raise ValueError(f"{where}: {e}") from None
        if dtype is not None:
            model.to(dtype=dtype)
        return model.eval()

    def save_pretrained(self, save_directory: str) -> None:
        """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` (each atomically)."""
        folder = os.fspath(save_directory)
        if os.path.isfile(folder):
            raise ValueError(f"save_pretrained: {folder!r} is a file, expected a folder")
        os.makedirs(folder, exist_ok=True)
        nd_io.save_safetensors(os.path.join(folder, self.weights_name), self.state_dict(), metadata={"format": "pt"})
        nd_io.save_json(os.path.join(folder, CONFIG_NAME), self._config_to_save())

    def _config_to_save(self) -> dict:
        """What ``save_pretrained`` writes as config.json (diffusers' bookkeeping keys + the arguments)."""
        return {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_LAYOUT_VERSION,
                "_npdiff_version": _npdiff_version, **self.config}
