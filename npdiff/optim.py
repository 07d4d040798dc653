"""Optimisers, gradient clipping, learning-rate schedules and EMA.

Update rules and defaults follow torch.optim exactly, so that the same
parameters and gradients give the same trajectory (tested against torch for
20 steps). Every optimiser keeps its per-parameter state as arrays in
``self.state[i]`` (index ``i`` of the parameter in the list it was given), so
``state_dict()`` is a flat, safetensors-friendly structure.

Notation: θ parameter, g gradient, lr step size, λ weight decay,
m/v first and second moment estimates, t step count (from 1).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .backend import device_of, get_array_module, to_device


def _params_list(params):
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    return params


class Optimizer:
    """Common machinery: parameter list, hyper-parameters, state, (de)serialisation."""

    def __init__(self, params, defaults: dict):
        self.params = _params_list(params)
        self.defaults = dict(defaults)
        self.lr = defaults["lr"]
        self.lr_scales: dict[int, float] = {}  # parameter index → its lr factor (torch: a param group's own lr)
        self.state: dict[int, dict] = {}

    def zero_grad(self, set_to_none: bool = True):
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.data[...] = 0

    def _grads(self):
        for i, p in enumerate(self.params):
            if p.grad is not None:
                yield i, p, p.grad.data

    def state_dict(self) -> dict:
        """{"hyper": {...}, "state": {"i.name": array or number}} — flat and pickle-free."""
        flat = {}
        for i, st in self.state.items():
            for k, v in st.items():
                flat[f"{i}.{k}"] = v
        hyper = {k: v for k, v in self.defaults.items()}
        hyper["lr"] = self.lr
        return {"hyper": hyper, "state": flat}

    def load_state_dict(self, sd: dict):
        hyper, flat = sd["hyper"], sd["state"]
        self.defaults.update({k: v for k, v in hyper.items() if k != "lr"})
        self.lr = hyper["lr"]
        self.state = {}
        for key, v in flat.items():
            i, name = key.split(".", 1)
            i = int(i)
            if i >= len(self.params):
                raise ValueError(f"optimizer state names parameter {i}, but this optimizer has {len(self.params)}")
            if hasattr(v, "shape") and v.shape not in ((), self.params[i].shape):
                raise ValueError(
                    f"optimizer state {key!r} has shape {v.shape}, parameter {i} has shape {self.params[i].shape}"
                )
            if hasattr(v, "shape") and v.shape:  # a copy on the parameter's device
                v = to_device(v, device_of(self.params[i].data)).copy()
            self.state.setdefault(i, {})[name] = v

    def step(self):  # pragma: no cover - interface
        raise NotImplementedError


class SGD(Optimizer):
    """torch.optim.SGD.

    g ← g + λθ;  with momentum μ:  b ← μ b + (1 − dampening) g  (b = g on the first step);
    nesterov: g ← g + μ b, else g ← b;  θ ← θ − lr g.
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov momentum requires momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize))

    def step(self):
        d = self.defaults
        for i, p, g in self._grads():
            g = -g if d["maximize"] else g
            if d["weight_decay"]:
                g = g + d["weight_decay"] * p.data
            if d["momentum"]:
                st = self.state.setdefault(i, {})
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = g.copy()
                else:
                    buf = st["momentum_buffer"]
                    buf *= d["momentum"]
                    buf += (1 - d["dampening"]) * g
                buf = st["momentum_buffer"]
                g = g + d["momentum"] * buf if d["nesterov"] else buf
            p.data -= (self.lr * self.lr_scales.get(i, 1.0)) * g


class Adam(Optimizer):
    """torch.optim.Adam (Kingma & Ba 2015, Alg. 1), L2 weight decay added to g.

    m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
    θ ← θ − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε)
    """

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))

    def step(self):
        d = self.defaults
        b1, b2 = d["betas"]
        for i, p, g in self._grads():
            xp = get_array_module(g)
            lr = self.lr * self.lr_scales.get(i, 1.0)
            st = self.state.setdefault(i, {})
            if "step" not in st:
                st["step"] = 0
                st["exp_avg"] = xp.zeros_like(p.data)
                st["exp_avg_sq"] = xp.zeros_like(p.data)
                if d["amsgrad"]:
                    st["max_exp_avg_sq"] = xp.zeros_like(p.data)
            st["step"] += 1
            t = st["step"]
            if d["weight_decay"]:
                if self.decoupled:  # Loshchilov & Hutter 2019: θ ← θ(1 − lr λ)
                    p.data *= 1 - lr * d["weight_decay"]
                else:
                    g = g + d["weight_decay"] * p.data
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m += (1 - b1) * (g - m)  # torch's lerp form of m ← β₁m + (1−β₁)g
            v *= b2
            v += (1 - b2) * (g * g)
            bc1 = 1 - b1**t
            bc2 = 1 - b2**t
            if d["amsgrad"]:
                xp.maximum(st["max_exp_avg_sq"], v, out=st["max_exp_avg_sq"])
                v = st["max_exp_avg_sq"]
            # torch's arithmetic order: denom = √v / √bc2 + ε; θ −= (lr / bc1) · m / denom
            denom = xp.sqrt(v) / math.sqrt(bc2) + d["eps"]
            p.data -= (lr / bc1) * (m / denom)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (default λ = 0.01)."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def clip_grad_norm_(params, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False):
    """Scale all gradients so their joint norm is at most ``max_norm``; returns the norm before
    clipping as a 0-d array on the gradients' device (as torch returns a tensor).

    ‖g‖ = (Σ_i Σ_j |g_ij|^p)^(1/p) over all gradients (max |g_ij| for p = ∞), then every g_i is
    multiplied by min(1, max_norm / (‖g‖ + 1e-6)) — computed on the device, so that clipping
    reads nothing back to the host (``error_if_nonfinite`` reads the norm once to check it)."""
    grads = [p.grad.data for p in params if p.grad is not None]
    if not grads:
        return 0.0
    xp = get_array_module(grads[0])
    # per-gradient reductions stay on the arrays' device (0-d arrays), summed in float64
    if norm_type == math.inf:
        total = functools.reduce(xp.maximum, [abs(g).max().astype(np.float64) for g in grads])
    else:
        total = sum((abs(g.astype(np.float64)) ** norm_type).sum() for g in grads) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(float(total)):
        raise RuntimeError(f"the total norm of gradients is {float(total)}; cannot clip")
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)  # 0-d; exactly 1 when no clipping is needed
    for g in grads:
        g *= coef.astype(g.dtype)
    return total


# ---------------------------------------------------------------------------
# learning-rate schedules: functions of the step, and a scheduler that sets opt.lr


def warmup_cosine(step: int, base_lr: float, warmup_steps: int = 0, total_steps: int | None = None,
                  min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then cosine decay to ``min_lr``
    at ``total_steps`` (constant after warm-up when ``total_steps`` is None)."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if total_steps is None:
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


class LRScheduler:
    """Sets ``optimizer.lr = fn(step)`` on every ``step()``; state is the step counter."""

    def __init__(self, optimizer: Optimizer, fn):
        self.optimizer, self.fn = optimizer, fn
        self.last_step = 0
        optimizer.lr = fn(0)

    def step(self):
        self.last_step += 1
        self.optimizer.lr = self.fn(self.last_step)

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self):
        return {"last_step": self.last_step}

    def load_state_dict(self, sd):
        self.last_step = int(sd["last_step"])
        self.optimizer.lr = self.fn(self.last_step)


def linear_warmup(optimizer: Optimizer, warmup_steps: int) -> LRScheduler:
    base = optimizer.lr
    return LRScheduler(optimizer, lambda s: warmup_cosine(s, base, warmup_steps))


def cosine_with_warmup(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> LRScheduler:
    base = optimizer.lr
    return LRScheduler(optimizer, lambda s: warmup_cosine(s, base, warmup_steps, total_steps, min_lr))


# ---------------------------------------------------------------------------
# exponential moving average of parameters


class EMA:
    """Shadow copy θ̄ ← d θ̄ + (1 − d) θ of a model's parameters.

    The decay is the constant ``decay``, or with ``warmup`` (as diffusers'
    EMAModel with use_ema_warmup) max(min_decay, min(decay, 1 − (1 + n/inv_gamma)^(−power)))
    at update n, so that early averages are not dominated by the random init.
    """

    def __init__(self, parameters, decay: float = 0.999, warmup: bool = False, inv_gamma: float = 1.0,
                 power: float = 2 / 3, min_decay: float = 0.0):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.params = list(parameters)
        self.shadow = [p.data.copy() for p in self.params]
        self.decay, self.warmup, self.inv_gamma, self.power, self.min_decay = decay, warmup, inv_gamma, power, min_decay
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        value = 1 - (1 + n / self.inv_gamma) ** (-self.power)
        return float(min(self.decay, max(self.min_decay, value)))

    def update(self):
        self.num_updates += 1
        d = self.current_decay()
        for s, p in zip(self.shadow, self.params):
            s *= d
            s += (1 - d) * p.data

    def copy_to(self, parameters=None):
        """Write the averaged weights into ``parameters`` (default: the tracked ones)."""
        targets = self.params if parameters is None else list(parameters)
        if len(targets) != len(self.shadow):
            raise ValueError(f"EMA holds {len(self.shadow)} tensors, got {len(targets)} parameters")
        for s, p in zip(self.shadow, targets):
            if p.shape != s.shape:
                raise ValueError(f"EMA tensor of shape {s.shape} cannot be copied into a parameter of shape {p.shape}")
            p.data[...] = s

    def store(self):
        """Remember the live weights (to restore after evaluating with EMA weights)."""
        self._backup = [p.data.copy() for p in self.params]

    def restore(self):
        for b, p in zip(self._backup, self.params):
            p.data[...] = b
        del self._backup

    def state_dict(self) -> dict:
        return {"shadow": {str(i): s for i, s in enumerate(self.shadow)},
                "hyper": {"decay": self.decay, "warmup": self.warmup, "inv_gamma": self.inv_gamma,
                          "power": self.power, "min_decay": self.min_decay, "num_updates": self.num_updates}}

    def load_state_dict(self, sd: dict):
        shadow = sd["shadow"]
        if len(shadow) != len(self.shadow):
            raise ValueError(f"EMA state has {len(shadow)} tensors, this EMA tracks {len(self.shadow)}")
        for i, s in enumerate(self.shadow):
            src = shadow[str(i)]
            if src.shape != s.shape:
                raise ValueError(f"EMA tensor {i}: state shape {src.shape} vs parameter shape {s.shape}")
            s[...] = to_device(src, device_of(s))  # a host checkpoint onto the device: one copy
        h = sd["hyper"]
        self.decay, self.warmup, self.inv_gamma = h["decay"], bool(h["warmup"]), h["inv_gamma"]
        self.power, self.min_decay, self.num_updates = h["power"], h["min_decay"], int(h["num_updates"])
