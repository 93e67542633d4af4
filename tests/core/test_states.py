"""kl_uniform_grad (closed form) vs autograd, and neuron_states pooling."""

import pytest
import torch
import torchvision
from torch import nn

from nac_lightning import kl_uniform_grad, kl_uniform_grad_autograd, neuron_states, pool_neurons


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_closed_form_matches_autograd_on_resnet_head():
    model = torchvision.models.resnet18(weights=None, num_classes=7).double().eval()
    feats = {}
    model.avgpool.register_forward_hook(lambda m, i, o: feats.__setitem__("z", o))
    x = torch.randn(6, 3, 64, 64, dtype=torch.float64)
    logits = model(x)
    z = feats["z"]  # (B, 512, 1, 1), in the graph of the logits
    g_auto = kl_uniform_grad_autograd(logits, z).flatten(1)
    g_closed = kl_uniform_grad(logits, model.fc.weight)
    assert g_closed.shape == (6, 512)
    assert _rel_err(g_closed, g_auto) < 1e-6
    # parameters' .grad are untouched
    assert all(p.grad is None for p in model.parameters())


def test_closed_form_matches_autograd_on_mlp_and_float32():
    mlp = nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5)
    )
    x = torch.randn(9, 10)
    hidden = mlp[:4](x)
    logits = mlp[4](hidden)
    g_auto = kl_uniform_grad_autograd(logits, hidden)
    g_closed = kl_uniform_grad(logits, mlp[4].weight)
    assert _rel_err(g_closed, g_auto) < 1e-6
    assert all(p.grad is None for p in mlp.parameters())


def test_autograd_is_per_sample_and_handles_several_layers():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(5, 4)
    h1 = mlp[:2](x)
    h2 = mlp[2:4](h1)
    logits = mlp[4](h2)
    g1, g2 = kl_uniform_grad_autograd(logits, [h1, h2])
    for i in range(5):  # each sample alone gives its own slice
        a1 = mlp[:2](x[i : i + 1])
        a2 = mlp[2:4](a1)
        s1, s2 = kl_uniform_grad_autograd(mlp[4](a2), (a1, a2))
        torch.testing.assert_close(g1[i : i + 1], s1)
        torch.testing.assert_close(g2[i : i + 1], s2)
    # closed form on the head input equals the autograd result for h2
    torch.testing.assert_close(kl_uniform_grad(logits, mlp[4].weight), g2)


def test_closed_form_value_by_hand():
    # logits all equal -> softmax is uniform -> gradient is exactly zero
    w = torch.randn(4, 3)
    assert torch.count_nonzero(kl_uniform_grad(torch.zeros(2, 4), w)) == 0
    # two classes: p - 1/2 times W
    logits = torch.tensor([[0.0, torch.log(torch.tensor(3.0))]])  # p = (0.25, 0.75)
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(kl_uniform_grad(logits, w), torch.tensor([[-0.25, 0.5]]))


def test_errors_are_clear():
    with pytest.raises(ValueError, match="logits must have shape"):
        kl_uniform_grad(torch.zeros(3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="weight must have shape"):
        kl_uniform_grad(torch.zeros(2, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="does not require grad"):
        kl_uniform_grad_autograd(torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="differ in shape"):
        neuron_states(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="cannot pool"):
        pool_neurons(torch.zeros(2, 3, 4, 5, 6))


def test_neuron_states_pooling_and_formula():
    z = torch.randn(3, 5)
    g = torch.randn(3, 5)
    torch.testing.assert_close(neuron_states(z, g, 2.0), torch.sigmoid(2.0 * z * g))
    # conv maps: sum-pool z and g separately, then multiply
    zc, gc = torch.randn(3, 5, 4, 4), torch.randn(3, 5, 4, 4)
    expect = torch.sigmoid(0.5 * zc.sum((2, 3)) * gc.sum((2, 3)))
    torch.testing.assert_close(neuron_states(zc, gc, 0.5), expect)
    # token maps (B, T, C): sum over tokens
    zt, gt = torch.randn(3, 7, 5), torch.randn(3, 7, 5)
    torch.testing.assert_close(
        neuron_states(zt, gt, 0.5), torch.sigmoid(0.5 * zt.sum(1) * gt.sum(1))
    )
    # bf16 inputs give float32 states in [0, 1]
    s = neuron_states(z.bfloat16(), g.bfloat16(), 1.0)
    assert s.dtype == torch.float32 and bool(((s >= 0) & (s <= 1)).all())
