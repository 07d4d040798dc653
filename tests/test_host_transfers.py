"""Nothing in an optimisation step reads device memory from the host behind the user's back.

On a GPU every ``float(a)``, ``int(a)``, ``bool(a)``, ``a.item()`` or ``a.tolist()`` of a cupy
array is a device→host copy and a synchronisation. ``HostReads`` is a numpy array that counts
those reads (numpy's arithmetic keeps the subclass, as cupy's keeps arrays on the device), so a
CPU test can count what a GPU step would copy back.
"""

import inspect

import numpy as np

import npdiff as nd
from npdiff.optim import EMA, AdamW, clip_grad_norm_


class HostReads(np.ndarray):
    reads = 0

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        return arr.view(HostReads)  # a reduction gives a 0-d array, as on cupy, not a host scalar

    def _read(self):
        HostReads.reads += 1
        return self.view(np.ndarray)

    def __float__(self):
        return float(self._read())

    def __int__(self):
        return int(self._read())

    def __bool__(self):
        return bool(self._read())

    def item(self, *args):
        return self._read().item(*args)

    def tolist(self):
        return self._read().tolist()


def _params(rng, shapes):
    ps = []
    for shape in shapes:
        p = nd.tensor(rng.standard_normal(shape).view(HostReads), requires_grad=True)
        p.grad = nd.tensor(rng.standard_normal(shape).view(HostReads))
        ps.append(p)
    return ps


def test_clip_adamw_ema_read_the_device_once():
    rng = np.random.default_rng(0)
    ps = _params(rng, [(4, 3), (5,), (2, 3, 3, 3), (7,)])
    opt, ema = AdamW(ps, lr=1e-3), EMA(ps, decay=0.9, warmup=True)
    HostReads.reads = 0
    for norm_type in (2.0, float("inf")):
        before = HostReads.reads
        total = clip_grad_norm_(ps, 0.5, norm_type=norm_type)
        assert HostReads.reads - before == 1, norm_type  # one float() of the reduced norm, not one per tensor
        assert total > 0
    before = HostReads.reads
    opt.step()
    ema.update()
    assert HostReads.reads == before  # the update itself never reads back
    assert all(isinstance(p.data, HostReads) for p in ps) and all(isinstance(s, HostReads) for s in ema.shadow)


def test_clip_grad_norm_single_read_keeps_the_value():
    rng = np.random.default_rng(1)
    ps = _params(rng, [(3, 4), (6,)])
    want = np.sqrt(sum((np.asarray(p.grad.data, np.float64) ** 2).sum() for p in ps))
    assert np.isclose(clip_grad_norm_(ps, 1e9), want, rtol=1e-12)
    want_inf = max(np.abs(np.asarray(p.grad.data)).max() for p in ps)
    assert clip_grad_norm_(ps, 1e9, norm_type=float("inf")) == want_inf


def test_scheduler_steps_stay_on_the_device_and_never_read_back():
    """Every scheduler's ``scale_model_input`` + ``step`` keeps the sample's array type and reads
    nothing back (the noise they add is drawn on the host and sent over: a host→device copy)."""
    import npdiff.schedulers as S

    rng = np.random.default_rng(2)
    names = [n for n in dir(S) if n.endswith("Scheduler") and hasattr(getattr(S, n), "step")]
    assert len(names) >= 6, names
    for name in names:
        s = getattr(S, name)()
        s.set_timesteps(10)
        x, eps = (rng.standard_normal((2, 1, 4, 4)).astype(np.float32).view(HostReads) for _ in range(2))
        t = s.timesteps[0]
        HostReads.reads = 0
        kw = {"generator": np.random.default_rng(1)} if "generator" in inspect.signature(s.step).parameters else {}
        out = s.step(eps, t, s.scale_model_input(x, t), **kw)
        assert isinstance(out.prev_sample, HostReads) and HostReads.reads == 0, name
