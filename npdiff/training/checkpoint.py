"""Training checkpoints: one safetensors file holding everything needed to resume exactly.

Layout of ``checkpoint.safetensors`` (one file, so writing it is one atomic rename —
see ``npdiff.io.atomic_write``; a crash leaves the previous checkpoint intact):

    model/<state-dict key>      the live weights, keyed as the model's state_dict
    ema/<parameter name>        the EMA weights, keyed as the model's parameters
    optim/<i>.<name>            AdamW moments of parameter i (exp_avg, exp_avg_sq)
    __metadata__["npdiff"]      JSON: step, optimizer hyper-parameters and step counts,
                                EMA and LR-schedule counters, and every RNG state
                                (trainer generator, data loader position, npdiff's
                                global generator)

Arrays are stored bit-exactly (float32 stays float32), and RNG states are the
generators' full ``bit_generator.state`` dicts, so a resumed run draws the same
timesteps, noise, label drops and batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from .. import io as nd_io

CHECKPOINT_NAME = "checkpoint.safetensors"
CONFIG_NAME = "config.json"
LOG_NAME = "log.jsonl"
FORMAT_VERSION = 1


@dataclass
class TrainingState:
    """The contents of a checkpoint, split back into its parts."""

    model: dict  # state-dict key -> array
    ema: dict  # parameter name -> array
    optimizer: dict  # Optimizer.state_dict() format: {"hyper": ..., "state": {"i.name": ...}}
    meta: dict  # step, RNG states, counters (see module docstring)

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def ema_state_by_name(model, ema) -> dict:
    """EMA shadow weights keyed by parameter name (EMA tracks ``model.parameters()`` in order)."""
    names = [n for n, _ in model.named_parameters()]
    if len(names) != len(ema.shadow):
        raise ValueError(f"EMA tracks {len(ema.shadow)} tensors but the model has {len(names)} parameters")
    return dict(zip(names, ema.shadow))


def ema_model_state_dict(model, ema) -> dict:
    """A full state dict (parameters and buffers) with the EMA weights in place of the live ones."""
    sd = dict(model.state_dict())
    sd.update(ema_state_by_name(model, ema))
    return sd


def save_checkpoint(path: str, *, model, ema, optimizer, meta: dict) -> None:
    """Write ``model``, ``ema`` and ``optimizer`` state plus ``meta`` (JSON-able) to ``path`` atomically."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in ema_state_by_name(model, ema).items()})
    opt = optimizer.state_dict()
    scalars = {}
    for key, value in opt["state"].items():
        if hasattr(value, "shape") and value.shape != ():
            tensors[f"optim/{key}"] = value
        else:  # per-parameter step counters: plain ints in the JSON
            scalars[key] = value.item() if hasattr(value, "item") else value
    meta = {**meta, "format_version": FORMAT_VERSION, "optimizer_hyper": opt["hyper"], "optimizer_scalars": scalars,
            "ema_hyper": {k: v for k, v in ema.state_dict()["hyper"].items()}}
    nd_io.save_safetensors(path, tensors, metadata={"npdiff": json.dumps(meta)})


def load_checkpoint(path: str) -> TrainingState:
    """Read a checkpoint written by ``save_checkpoint``; ValueError names a missing or foreign file."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    try:
        header = nd_io.load_safetensors_metadata(path)
        tensors = nd_io.load_safetensors(path)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: cannot read checkpoint ({e})") from e
    if "npdiff" not in header:
        raise ValueError(f"{path}: not an npdiff training checkpoint (no 'npdiff' metadata; keys {sorted(header)})")
    meta = json.loads(header["npdiff"])
    groups = {"model": {}, "ema": {}, "optim": {}}
    for key, value in tensors.items():
        group, _, name = key.partition("/")
        if group not in groups:
            raise ValueError(f"{path}: unexpected tensor {key!r} in checkpoint")
        groups[group][name] = value
    optim_state = dict(groups["optim"])
    optim_state.update({k: int(v) for k, v in meta.get("optimizer_scalars", {}).items()})
    hyper = dict(meta["optimizer_hyper"])
    if "betas" in hyper:
        hyper["betas"] = tuple(hyper["betas"])
    return TrainingState(model=groups["model"], ema=groups["ema"],
                         optimizer={"hyper": hyper, "state": optim_state}, meta=meta)


def restore_ema(model, ema, ema_by_name: dict, hyper: dict) -> None:
    """Load EMA weights keyed by parameter name (as written by ``save_checkpoint``)."""
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n in names if n not in ema_by_name]
    if missing:
        raise ValueError(f"checkpoint EMA is missing parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    ema.load_state_dict({"shadow": {str(i): ema_by_name[n] for i, n in enumerate(names)}, "hyper": hyper})


def rng_state(generator: np.random.Generator) -> dict:
    """A generator's full bit-generator state (JSON-able: PCG64 holds two Python ints)."""
    return generator.bit_generator.state


def set_rng_state(generator: np.random.Generator, state: dict) -> None:
    generator.bit_generator.state = state
