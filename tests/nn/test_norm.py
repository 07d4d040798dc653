"""F.batch_norm's running statistics, the norm modules against torch, bad input."""

import numpy as np
import pytest

import npdiff as nd
import npdiff.nn as nn
import npdiff.nn.functional as F


def _torch_grads(torch, f, arrays, g):
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    out = f(*ts)
    out.backward(torch.tensor(g))
    return out.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]


def _ours_grads(f, arrays, g):
    ts = [None if a is None else nd.tensor(a, requires_grad=True) for a in arrays]
    out = f(*ts)
    out.backward(g)
    return out.numpy(), [None if t is None else t.grad.numpy() for t in ts]


def _assert_oracle(ours, theirs):
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(ours[1], theirs[1]):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [True, False])
def test_torch_oracle_batch_norm_and_running_stats(training):
    torch = pytest.importorskip("torch", reason="torch is the oracle for the norm kernels")
    tf = torch.nn.functional
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 6, 5, 3)).astype(np.float32) * 2 + 1
    g = rng.standard_normal(x.shape).astype(np.float32)
    w, b = (1 + 0.3 * rng.standard_normal((2, 6))).astype(np.float32)
    rm0, rv0 = rng.standard_normal(6).astype(np.float32), (rng.random(6) + 0.5).astype(np.float32)
    rm, rv, trm, trv = rm0.copy(), rv0.copy(), torch.tensor(rm0), torch.tensor(rv0)
    ours = _ours_grads(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training, 0.3), [x, w, b], g)
    theirs = _torch_grads(torch, lambda x, w, b: tf.batch_norm(x, trm, trv, w, b, training, 0.3), [x, w, b], g)
    _assert_oracle(ours, theirs)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_torch_oracle_modules_state_dict_and_outputs(momentum):
    torch = pytest.importorskip("torch", reason="torch is the oracle for the norm modules")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 8, 3, 5)).astype(np.float32)
    pairs = [
        (nn.GroupNorm(4, 8), torch.nn.GroupNorm(4, 8)),
        (nn.GroupNorm(2, 8, affine=False), torch.nn.GroupNorm(2, 8, affine=False)),
        (nn.LayerNorm((3, 5)), torch.nn.LayerNorm((3, 5))),
        (nn.LayerNorm(5, bias=False), torch.nn.LayerNorm(5, bias=False)),
        (nn.BatchNorm2d(8, momentum=momentum), torch.nn.BatchNorm2d(8, momentum=momentum)),
        (nn.BatchNorm2d(8, affine=False, track_running_stats=False),
         torch.nn.BatchNorm2d(8, affine=False, track_running_stats=False)),
    ]
    for ours, theirs in pairs:
        sd = theirs.state_dict()
        assert list(ours.state_dict()) == list(sd)
        for k, v in ours.state_dict().items():
            np.testing.assert_array_equal(v, sd[k].numpy())
        for mode in ("train", "train", "eval"):  # two steps exercise the running averages
            getattr(ours, mode)()
            getattr(theirs, mode)()
            np.testing.assert_allclose(ours(nd.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy(),
                                       rtol=1e-4, atol=1e-5)
        for k, v in ours.state_dict().items():
            np.testing.assert_allclose(v, theirs.state_dict()[k].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: F.group_norm(np.zeros((2, 6, 3)), 4), "(2, 6, 3)"),
        (lambda: F.group_norm(np.zeros(6), 3), "(6,)"),
        (lambda: F.group_norm(np.zeros((2, 6, 3)), 3, np.ones(5)), "(5,)"),
        (lambda: F.layer_norm(np.zeros((2, 6, 3)), (6,)), "(2, 6, 3)"),
        (lambda: F.layer_norm(np.zeros((2, 6, 3)), 3, np.ones(4)), "(4,)"),
        (lambda: F.batch_norm(np.zeros((2, 6, 3)), np.zeros(5), np.ones(5)), "(5,)"),
        (lambda: F.batch_norm(np.zeros((1, 6, 1)), None, None, training=True), "(1, 6, 1)"),
        (lambda: F.batch_norm(np.zeros((2, 6, 3)), None, None), "running_mean"),
        (lambda: nn.GroupNorm(3, 8), "num_channels=8"),
        (lambda: nn.BatchNorm2d(3)(nd.zeros(2, 3, 4)), "(2, 3, 4)"),
    ],
)
def test_bad_input_raises_value_error_naming_the_shapes(call, words):
    with pytest.raises(ValueError, match=__import__("re").escape(words)):
        call()
