"""``Module`` and ``Parameter`` with PyTorch semantics.

Assigning a ``Parameter`` or a ``Module`` to an attribute registers it, in
assignment order; ``named_parameters()`` walks submodules depth first and joins
names with dots, so a model built the same way as its PyTorch twin has exactly
the same state-dict keys (``down_blocks.0.resnets.1.conv1.weight``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

import numpy as np

from ... import backend
from ...autograd import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as a learnable parameter."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        data = data.data if isinstance(data, Tensor) else data
        if not hasattr(data, "dtype"):
            data = np.asarray(data, dtype=backend.get_default_dtype())
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class of every layer and model."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "training", True)

    # -- registration ------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() before assigning {name!r}")
        for store in (self._parameters, self._buffers, self._modules):
            store.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif name in self.__dict__.get("_buffer_names", ()):
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)
            return
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None):
        if param is None:
            self._parameters.pop(name, None)
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, param)

    def register_buffer(self, name: str, array, persistent: bool = True):
        """A non-learnable array that is saved in the state dict (running stats)."""
        names = self.__dict__.setdefault("_buffer_names", set())
        names.add(name)
        self.__dict__.pop(name, None)
        self._buffers[name] = None if array is None else (array.data if isinstance(array, Tensor) else array)
        if not persistent:
            self._non_persistent.add(name)

    def register_module(self, name: str, module: "Module | None"):
        if module is None:
            self._modules[name] = None
        else:
            setattr(self, name, module)

    add_module = register_module

    # -- forward -----------------------------------------------------------
    def forward(self, *args, **kwargs):  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal ---------------------------------------------------------
    def named_modules(self, prefix: str = "", memo=None) -> Iterator[tuple[str, "Module"]]:
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """(dotted name, Parameter) pairs, each parameter once (shared ones keep their first name)."""
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, m in modules:
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = ""):
        for mod_prefix, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    # -- state -------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Parameters and persistent buffers as arrays, keyed as torch would key them."""
        out = OrderedDict()
        for mod_prefix, m in self.named_modules():
            for name, p in m._parameters.items():
                if p is not None:
                    out[f"{mod_prefix}.{name}" if mod_prefix else name] = p.data
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[f"{mod_prefix}.{name}" if mod_prefix else name] = b
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays into parameters and buffers.

        Every missing, unexpected or mis-shaped key is named in one ValueError
        (shape mismatches are errors even when ``strict=False``, as in torch).
        Returns ``(missing_keys, unexpected_keys)``.
        """
        own = {}
        for mod_prefix, m in self.named_modules():
            for name in m._parameters:
                if m._parameters[name] is not None:
                    own[f"{mod_prefix}.{name}" if mod_prefix else name] = (m, "param", name)
            for name in m._buffers:
                if m._buffers[name] is not None and name not in m._non_persistent:
                    own[f"{mod_prefix}.{name}" if mod_prefix else name] = (m, "buffer", name)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = []
        for k, (m, kind, name) in own.items():
            if k in state_dict:
                target = m._parameters[name].data if kind == "param" else m._buffers[name]
                src_shape = tuple(np.shape(getattr(state_dict[k], "data", state_dict[k])))
                if src_shape != tuple(target.shape):
                    mismatched.append(f"{k}: checkpoint {src_shape} vs model {tuple(target.shape)}")
        problems = []
        if mismatched:
            problems.append("size mismatch for " + "; ".join(mismatched))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise ValueError(f"error loading state dict into {type(self).__name__}: " + " | ".join(problems))
        for k, (m, kind, name) in own.items():
            if k not in state_dict:
                continue
            src = state_dict[k]
            src = src.data if isinstance(src, Tensor) else src
            # a copy in the target's dtype, on the target's device (a host checkpoint onto a GPU model, or back)
            if kind == "param":
                p = m._parameters[name]
                p.data = backend.to_device(src, backend.device_of(p.data)).astype(p.dtype)
            else:
                b = m._buffers[name]
                m._buffers[name] = backend.to_device(src, backend.device_of(b)).astype(b.dtype)
        return missing, unexpected

    # -- modes and utilities -------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    def zero_grad(self, set_to_none: bool = True):
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.data[...] = 0

    def requires_grad_(self, requires_grad: bool = True):
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def to(self, device=None, dtype=None):
        """Move (and/or cast) every parameter and floating buffer in place."""
        for m in self.modules():
            for p in m._parameters.values():
                if p is None:
                    continue
                data = p.data if device is None else backend.to_device(p.data, device)
                if dtype is not None:
                    data = data.astype(dtype)
                p.data = data
            for name, b in m._buffers.items():
                if b is None:
                    continue
                if device is not None:
                    b = backend.to_device(b, device)
                if dtype is not None and b.dtype.kind == "f":
                    b = b.astype(dtype)
                m._buffers[name] = b
        return self

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")
