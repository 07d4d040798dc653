"""Reverse-mode automatic differentiation over backend arrays.

A ``Tensor`` wraps a numpy (or cupy) array. Every differentiable operation is a
``Function``: ``forward(ctx, *arrays)`` computes the result on plain arrays and may
``ctx.save_for_backward`` what its ``backward(ctx, grad_out)`` will need; ``apply``
wraps the inputs/outputs and, when any input requires a gradient, records a node
on the tape. ``Tensor.backward()`` walks the tape in reverse topological order,
accumulating gradients (a tensor used twice receives the sum), then frees the
graph so long training loops do not grow memory.

The elementary ops live here (arithmetic with broadcasting, reductions, shape
ops, indexing, joins); the kernel-backed ops (convolution, norms, attention,
activations) are Functions in ``npdiff.nn.functional`` that call
``npdiff.kernels``.

Notation: ``g`` is the gradient of the final scalar with respect to an op's
output; ``unbroadcast(g, shape)`` sums ``g`` over the axes that broadcasting
added or stretched so it matches ``shape``.

This module defines ``sum``, ``max``, ``abs`` and ``pow`` as Tensor ops; the
Python builtins are reached as ``_builtins.sum`` etc.
"""

from __future__ import annotations

import builtins as _builtins
import contextlib
import threading
from typing import Sequence

import numpy as np

from . import backend

# ---------------------------------------------------------------------------
# grad mode


class _GradMode(threading.local):
    enabled = True


_grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    return _grad_mode.enabled


@contextlib.contextmanager
def set_grad_enabled(mode: bool):
    prev = _grad_mode.enabled
    _grad_mode.enabled = bool(mode)
    try:
        yield
    finally:
        _grad_mode.enabled = prev


def no_grad():
    """Context manager (and decorator) that records nothing on the tape."""
    return set_grad_enabled(False)


# ---------------------------------------------------------------------------
# Function base


class Context:
    """What a Function's forward leaves for its backward."""

    __slots__ = ("saved_tensors", "needs_input_grad", "__dict__")

    def __init__(self, needs_input_grad):
        self.saved_tensors = ()
        self.needs_input_grad = needs_input_grad

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays


class _Node:
    """A recorded call: the Function, its context and the input Tensors."""

    __slots__ = ("fn", "ctx", "inputs")

    def __init__(self, fn, ctx, inputs):
        self.fn = fn
        self.ctx = ctx
        self.inputs = inputs


_FREED = _Node(None, None, ())  # marks a non-leaf whose graph backward() already freed


class Function:
    """Pair a forward with its backward.

    Subclasses define ``forward(ctx, *args, **kwargs) -> array`` (Tensor
    arguments arrive as plain arrays; other arguments unchanged) and
    ``backward(ctx, g) -> gradient or tuple of gradients``, one per positional
    argument of forward (``None`` for non-Tensor arguments or where
    ``ctx.needs_input_grad[i]`` is False). Call ``SubClass.apply(...)``.
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):  # pragma: no cover - interface
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad_output):  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def apply(cls, *args, **kwargs):
        needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        record = _grad_mode.enabled and any(needs)
        ctx = Context(needs)
        raw = [a.data if isinstance(a, Tensor) else a for a in args]
        out = cls.forward(ctx, *raw, **kwargs)
        result = Tensor(out, requires_grad=record)
        if record:
            result._node = _Node(cls, ctx, args)
        return result


# ---------------------------------------------------------------------------
# Tensor


def _as_array(data, dtype=None):
    """Backend array for ``data``. Arrays keep their dtype; Python floats and
    lists of floats get the default dtype (float32), as torch.tensor does."""
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.get_array_module(data)
    if dtype is not None:
        return xp.asarray(data, dtype=dtype)
    if isinstance(data, np.ndarray) or isinstance(data, np.generic) or backend.is_gpu_array(data):
        return data if isinstance(data, np.ndarray) or backend.is_gpu_array(data) else np.asarray(data)
    arr = np.asarray(data)
    if arr.dtype == np.float64:
        arr = arr.astype(backend.get_default_dtype())
    return arr


class Tensor:
    """An array with an optional gradient and a place on the tape."""

    __slots__ = ("data", "grad", "requires_grad", "_node", "__weakref__")
    __array_priority__ = 1000  # numpy defers `ndarray op Tensor` to Tensor

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _as_array(data, dtype)
        self.requires_grad = bool(requires_grad)
        if self.requires_grad and self.data.dtype.kind not in "fc":
            raise ValueError(f"only floating tensors can require gradients, got dtype {self.data.dtype}")
        self.grad: Tensor | None = None
        self._node: _Node | None = None

    # -- array-like facts --------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def device(self):
        return backend.device_of(self.data)

    @property
    def is_leaf(self):
        return self._node is None or self._node is _FREED

    @property
    def T(self):
        return self.transpose()

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self):
        return int(self.data.size)

    def __len__(self):
        return self.data.shape[0]

    def numpy(self):
        return backend.to_device(self.data, "cpu")

    def item(self):
        return self.data.item()

    def tolist(self):
        return self.numpy().tolist()

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.numpy()!r}{grad})"

    # -- graph -------------------------------------------------------------
    def detach(self):
        return Tensor(self.data)

    def requires_grad_(self, mode: bool = True):
        self.requires_grad = bool(mode)
        return self

    def to(self, device=None, dtype=None):
        data = self.data if device is None else backend.to_device(self.data, device)
        if dtype is not None:
            return astype(Tensor(data, requires_grad=self.requires_grad) if data is not self.data else self, dtype)
        if data is self.data:
            return self
        return Tensor(data, requires_grad=self.requires_grad)

    def float(self):
        return astype(self, np.float32)

    def double(self):
        return astype(self, np.float64)

    def astype(self, dtype):
        return astype(self, dtype)

    def backward(self, grad=None, retain_graph: bool = False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` defaults to 1 for a single-element tensor. The recorded graph
        is freed afterwards unless ``retain_graph``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs, got shape {self.shape}")
            g0 = xp.ones_like(self.data)
        else:
            g0 = _as_array(grad, self.dtype)
            if g0.shape != self.shape:
                raise ValueError(f"backward: grad shape {g0.shape} does not match tensor shape {self.shape}")
        _run_backward(self, g0, retain_graph)

    # -- operators ---------------------------------------------------------
    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def __sub__(self, other):
        return sub(self, other)

    def __rsub__(self, other):
        return sub(other, self)

    def __mul__(self, other):
        return mul(self, other)

    def __rmul__(self, other):
        return mul(other, self)

    def __truediv__(self, other):
        return div(self, other)

    def __rtruediv__(self, other):
        return div(other, self)

    def __pow__(self, exponent):
        return pow(self, exponent)

    def __rpow__(self, base):
        return pow(base, self)

    def __neg__(self):
        return neg(self)

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    def __getitem__(self, index):
        return getitem(self, index)

    def _compare(self, other, op):
        other = other.data if isinstance(other, Tensor) else other
        return Tensor(op(self.data, other))

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    __hash__ = object.__hash__

    # -- method forms of the ops -------------------------------------------
    def sum(self, axis=None, keepdims=False):
        return sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return max(self, axis, keepdims)

    def min(self, axis=None, keepdims=False):
        return -max(-self, axis, keepdims)

    def var(self, axis=None, keepdims=False, correction=1):
        return var(self, axis, keepdims, correction)

    def exp(self):
        return exp(self)

    def log(self):
        return log(self)

    def sqrt(self):
        return sqrt(self)

    def tanh(self):
        return tanh(self)

    def sigmoid(self):
        return sigmoid(self)

    def abs(self):
        return abs(self)

    def clip(self, min=None, max=None):
        return clip(self, min, max)

    clamp = clip

    def reshape(self, *shape):
        return reshape(self, *shape)

    def view(self, *shape):
        return reshape(self, *shape)

    def contiguous(self):
        return contiguous(self)

    def flatten(self, start_dim=0, end_dim=-1):
        return flatten(self, start_dim, end_dim)

    def transpose(self, dim0=None, dim1=None):
        return transpose(self, dim0, dim1)

    def permute(self, *dims):
        return permute(self, *dims)

    def split(self, split_size_or_sections, dim=0):
        return split(self, split_size_or_sections, dim)

    def chunk(self, chunks, dim=0):
        return chunk(self, chunks, dim)

    def unsqueeze(self, dim):
        return unsqueeze(self, dim)

    def squeeze(self, dim=None):
        return squeeze(self, dim)

    def expand(self, *shape):
        return expand(self, *shape)

    def zero_(self):
        self.data[...] = 0
        return self


def _run_backward(root: Tensor, g0, retain_graph: bool):
    # 1. topological order of the recorded nodes (iterative DFS: deep graphs
    #    such as a 1000-step loop would overflow Python's recursion limit)
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen or t._node is None:
            continue
        if t._node is _FREED:
            raise RuntimeError(
                "trying to backward through a graph that was already freed by an earlier backward(); "
                "pass retain_graph=True to the first call if you need to backward twice"
            )
        seen.add(id(t))
        stack.append((t, True))
        for parent in t._node.inputs:
            if isinstance(parent, Tensor) and parent.requires_grad and id(parent) not in seen:
                stack.append((parent, False))
    # 2. reverse pass: each node's output gradient is complete when it is popped
    grads = {id(root): g0}
    for t in reversed(order):
        g = grads.pop(id(t), None)
        node = t._node
        if g is None:
            continue
        in_grads = node.fn.backward(node.ctx, g)
        if not isinstance(in_grads, tuple):
            in_grads = (in_grads,)
        for parent, pg in zip(node.inputs, in_grads):
            if pg is None or not isinstance(parent, Tensor) or not parent.requires_grad:
                continue
            if pg.shape != parent.shape:
                raise RuntimeError(
                    f"{node.fn.__name__}.backward returned a gradient of shape {pg.shape} "
                    f"for an input of shape {parent.shape}"
                )
            if parent.is_leaf:  # accumulate into .grad
                pg = pg.astype(parent.dtype, copy=False)
                if parent.grad is None:
                    # .grad must not share memory with any other array, or an in-place update of it
                    # (an optimizer, clip_grad_norm_, zero_) would reach that array too. A gradient
                    # this node computed itself (owns its memory, is not the incoming g, not returned
                    # for two inputs) is kept as is; anything else is copied (was: always copied,
                    # 16 MB more memory traffic per backward for a (64, 64, 32, 32) input)
                    fresh = pg is not g and pg.base is None and pg.flags.owndata and \
                        len([other for other in in_grads if other is pg]) == 1  # (``sum`` is the op here)
                    parent.grad = Tensor(pg if fresh else pg.copy())
                else:
                    parent.grad.data = parent.grad.data + pg
            elif id(parent) in grads:
                grads[id(parent)] = grads[id(parent)] + pg
            else:
                grads[id(parent)] = pg
        if not retain_graph:
            t._node = _FREED  # drop saved arrays and the links to the inputs


# ---------------------------------------------------------------------------
# helpers


def _wrap(x, like=None):
    """Python scalars and arrays become constant Tensors (dtype of ``like``)."""
    if isinstance(x, Tensor):
        return x
    if like is not None and np.isscalar(x):
        xp = backend.get_array_module(like.data)
        # made where ``like`` lives by a fill (on a GPU: a kernel argument, not a host → device copy)
        return Tensor(xp.full((), x, dtype=like.dtype if like.dtype.kind == "f" else None))
    return Tensor(x)


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape`` (the inverse of numpy broadcasting)."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (gs, s) in enumerate(zip(g.shape, shape)) if s == 1 and gs != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _normalize_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    out = []
    for a in axis:
        if not -ndim <= a < _builtins.max(ndim, 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % _builtins.max(ndim, 1))
    return tuple(out)


def _expand_reduced(g, shape, axes, keepdims):
    """Put back the reduced axes of ``g`` so it broadcasts against ``shape``."""
    if not keepdims:
        g = backend.get_array_module(g).expand_dims(g, tuple(sorted(axes)))
    return g


def _check_broadcast(op, a, b):
    try:
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} cannot be broadcast together") from None


# ---------------------------------------------------------------------------
# arithmetic


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(g, sb)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = (a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.shapes
        return unbroadcast(g, sa), unbroadcast(-g, sb)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = unbroadcast(g / b, a.shape) if ctx.needs_input_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return ga, gb


class Pow(Function):
    # d(a^b)/da = b a^(b-1);  d(a^b)/db = a^b log a
    @staticmethod
    def forward(ctx, a, b):
        out = a**b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        xp = backend.get_array_module(a)
        ga = unbroadcast(g * b * a ** (b - 1), a.shape) if ctx.needs_input_grad[0] else None
        gb = None
        if ctx.needs_input_grad[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                loga = xp.where(a > 0, xp.log(xp.where(a > 0, a, 1)), 0)
            gb = unbroadcast(g * out * loga, b.shape)
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class MatMul(Function):
    # C = A @ B with numpy's batching rules; 1-D operands are promoted and the
    # promoted axis removed again, exactly as np.matmul does.
    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul: operands must be at least 1-D, got shapes {a.shape} and {b.shape}")
        ka = a.shape[-1]
        kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
        if ka != kb:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} are not aligned ({ka} != {kb})")
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        xp = backend.get_array_module(a)
        a2 = a[None, :] if a.ndim == 1 else a          # (.., M, K)
        b2 = b[:, None] if b.ndim == 1 else b          # (.., K, N)
        g2 = g
        if a.ndim == 1:
            g2 = xp.expand_dims(g2, -2)                # restore M = 1
        if b.ndim == 1:
            g2 = xp.expand_dims(g2, -1)                # restore N = 1
        ga = gb = None
        if ctx.needs_input_grad[0]:
            ga = unbroadcast(g2 @ xp.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            gb = unbroadcast(xp.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb


def _binary(fn, name):
    def op(a, b):
        like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
        a, b = _wrap(a, like), _wrap(b, like)
        _check_broadcast(name, a, b)
        return fn.apply(a, b)

    op.__name__ = name
    op.__doc__ = f"Elementwise {name} with numpy broadcasting; gradients are summed back to each input's shape."
    return op


add = _binary(Add, "add")
sub = _binary(Sub, "sub")
mul = _binary(Mul, "mul")
div = _binary(Div, "div")
pow = _binary(Pow, "pow")


def neg(a):
    return Neg.apply(_wrap(a))


def matmul(a, b):
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    return MatMul.apply(_wrap(a, like), _wrap(b, like))


# ---------------------------------------------------------------------------
# elementwise math


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = backend.get_array_module(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return backend.get_array_module(a).log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g / a


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        out = backend.get_array_module(a).sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g / (2 * out)


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = backend.get_array_module(a).tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * (1 - out * out)


def _stable_sigmoid(xp, a):
    # σ(a) = 1 / (1 + e^{-a}), written through e^{-|a|} so neither branch overflows
    e = xp.exp(-xp.abs(a))
    return xp.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        out = _stable_sigmoid(backend.get_array_module(a), a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out * (1 - out)


class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return backend.get_array_module(a).abs(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * backend.get_array_module(a).sign(a)


class Clip(Function):
    # gradient passes where lo <= a <= hi (torch.clamp's convention at the bounds)
    @staticmethod
    def forward(ctx, a, lo, hi):
        xp = backend.get_array_module(a)
        ctx.save_for_backward(a)
        ctx.bounds = (lo, hi)
        return xp.clip(a, lo, hi)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        mask = backend.get_array_module(a).ones(a.shape, dtype=bool)
        if lo is not None:
            mask &= a >= lo
        if hi is not None:
            mask &= a <= hi
        return g * mask, None, None


class AsType(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g.astype(ctx.dtype), None


def exp(a):
    return Exp.apply(_wrap(a))


def log(a):
    return Log.apply(_wrap(a))


def sqrt(a):
    return Sqrt.apply(_wrap(a))


def tanh(a):
    return Tanh.apply(_wrap(a))


def sigmoid(a):
    return Sigmoid.apply(_wrap(a))


def abs(a):
    return Abs.apply(_wrap(a))


def clip(a, min=None, max=None):
    if min is None and max is None:
        raise ValueError("clip: at least one of min and max must be given")
    return Clip.apply(_wrap(a), min, max)


def astype(a, dtype):
    a = _wrap(a)
    if a.dtype == np.dtype(dtype):
        return a
    return AsType.apply(a, np.dtype(dtype))


# ---------------------------------------------------------------------------
# reductions


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis, keepdims):
        ctx.info = (a.shape, _normalize_axis(axis, a.ndim), keepdims)
        return a.sum(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        shape, axes, keepdims = ctx.info
        xp = backend.get_array_module(g)
        g = _expand_reduced(g, shape, axes, keepdims)
        return xp.broadcast_to(g, shape).copy(), None, None


class Max(Function):
    # the gradient is shared equally among tied maxima (torch.amax convention)
    @staticmethod
    def forward(ctx, a, axis, keepdims):
        out = a.max(axis=axis, keepdims=True)
        ctx.save_for_backward(a, out)
        ctx.info = (_normalize_axis(axis, a.ndim), keepdims)
        return out if keepdims else out.reshape([s for i, s in enumerate(out.shape) if i not in ctx.info[0]])

    @staticmethod
    def backward(ctx, g):
        a, out = ctx.saved_tensors
        axes, keepdims = ctx.info
        g = _expand_reduced(g, a.shape, axes, keepdims)
        mask = a == out
        count = mask.sum(axis=axes, keepdims=True)
        return g * mask / count, None, None


def sum(a, axis=None, keepdims=False):
    a = _wrap(a)
    _normalize_axis(axis, a.ndim)
    return Sum.apply(a, axis if axis is None or isinstance(axis, int) else tuple(axis), keepdims)


def mean(a, axis=None, keepdims=False):
    a = _wrap(a)
    axes = _normalize_axis(axis, a.ndim)
    n = 1
    for ax in axes:
        n *= a.shape[ax]
    return sum(a, axis, keepdims) / n


def max(a, axis=None, keepdims=False):
    a = _wrap(a)
    if a.data.size == 0:
        raise ValueError(f"max of an empty tensor of shape {a.shape}")
    _normalize_axis(axis, a.ndim)
    return Max.apply(a, axis if axis is None or isinstance(axis, int) else tuple(axis), keepdims)


def var(a, axis=None, keepdims=False, correction=1):
    """Variance with Bessel's ``correction`` (1 = unbiased, torch's default)."""
    a = _wrap(a)
    axes = _normalize_axis(axis, a.ndim)
    n = 1
    for ax in axes:
        n *= a.shape[ax]
    d = a - mean(a, axis, keepdims=True)
    return sum(d * d, axis, keepdims) / (n - correction)


# ---------------------------------------------------------------------------
# shape ops


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape tensor of shape {a.shape} into {tuple(shape)}") from None

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape), None


class Permute(Function):
    @staticmethod
    def forward(ctx, a, dims):
        if sorted(dims) != list(range(a.ndim)):
            raise ValueError(f"permute: dims {dims} are not a permutation of the {a.ndim} axes of shape {a.shape}")
        ctx.dims = dims
        return a.transpose(dims)

    @staticmethod
    def backward(ctx, g):
        inv = tuple(int(i) for i in np.argsort(ctx.dims))
        return g.transpose(inv), None


class Contiguous(Function):
    """A C-contiguous copy of a strided view (``Tensor.contiguous``, torch's name); the gradient passes
    through unchanged. For a transposed view read by several ops that would each copy it (the
    attention block's (B, HW, C) tokens feed three projections, each reshaping them to rows)."""

    @staticmethod
    def forward(ctx, a):
        return backend.get_array_module(a).ascontiguousarray(a)

    @staticmethod
    def backward(ctx, g):
        return (g,)


class Expand(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return backend.get_array_module(a).broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, g):
        return unbroadcast(g, ctx.shape), None


def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def reshape(a, *shape):
    return Reshape.apply(_wrap(a), _shape_arg(shape))


view = reshape


def flatten(a, start_dim=0, end_dim=-1):
    a = _wrap(a)
    s, e = start_dim % a.ndim, end_dim % a.ndim
    return reshape(a, a.shape[:s] + (-1,) + a.shape[e + 1 :])


def contiguous(a):
    """``a`` itself when its data is C-contiguous, else a contiguous copy that stays on the tape."""
    a = _wrap(a)
    return a if a.data.flags.c_contiguous else Contiguous.apply(a)


def permute(a, *dims):
    return Permute.apply(_wrap(a), tuple(d % a.ndim for d in _shape_arg(dims)))


def transpose(a, dim0=None, dim1=None):
    """With no dims: reverse all axes (numpy). With two: swap them (torch)."""
    a = _wrap(a)
    if dim0 is None:
        return permute(a, tuple(reversed(range(a.ndim))))
    dims = list(range(a.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return permute(a, tuple(dims))


def unsqueeze(a, dim):
    a = _wrap(a)
    dim = dim % (a.ndim + 1)
    return reshape(a, a.shape[:dim] + (1,) + a.shape[dim:])


def squeeze(a, dim=None):
    a = _wrap(a)
    if dim is None:
        return reshape(a, tuple(s for s in a.shape if s != 1))
    dim = dim % a.ndim
    if a.shape[dim] != 1:
        return a
    return reshape(a, a.shape[:dim] + a.shape[dim + 1 :])


def expand(a, *shape):
    a = _wrap(a)
    shape = _shape_arg(shape)
    shape = tuple(a.shape[i - (len(shape) - a.ndim)] if s == -1 else s for i, s in enumerate(shape))
    try:
        np.broadcast_shapes(a.shape, shape)
    except ValueError:
        raise ValueError(f"expand: shape {a.shape} cannot be expanded to {shape}") from None
    return Expand.apply(a, shape)


# ---------------------------------------------------------------------------
# indexing and joins


class GetItem(Function):
    # backward scatters g into zeros; np.add.at accumulates repeated indices
    # (an embedding lookup that uses one row twice gets both gradients)
    @staticmethod
    def forward(ctx, a, index):
        ctx.info = (a.shape, a.dtype, index)
        return a[index]

    @staticmethod
    def backward(ctx, g):
        shape, dtype, index = ctx.info
        xp = backend.get_array_module(g)
        out = xp.zeros(shape, dtype=g.dtype)
        if _is_basic_index(index):
            out[index] = g  # slices and integers never repeat an element: a plain store
        else:
            xp.add.at(out, index, g)
        return out, None


def _is_basic_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (slice, int, type(Ellipsis), type(None))) for i in items)


def _index_arrays(index):
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def getitem(a, index):
    a = _wrap(a)
    index = _index_arrays(index)
    try:
        a.data[index]
    except IndexError as e:
        raise ValueError(f"index {index!r} is invalid for a tensor of shape {a.shape}: {e}") from None
    return GetItem.apply(a, index)


class Cat(Function):
    @staticmethod
    def forward(ctx, axis, *arrays):
        ctx.info = (axis, [x.shape[axis] for x in arrays])
        return backend.get_array_module(*arrays).concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, g):
        axis, sizes = ctx.info
        xp = backend.get_array_module(g)
        bounds = np.cumsum(sizes)[:-1].tolist()
        return (None,) + tuple(xp.split(g, bounds, axis=axis))


def cat(tensors: Sequence, dim: int = 0):
    tensors = [_wrap(t) for t in tensors]
    if not tensors:
        raise ValueError("cat: expected a non-empty sequence of tensors")
    ref = tensors[0]
    dim = dim % ref.ndim
    for t in tensors[1:]:
        if t.ndim != ref.ndim or any(s != r for i, (s, r) in enumerate(zip(t.shape, ref.shape)) if i != dim):
            raise ValueError(
                f"cat along dim {dim}: shapes {[tuple(x.shape) for x in tensors]} differ outside that dim"
            )
    return Cat.apply(dim, *tensors)


def stack(tensors: Sequence, dim: int = 0):
    tensors = [_wrap(t) for t in tensors]
    if not tensors:
        raise ValueError("stack: expected a non-empty sequence of tensors")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors must have the same shape, got {sorted(shapes)}")
    dim = dim % (tensors[0].ndim + 1)
    return cat([unsqueeze(t, dim) for t in tensors], dim)


def split(a, split_size_or_sections, dim: int = 0):
    """torch.split: chunks of a given size, or of the listed sizes."""
    a = _wrap(a)
    dim = dim % a.ndim
    n = a.shape[dim]
    if isinstance(split_size_or_sections, int):
        if split_size_or_sections <= 0:
            raise ValueError(f"split: size must be positive, got {split_size_or_sections}")
        sizes = [split_size_or_sections] * (n // split_size_or_sections)
        if n % split_size_or_sections:
            sizes.append(n % split_size_or_sections)
    else:
        sizes = list(split_size_or_sections)
        if _builtins.sum(sizes) != n:
            raise ValueError(f"split: sections {sizes} do not add up to size {n} of dim {dim} (shape {a.shape})")
    out, start = [], 0
    for s in sizes:
        index = (slice(None),) * dim + (slice(start, start + s),)
        out.append(getitem(a, index))
        start += s
    return out


def chunk(a, chunks: int, dim: int = 0):
    """torch.chunk: ``chunks`` pieces of size ceil(n / chunks) (the last may be smaller)."""
    a = _wrap(a)
    n = a.shape[dim % a.ndim]
    size = -(-n // chunks)
    return split(a, size, dim)


class Where(Function):
    @staticmethod
    def forward(ctx, cond, a, b):
        ctx.info = (cond, a.shape, b.shape)
        return backend.get_array_module(a).where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        cond, sa, sb = ctx.info
        zero = g.dtype.type(0)
        xp = backend.get_array_module(g)
        return None, unbroadcast(xp.where(cond, g, zero), sa), unbroadcast(xp.where(cond, zero, g), sb)


def where(cond, a, b):
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    cond = cond.data if isinstance(cond, Tensor) else cond
    a, b = _wrap(a, like), _wrap(b, like)
    return Where.apply(cond, a, b)


class Pad(Function):
    @staticmethod
    def forward(ctx, a, pad_width, value):
        ctx.info = (a.shape, pad_width)
        return backend.get_array_module(a).pad(a, pad_width, mode="constant", constant_values=value)

    @staticmethod
    def backward(ctx, g):
        shape, pad_width = ctx.info
        index = tuple(slice(lo, lo + n) for (lo, _), n in zip(pad_width, shape))
        return g[index], None, None


def pad(a, pad_width, value=0.0):
    """Constant padding, numpy convention: ``pad_width`` is ((before, after), ...) per axis."""
    a = _wrap(a)
    pw = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (a.ndim, 2))
    if (pw < 0).any():
        raise ValueError(f"pad: negative pad widths {pw.tolist()} for shape {a.shape}")
    return Pad.apply(a, tuple(map(tuple, pw.tolist())), value)


# ---------------------------------------------------------------------------
# creation


def tensor(data, requires_grad: bool = False, dtype=None) -> Tensor:
    """Make a Tensor. Python floats/lists get the default dtype (float32)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _dtype(dtype):
    return backend.get_default_dtype() if dtype is None else np.dtype(dtype)


def zeros(*shape, dtype=None, requires_grad=False):
    return Tensor(np.zeros(_shape_arg(shape), dtype=_dtype(dtype)), requires_grad)


def ones(*shape, dtype=None, requires_grad=False):
    return Tensor(np.ones(_shape_arg(shape), dtype=_dtype(dtype)), requires_grad)


def randn(*shape, dtype=None, requires_grad=False, generator=None):
    rng = generator or backend.default_generator()
    return Tensor(rng.standard_normal(_shape_arg(shape)).astype(_dtype(dtype)), requires_grad)


def rand(*shape, dtype=None, requires_grad=False, generator=None):
    rng = generator or backend.default_generator()
    return Tensor(rng.random(_shape_arg(shape)).astype(_dtype(dtype)), requires_grad)


def zeros_like(t, requires_grad=False):
    return Tensor(backend.get_array_module(t).zeros_like(getattr(t, "data", t)), requires_grad)


def ones_like(t, requires_grad=False):
    return Tensor(backend.get_array_module(t).ones_like(getattr(t, "data", t)), requires_grad)
