"""Property-based tests (hypothesis) of NeuronCoverage, on arbitrary states including edge
values (exact 0 and 1, bin edges, NaN, +-Inf, values outside [0, 1]):

* batch-partition invariance: any split into batches gives the same histograms and score;
* bounds: NAC-ME is in [0, 1] (NaN only when nothing valid was seen), NAC-UE too;
* monotonicity: NAC-ME never increases with r;
* masking rows (``correct_only``) equals updating with the kept rows only;
* merge = union: summing histograms (``merge_state``, as DDP does) equals one metric on the
  union, score and diagnostics included, even after an earlier ``compute()``.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nac_lightning import NeuronCoverage

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SPECIAL = [0.0, 1.0, 0.5, 0.25, 0.1, 0.9999999, math.nan, math.inf, -math.inf, -0.5, 1.5]
state_values = st.one_of(
    st.floats(0.0, 1.0, width=32),
    st.sampled_from(SPECIAL),
)


@st.composite
def state_batches(draw, max_rows=48, max_neurons=5, n=None):
    n = draw(st.integers(1, max_neurons)) if n is None else n
    b = draw(st.integers(0, max_rows))
    values = draw(arrays(np.float32, (b, n), elements=state_values))
    return torch.from_numpy(values)


bins_st = st.integers(1, 25)
r_st = st.floats(0.1, 40.0, allow_nan=False)


def coverage(states, bins, r, chunks=None):
    m = NeuronCoverage(states.shape[1], bins=bins, r=r)
    for chunk in chunks if chunks is not None else [states]:
        m.update(chunk)
    return m


def value(m):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # invalid states / no data
        return m.compute().item()


def same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


@FAST
@given(states=state_batches(), bins=bins_st, r=r_st, data=st.data())
def test_batch_partition_invariance(states, bins, r, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(states)), max_size=5)))
    edges = [0, *cuts, len(states)]
    chunks = [states[a:b] for a, b in zip(edges, edges[1:])]  # empty chunks included
    whole, split = coverage(states, bins, r), coverage(states, bins, r, chunks)
    assert torch.equal(whole.counts, split.counts)
    assert int(whole.invalid) == int(split.invalid)
    assert same(value(whole), value(split))
    # every valid state is counted exactly once, in one bin
    valid = torch.isfinite(states) & (states >= 0) & (states <= 1)
    assert torch.equal(whole.counts.sum(0), valid.sum(0))
    assert int(whole.invalid) == int((~valid).sum())
    # sample order does not matter either
    perm = torch.randperm(len(states), generator=torch.Generator().manual_seed(len(states)))
    assert torch.equal(coverage(states[perm], bins, r).counts, whole.counts)


@FAST
@given(states=state_batches(), bins=bins_st, r=r_st)
def test_bounds(states, bins, r):
    m = coverage(states, bins, r)
    v = value(m)
    valid = torch.isfinite(states) & (states >= 0) & (states <= 1)
    if valid.any():
        assert 0.0 < v <= 1.0
        # never more than the number of valid states allows
        assert v <= valid.sum().item() / (r * bins * states.shape[1]) + 1e-6
    else:
        assert math.isnan(v)  # no data is NaN, never a plausible-looking 0
    ue = m.score(states)
    assert ue.shape == (len(states),)
    assert bool(((ue >= 0) & (ue <= 1)).all())


@FAST
@given(states=state_batches(), bins=bins_st, rs=st.lists(r_st, min_size=2, max_size=6))
def test_monotone_non_increasing_in_r(states, bins, rs):
    values = [value(coverage(states, bins, r)) for r in sorted(rs)]
    if all(math.isnan(v) for v in values):
        return
    assert all(a >= b for a, b in zip(values, values[1:]))
    # once r <= 1 every occupied bin is fully covered: NAC-ME = occupied share of all bins
    m = coverage(states, bins, 1.0)
    occupied = (m.counts > 0).double().mean().item()
    assert value(m) == pytest.approx(occupied, abs=1e-6)


@FAST
@given(n=st.integers(1, 4), k=st.integers(2, 4), bins=bins_st, r=r_st, data=st.data())
def test_merge_equals_union(n, k, bins, r, data):
    parts = [data.draw(state_batches(max_rows=30, n=n)) for _ in range(k)]
    union = coverage(torch.cat(parts), bins, r)
    metrics = [coverage(p, bins, r) for p in parts]
    summed = sum(m.counts for m in metrics)
    first = metrics[0]
    value(first)  # a compute() before merging must not leave a stale cached score
    for other in metrics[1:]:
        first.merge_state(other)
    assert torch.equal(first.counts, union.counts) and torch.equal(summed, union.counts)
    assert int(first.invalid) == int(union.invalid)
    assert same(value(first), value(union))
    d_merged, d_union = first.diagnostics(), union.diagnostics()
    assert d_merged.keys() == d_union.keys()
    for key, v in d_union.items():
        assert same(d_merged[key], v) or abs(d_merged[key] - v) <= 1e-6, key


@FAST
@given(states=state_batches(), bins=bins_st, data=st.data())
def test_mask_equals_selecting_rows(states, bins, data):
    keep = torch.tensor(
        data.draw(st.lists(st.booleans(), min_size=len(states), max_size=len(states))),
        dtype=torch.bool,
    )
    masked, selected = NeuronCoverage(states.shape[1], bins=bins), coverage(states[keep], bins, 500)
    masked.update(states, mask=keep)
    assert torch.equal(masked.counts, selected.counts)
    assert int(masked.invalid) == int(selected.invalid)  # dropped rows are not "invalid"
