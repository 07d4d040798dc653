"""Nothing in an optimisation step reads device memory from the host behind the user's back.

On a GPU every ``float(a)``, ``int(a)``, ``bool(a)``, ``a.item()`` or ``a.tolist()`` of a cupy
array is a device→host copy and a synchronisation. The simulated device's arrays
(``npdiff.backend.SimulatedDeviceArray``: numpy memory, cupy's rules, every copy counted by
``backend.transfers()``) are plain numpy underneath, so these tests need neither a GPU nor the
CUDA simulator (none of these steps launches a kernel). The whole training step is counted
under the simulator: tests/cuda/test_train_cuda.py.
"""

import inspect

import numpy as np
import pytest

import npdiff as nd
from npdiff import backend
from npdiff.optim import EMA, AdamW, clip_grad_norm_

Device = backend.SimulatedDeviceArray


def _reads():
    return backend.transfers()["reads"]


def _params(rng, shapes):
    ps = []
    for shape in shapes:
        p = nd.tensor(rng.standard_normal(shape).view(Device), requires_grad=True)
        p.grad = nd.tensor(rng.standard_normal(shape).view(Device))
        ps.append(p)
    return ps


def test_clip_adamw_ema_never_read_the_device():
    rng = np.random.default_rng(0)
    ps = _params(rng, [(4, 3), (5,), (2, 3, 3, 3), (7,)])
    opt, ema = AdamW(ps, lr=1e-3), EMA(ps, decay=0.9, warmup=True)
    backend.reset_transfers()
    for norm_type in (2.0, float("inf")):
        total = clip_grad_norm_(ps, 0.5, norm_type=norm_type)
        assert isinstance(total, Device) and total.shape == ()  # the norm stays on the device, as torch's
    opt.step()
    ema.update()
    assert backend.transfers() == {"reads": 0, "writes": 0}  # clipping and the update never copy
    assert total > 0 and _reads() == 1  # reading the norm is the one copy
    assert all(isinstance(p.data, Device) for p in ps) and all(isinstance(s, Device) for s in ema.shadow)


def test_host_arrays_mixed_with_device_arrays_are_refused_as_cupy_does():
    d = np.ones(3, np.float32).view(Device)
    with pytest.raises(backend.DeviceTransferError, match="host"):
        d + np.ones(3, np.float32)
    with pytest.raises(backend.DeviceTransferError, match="host"):
        d[np.array([0, 1])]
    assert isinstance(d * 2.0 + np.float32(1), Device)  # Python and numpy scalars are kernel arguments
    backend.reset_transfers()
    xp = backend.get_array_module(d)
    assert xp is backend.simulated_cupy and isinstance(xp.zeros(2), Device) and isinstance(d.sum(), Device)
    assert backend.transfers() == {"reads": 0, "writes": 0}
    xp.asarray([1.0, 2.0])  # host data given to the device's module: copied over
    back = backend.to_device(d, "cpu")
    assert type(back) is np.ndarray and backend.transfers() == {"reads": 1, "writes": 1}


def test_clip_grad_norm_single_read_keeps_the_value():
    rng = np.random.default_rng(1)
    ps = _params(rng, [(3, 4), (6,)])
    want = np.sqrt(sum((np.asarray(p.grad.data, np.float64) ** 2).sum() for p in ps))
    assert np.isclose(clip_grad_norm_(ps, 1e9), want, rtol=1e-12)
    want_inf = max(np.abs(np.asarray(p.grad.data)).max() for p in ps)
    assert float(clip_grad_norm_(ps, 1e9, norm_type=float("inf"))) == want_inf


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
        x, eps = (rng.standard_normal((2, 1, 4, 4)).astype(np.float32).view(Device) for _ in range(2))
        t = s.timesteps[0]
        backend.reset_transfers()
        kw = {"generator": np.random.default_rng(1)} if "generator" in inspect.signature(s.step).parameters else {}
        out = s.step(eps, t, s.scale_model_input(x, t), **kw)
        assert isinstance(out.prev_sample, Device) and _reads() == 0, name
