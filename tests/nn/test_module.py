"""Module semantics: registration order and dotted names as torch, state dicts, init."""

import numpy as np
import pytest

import npdiff as nd
import npdiff.nn as nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.layers = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, 2 * d, bias=False)])
        self.heads = nn.ModuleDict({"a": nn.Linear(2 * d, 1), "b": nn.Identity()})
        self.emb = nn.Embedding(5, d)
        self.scale = nn.Parameter(np.ones(d, np.float32))

    def forward(self, x):
        return self.heads["a"](self.layers[1](self.layers[0](self.proj(x))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(Block(3), Block(3))
        self.out = nn.Linear(1, 1)


EXPECTED_NAMES = [
    f"body.{i}.{n}"
    for i in range(2)
    for n in ["scale", "proj.weight", "proj.bias", "layers.0.weight", "layers.0.bias", "layers.1.weight",
              "heads.a.weight", "heads.a.bias", "emb.weight"]
] + ["out.weight", "out.bias"]


def test_named_parameters_order_and_names():
    # direct parameters first, then submodules in assignment order (torch's rule)
    assert [n for n, _ in Net().named_parameters()] == EXPECTED_NAMES


def test_named_parameters_match_torch():
    torch = pytest.importorskip("torch", reason="torch is the oracle for parameter naming")
    tnn = torch.nn

    class TBlock(tnn.Module):
        def __init__(self, d):
            super().__init__()
            self.proj = tnn.Linear(d, d)
            self.layers = tnn.ModuleList([tnn.Linear(d, d), tnn.Linear(d, 2 * d, bias=False)])
            self.heads = tnn.ModuleDict({"a": tnn.Linear(2 * d, 1), "b": tnn.Identity()})
            self.emb = tnn.Embedding(5, d)
            self.scale = tnn.Parameter(torch.ones(d))

    class TNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.body = tnn.Sequential(TBlock(3), TBlock(3))
            self.out = tnn.Linear(1, 1)

    tnet, net = TNet(), Net()
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in tnet.named_parameters()]
    assert list(net.state_dict()) == list(tnet.state_dict())
    for (n, p), (_, tp) in zip(net.named_parameters(), tnet.named_parameters()):
        assert p.shape == tuple(tp.shape), n


def test_state_dict_round_trip_and_errors():
    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
        assert p.data is not q.data  # copied, not shared
    sd = a.state_dict()
    sd["out.weight"] = np.zeros((2, 2), np.float32)
    del sd["body.0.proj.bias"]
    sd["body.9.extra"] = np.zeros(1)
    with pytest.raises(ValueError) as e:
        b.load_state_dict(sd)
    msg = str(e.value)
    assert "out.weight: checkpoint (2, 2) vs model (1, 1)" in msg
    assert "missing keys: body.0.proj.bias" in msg
    assert "unexpected keys: body.9.extra" in msg
    sd["out.weight"] = np.zeros((1, 1), np.float32)
    missing, unexpected = b.load_state_dict(sd, strict=False)
    assert missing == ["body.0.proj.bias"] and unexpected == ["body.9.extra"]


def test_buffers_are_in_state_dict_but_not_parameters():
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("running", np.zeros(2, np.float32))
            self.register_buffer("scratch", np.zeros(2, np.float32), persistent=False)

    m = WithBuffer()
    m.running = np.ones(2, np.float32)  # reassignment updates the buffer
    assert list(m.state_dict()) == ["running", "lin.weight", "lin.bias"]  # own tensors before children, as torch
    np.testing.assert_array_equal(m.state_dict()["running"], 1)
    assert len(list(m.parameters())) == 2


def test_train_eval_apply_zero_grad():
    net = Net()
    net.eval()
    assert all(not m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    seen = []
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "Net" and seen.count("Block") == 2
    x = nd.randn(4, 3)
    net.body[0](x).sum().backward()
    assert net.body[0].proj.weight.grad is not None
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_default_init_statistics():
    # torch: Linear weight and bias ~ U(±1/√in); Embedding ~ N(0, 1)
    nd.manual_seed(0)
    lin = nn.Linear(400, 300)
    bound = 1 / np.sqrt(400)
    w = lin.weight.numpy()
    assert w.min() >= -bound and w.max() <= bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.02 * bound
    assert abs(lin.bias.numpy()).max() <= bound
    e = nn.Embedding(1000, 64).weight.numpy()
    assert abs(e.mean()) < 0.01 and abs(e.std() - 1) < 0.01


def test_default_init_matches_torch_distribution():
    torch = pytest.importorskip("torch", reason="torch is the oracle for default init")
    t = torch.nn.Linear(256, 128)
    m = nn.Linear(256, 128)
    bound = 1 / np.sqrt(256)
    for ours, theirs in [(m.weight.numpy(), t.weight.detach().numpy()), (m.bias.numpy(), t.bias.detach().numpy())]:
        assert abs(ours.std() - theirs.std()) < 0.15 * theirs.std()
        assert abs(ours).max() <= bound and abs(theirs).max() <= bound
    assert abs(m.weight.numpy()).max() > 0.99 * bound  # same support, filled to the edge


def test_linear_and_embedding_errors():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"\(4, 5\).*in_features=3"):
        lin(nd.zeros(4, 5))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        nn.Embedding(5, 2)(np.array([0, 5]))
    with pytest.raises(RuntimeError, match="super"):
        class Broken(nn.Module):
            def __init__(self):
                self.x = nn.Linear(1, 1)
        Broken()
