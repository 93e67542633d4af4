"""NeuronCoverage against a loop reference, its invariances, NAC-UE, and diagnostics."""

import math
import warnings

import pytest
import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from nac_lightning import NeuronCoverage, kl_uniform_grad, neuron_states


def reference_counts(states, bins):
    """Straightforward loops: bin(s) = min(floor(s * bins), bins - 1), invalid states skipped."""
    counts = torch.zeros(bins, states.shape[1], dtype=torch.long)
    invalid = 0
    for row in states.tolist():
        for n, s in enumerate(row):
            if not math.isfinite(s) or s < 0 or s > 1:
                invalid += 1
                continue
            counts[min(math.floor(s * bins), bins - 1), n] += 1
    return counts, invalid


def reference_nac_me(counts, r):
    bins, n_neurons = counts.shape
    total = 0.0
    for n in range(n_neurons):
        total += sum(min(counts[k, n].item() / r, 1.0) for k in range(bins)) / bins
    return total / n_neurons


EDGE = [0.0, 1.0, 0.5, float("nan"), float("inf"), -float("inf"), -0.1, 1.5, 0.999999, 1e-9, 0.02]


@pytest.mark.parametrize("bins,r", [(50, 3), (7, 1), (10, 2.5)])
def test_matches_loop_reference_on_random_and_edge_values(bins, r):
    states = torch.rand(40, 6)
    edge = torch.tensor(EDGE).repeat(6, 1).T  # (11, 6)
    states = torch.cat([states, edge, torch.rand(5, 6).round()])  # exact 0s and 1s too
    metric = NeuronCoverage(6, bins=bins, r=r)
    metric.update(states)
    ref_counts, ref_invalid = reference_counts(states, bins)
    assert torch.equal(metric.counts, ref_counts)
    assert int(metric.invalid) == ref_invalid == 6 * 5  # nan, inf, -inf, -0.1, 1.5
    with pytest.warns(RuntimeWarning, match="30 states were non-finite or outside"):
        value = metric.compute()
    assert value.item() == pytest.approx(reference_nac_me(ref_counts, r), abs=1e-6)
    # s = 1.0 lands in the last bin; s = 0.5 in bin floor(0.5 * bins)
    assert metric.counts[bins - 1].min() >= 1
    assert metric.counts[min(int(0.5 * bins), bins - 1)].min() >= 1


def test_batch_partition_invariance_and_merge():
    states = torch.rand(300, 16)
    whole = NeuronCoverage(16, bins=20, r=4)
    whole.update(states)
    split = NeuronCoverage(16, bins=20, r=4)
    for chunk in torch.split(states, [1, 37, 100, 2, 160]):
        split.update(chunk)
    assert torch.equal(whole.counts, split.counts)
    a, b = NeuronCoverage(16, bins=20, r=4), NeuronCoverage(16, bins=20, r=4)
    a.update(states[:123])
    b.update(states[123:])
    assert torch.equal(a.counts + b.counts, whole.counts)
    a.merge_state(b)  # torchmetrics' own merge sums the counts (dist_reduce_fx="sum")
    assert torch.equal(a.counts, whole.counts)
    assert a.compute() == whole.compute()


def test_bounds_monotone_in_r_and_full_coverage():
    states = torch.rand(500, 8) ** 3
    values = []
    for r in [0.5, 1, 2, 5, 10, 50, 1000]:
        m = NeuronCoverage(8, bins=10, r=r)
        m.update(states)
        v = m.compute().item()
        assert 0.0 <= v <= 1.0
        values.append(v)
    assert all(x >= y for x, y in zip(values, values[1:]))
    # every bin holds >= r samples -> exactly 1
    grid = (torch.arange(10).float() + 0.5) / 10  # one state in the middle of each bin
    full = grid.repeat_interleave(3).unsqueeze(1).repeat(1, 4)  # 3 per bin, 4 neurons
    m = NeuronCoverage(4, bins=10, r=3)
    m.update(full)
    assert m.compute().item() == 1.0
    # r larger than any bin: NAC-ME is the rescaled sample count n / (r * bins)
    m = NeuronCoverage(8, bins=10, r=1000)
    m.update(states)
    assert m.compute().item() == pytest.approx(500 / (1000 * 10))


def test_no_data_is_nan_with_warning():
    m = NeuronCoverage(3)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert math.isnan(m.compute().item())
    assert any("saw no valid data" in str(x.message) for x in w)
    m = NeuronCoverage(3)
    m.update(torch.full((4, 3), float("nan")))
    with pytest.warns(RuntimeWarning):
        assert math.isnan(m.compute().item())


def test_relation_to_official_threshold_convention():
    """Official code: thresholds linspace(0, 1, M), M-1 bins [t_i, t_i+1), divided by M.

    For states in [0, 1): official(M + 1 thresholds) = ours(M) * M / (M + 1)."""
    bins, r = 12, 3.0
    states = torch.rand(400, 5) ** 2  # in [0, 1)
    thresh = torch.linspace(0, 1, bins + 1)  # official with M_official = bins + 1
    hit = (states.unsqueeze(1) >= thresh[:-1].view(1, -1, 1)) & (
        states.unsqueeze(1) < thresh[1:].view(1, -1, 1)
    )
    t_act = hit.sum(0)  # (bins, N)
    official = (torch.clamp(t_act / r, max=1).sum(0) / (bins + 1)).mean()
    ours = NeuronCoverage(5, bins=bins, r=r)
    ours.update(states)
    assert torch.equal(ours.counts, t_act)
    assert official.item() == pytest.approx(ours.compute().item() * bins / (bins + 1), rel=1e-6)


def test_nac_ue_separates_shifted_inputs():
    """NAC-UE on a toy problem: a trained MLP's penultimate states, InD vs far-shifted inputs.

    Threshold: AUROC > 0.95 (in-distribution scores higher; measured 0.999)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    y = torch.randint(0, 3, (1500,), generator=g)
    x = centers[y] + 0.6 * torch.randn(1500, 2, generator=g)
    body = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    head = nn.Linear(32, 3)
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(head(body(x)), y).backward()
        opt.step()

    def states(inp):
        with torch.no_grad():
            z = body(inp)
            return neuron_states(z, kl_uniform_grad(head(z), head.weight), alpha=1.0)

    metric = NeuronCoverage(32, bins=20, r=5)
    metric.update(states(x[:1000]))
    ind = metric.score(states(x[1000:]))
    shifted = metric.score(states(x[1000:] * 3 + torch.tensor([8.0, -8.0])))
    assert ind.shape == (500,) and bool(((ind >= 0) & (ind <= 1)).all())
    auroc = binary_auroc(
        torch.cat([ind, shifted]), torch.cat([torch.ones(500), torch.zeros(500)]).long()
    )
    assert auroc.item() > 0.95


def test_score_by_hand_and_invalid_states_count_as_uncovered():
    m = NeuronCoverage(2, bins=4, r=2)
    m.update(torch.tensor([[0.1, 0.9], [0.1, 0.9], [0.1, 0.6]]))
    # neuron 0: bin0 has 3 -> cov 1; neuron 1: bin3 has 2 -> 1, bin2 has 1 -> 0.5
    s = m.score(torch.tensor([[0.1, 0.6], [0.9, 0.9], [float("nan"), 0.95]]))
    torch.testing.assert_close(s, torch.tensor([0.75, 0.5, 0.5]))


def test_diagnostics_flag_degenerate_configurations():
    # alpha too small: every state ~0.5 -> one bin per neuron
    z, g = torch.randn(600, 10), torch.randn(600, 10) * 1e-3
    m = NeuronCoverage(10, bins=50, r=100)
    m.update(neuron_states(z, g, alpha=0.1))
    d = m.diagnostics()
    assert d["occupied_bins"] <= 2 and d["state_std"] < 1e-3 and d["n_samples"] == 600
    reasons = m.degeneracy_warnings()
    assert any("alpha is too small" in s for s in reasons)
    assert not any("no bin reached" in s for s in reasons)  # ~300 per central bin >= r
    # spread states but r too large
    m = NeuronCoverage(10, bins=50, r=500)
    m.update(torch.rand(600, 10))
    d = m.diagnostics()
    assert d["occupied_bins"] > 40 and d["saturated"] == 0.0
    assert d["state_mean"] == pytest.approx(0.5, abs=0.02)
    assert any("no bin reached r=500" in s for s in m.degeneracy_warnings())
    # a sound configuration gives no warning
    m = NeuronCoverage(10, bins=10, r=5)
    m.update(torch.rand(600, 10))
    assert m.degeneracy_warnings() == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_neurons"):
        NeuronCoverage(0)
    with pytest.raises(ValueError, match="bins"):
        NeuronCoverage(3, bins=0)
    with pytest.raises(ValueError, match="r must be a positive"):
        NeuronCoverage(3, r=0)
    with pytest.raises(ValueError, match=r"shape \(batch, num_neurons=3\)"):
        NeuronCoverage(3).update(torch.rand(4, 5))


def test_mask_ignores_rows_without_host_indexing():
    states = torch.rand(50, 6)
    states[3, 2] = float("nan")  # an invalid state in a masked-out row is not counted as invalid
    states[4, 1] = float("inf")  # ... but one in a kept row is
    mask = torch.arange(50) % 2 == 0
    mask[3] = False
    masked = NeuronCoverage(6, bins=10, r=2)
    masked.update(states, mask=mask)
    direct = NeuronCoverage(6, bins=10, r=2)
    direct.update(states[mask])
    assert torch.equal(masked.counts, direct.counts)
    assert int(masked.invalid) == 1 == int(direct.invalid)
    with pytest.raises(ValueError, match="mask must have shape"):
        masked.update(states, mask=mask[:10])
