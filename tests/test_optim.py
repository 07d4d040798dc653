"""Optimisers against torch.optim (same parameters and gradients, 20 steps), EMA,
clipping, schedules, state round trips, and an end-to-end learning test."""

import numpy as np
import pytest

import npdiff as nd
import npdiff.nn as nn
from npdiff import optim

CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.5, dampening=0.1)),
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
]


def _grads(step, shapes):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_trajectory_matches_torch(name, kwargs):
    torch = pytest.importorskip("torch", reason="torch.optim is the oracle")
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ours = [nn.Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.tensor(a.copy())) for a in init]
    opt = getattr(optim, name)(ours, **kwargs)
    topt = getattr(torch.optim, name)(theirs, **kwargs)
    for step in range(20):
        for p, tp, g in zip(ours, theirs, _grads(step, shapes)):
            p.grad = nd.tensor(g.copy())
            tp.grad = torch.tensor(g.copy())
        opt.step()
        topt.step()
        for p, tp in zip(ours, theirs):
            # 1e-6 relative to the tensor's scale: an element that crosses zero carries the
            # float32 rounding (~1 ulp of the tensor's magnitude) of its earlier values
            ref = tp.detach().numpy()
            np.testing.assert_allclose(p.numpy(), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_optimizer_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    a = [nn.Parameter(rng.standard_normal((3, 2)).astype(np.float32))]
    b = [nn.Parameter(a[0].numpy().copy())]
    oa, ob = optim.AdamW(a, lr=1e-2), optim.AdamW(b, lr=1e-2)
    for step in range(5):
        for p in a + b:
            p.grad = nd.tensor(_grads(step, [(3, 2)])[0])
        oa.step()
        ob.step()
    oc = optim.AdamW(b, lr=0.5)
    oc.load_state_dict(oa.state_dict())
    for step in range(5, 10):
        for p in a + b:
            p.grad = nd.tensor(_grads(step, [(3, 2)])[0])
        oa.step()
        oc.step()
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    bad = oa.state_dict()
    bad["state"]["0.exp_avg"] = np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match=r"\(5, 5\).*\(3, 2\)"):
        oc.load_state_dict(bad)


def test_clip_grad_norm():
    ps = [nn.Parameter(np.zeros(3, np.float32)), nn.Parameter(np.zeros(4, np.float32))]
    ps[0].grad = nd.tensor(np.full(3, 3.0, np.float32))
    ps[1].grad = nd.tensor(np.full(4, 4.0, np.float32))
    total = optim.clip_grad_norm_(ps, 1.0)
    assert np.isclose(total, np.sqrt(27 + 64))
    new = np.sqrt(sum((p.grad.numpy() ** 2).sum() for p in ps))
    assert np.isclose(new, 1.0, rtol=1e-5)
    assert np.isclose(optim.clip_grad_norm_(ps, 10.0), 1.0, rtol=1e-5)  # no-op below the limit


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch", reason="torch is the oracle")
    rng = np.random.default_rng(3)
    gs = [rng.standard_normal(s).astype(np.float32) for s in [(5,), (2, 3)]]
    ps = [nn.Parameter(np.zeros_like(g)) for g in gs]
    tps = [torch.nn.Parameter(torch.zeros(g.shape)) for g in gs]
    for p, tp, g in zip(ps, tps, gs):
        p.grad, tp.grad = nd.tensor(g.copy()), torch.tensor(g.copy())
    assert np.isclose(optim.clip_grad_norm_(ps, 0.5), float(torch.nn.utils.clip_grad_norm_(tps, 0.5)), rtol=1e-6)
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-6)


def test_warmup_cosine_schedule():
    lrs = [optim.warmup_cosine(s, 1.0, warmup_steps=10, total_steps=110) for s in range(111)]
    assert np.isclose(lrs[0], 0.1) and np.isclose(lrs[9], 1.0)
    assert np.isclose(lrs[10], 1.0) and np.isclose(lrs[60], 0.5) and np.isclose(lrs[110], 0.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warm-up
    p = [nn.Parameter(np.zeros(1, np.float32))]
    opt = optim.AdamW(p, lr=2.0)
    sched = optim.cosine_with_warmup(opt, 4, 20)
    assert np.isclose(opt.lr, 0.5)
    for _ in range(3):
        sched.step()
    assert np.isclose(opt.lr, 2.0)


def test_ema_matches_closed_form_and_round_trips():
    p = nn.Parameter(np.zeros(2, np.float32))
    ema = optim.EMA([p], decay=0.9)
    for k in range(1, 6):
        p.data[...] = k
        ema.update()
    expected = sum(0.1 * 0.9 ** (5 - k) * k for k in range(1, 6))  # θ̄₀ = 0
    np.testing.assert_allclose(ema.shadow[0], expected, rtol=1e-6)
    ema.store()
    ema.copy_to()
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6)
    ema.restore()
    np.testing.assert_array_equal(p.numpy(), 5)
    other = optim.EMA([nn.Parameter(np.zeros(2, np.float32))], decay=0.5)
    other.load_state_dict(ema.state_dict())
    np.testing.assert_array_equal(other.shadow[0], ema.shadow[0])
    assert other.decay == 0.9 and other.num_updates == 5
    warm = optim.EMA([p], decay=0.999, warmup=True)
    warm.num_updates = 1
    assert warm.current_decay() < 0.5  # early updates follow the weights closely


def test_mlp_learns_two_moons():
    """A small MLP from npdiff modules, trained with AdamW, separates make_moons."""
    from sklearn.datasets import make_moons

    X, y = make_moons(n_samples=512, noise=0.1, random_state=0)
    X = X.astype(np.float32)
    nd.manual_seed(0)

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = nn.Linear(2, 32), nn.Linear(32, 32), nn.Linear(32, 2)

        def forward(self, x):
            h = nd.tanh(self.l1(x))
            h = nd.tanh(self.l2(h))
            return self.l3(h)

    model = MLP()
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    onehot = np.eye(2, dtype=np.float32)[y]
    for _ in range(300):
        logits = model(X)
        # cross-entropy through log-sum-exp written with autograd primitives
        m = logits.max(axis=1, keepdims=True).detach()
        lse = nd.log(nd.exp(logits - m).sum(axis=1, keepdims=True)) + m
        loss = -((logits - lse) * onehot).sum(axis=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with nd.no_grad():
        acc = (model(X).numpy().argmax(1) == y).mean()
    assert acc >= 0.97, acc


def test_lr_scales_give_one_parameter_its_own_learning_rate():
    """``optimizer.lr_scales[i] = c``: parameter i steps as with lr · c (torch: its own param group);
    the others are untouched by it."""
    from npdiff.optim import SGD, Adam

    g = np.array([0.3, -2.0], np.float32)
    for cls in (SGD, Adam):
        a, b, c = (nd.tensor(np.ones(2, np.float32), requires_grad=True) for _ in range(3))
        opt = cls([a, b], lr=0.01)
        opt.lr_scales = {1: 4.0}
        ref = cls([c], lr=0.04)
        for p in (a, b, c):
            p.grad = nd.tensor(g.copy())
        opt.step()
        ref.step()
        np.testing.assert_array_equal(b.numpy(), c.numpy())
        assert not np.array_equal(a.numpy(), b.numpy())
