"""Parameter initialisers with PyTorch's names and formulas.

All draw from npdiff's global generator (``npdiff.manual_seed``) unless a
``generator`` is given, and fill ``tensor.data`` in place.

fan_in / fan_out of a weight of shape (out, in, *k) are in·Πk and out·Πk.
kaiming_uniform_(w, a) draws U(−b, b) with b = gain·√(3/fan_in), gain = √(2/(1+a²));
torch's Linear/Conv default a = √5 gives b = 1/√fan_in.
"""

from __future__ import annotations

import math

from .. import backend


def _fans(shape):
    if len(shape) < 2:
        raise ValueError(f"fan in/out need a tensor with at least 2 dimensions, got shape {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _fill(t, values):
    xp = backend.get_array_module(t.data)
    t.data[...] = xp.asarray(values, dtype=t.dtype)
    return t


def uniform_(t, a=0.0, b=1.0, generator=None):
    rng = generator or backend.default_generator()
    return _fill(t, rng.uniform(a, b, size=t.shape))


def normal_(t, mean=0.0, std=1.0, generator=None):
    rng = generator or backend.default_generator()
    return _fill(t, rng.normal(mean, std, size=t.shape))


def zeros_(t):
    t.data[...] = 0
    return t


def ones_(t):
    t.data[...] = 1
    return t


def constant_(t, value):
    t.data[...] = value
    return t


def calculate_gain(nonlinearity, param=None):
    if nonlinearity in ("linear", "conv2d", "sigmoid", "identity"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope**2))
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def kaiming_uniform_(t, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    fan_in, fan_out = _fans(t.shape)
    fan = fan_in if mode == "fan_in" else fan_out
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return uniform_(t, -bound, bound, generator)


def xavier_uniform_(t, gain=1.0, generator=None):
    fan_in, fan_out = _fans(t.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(t, -bound, bound, generator)


def default_weight_bias_(weight, bias=None):
    """torch's Linear/Conv default: kaiming_uniform_(a=√5) on the weight, U(±1/√fan_in) on the bias."""
    kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = _fans(weight.shape)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        uniform_(bias, -bound, bound)
