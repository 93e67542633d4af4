"""Tests of nac_lightning.selection: picks, ties, skipped values and correlations vs scipy."""

import math

import pytest
import torch
from scipy import stats

from nac_lightning.selection import compare_selections, correlations, last, select


def _rec(step, **values):
    return {"step": step, "epoch": step // 10, **values}


def test_select_picks_best_and_breaks_ties_by_earliest_step():
    records = [_rec(30, a=0.5), _rec(10, a=0.9), _rec(20, a=0.9), _rec(40, a=0.1)]
    assert select(records, "a")["step"] == 10
    assert select(records, "a", mode="min")["step"] == 40
    # the input order does not matter for the tie-break
    assert select(list(reversed(records)), "a")["step"] == 10


def test_select_skips_missing_none_and_nan_values():
    records = [_rec(0, a=None), _rec(1, a=float("nan")), _rec(2), _rec(3, a=0.2), _rec(4, a=0.1)]
    assert select(records, "a")["step"] == 3
    assert select([_rec(0, a=None), _rec(1)], "a") is None
    assert select([], "a") is None
    with pytest.raises(ValueError, match="mode"):
        select(records, "a", mode="best")


def test_select_accepts_global_step_and_tensors():
    history = [
        {"global_step": 5, "epoch": 0, "nac_me": torch.tensor(0.25)},
        {"global_step": 2, "epoch": 0, "nac_me": 0.25},
    ]
    assert select(history, "nac_me")["global_step"] == 2
    assert last(history)["global_step"] == 5


TIED_X = [1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0]
TIED_Y = [0.2, 0.1, 0.5, 0.4, 0.4, 0.9, 0.3, 0.3]


def test_correlations_match_scipy_on_tied_data():
    out = correlations(TIED_X, TIED_Y)
    assert out["spearman"] == pytest.approx(stats.spearmanr(TIED_X, TIED_Y).statistic, abs=1e-6)
    assert out["pearson"] == pytest.approx(stats.pearsonr(TIED_X, TIED_Y).statistic, abs=1e-6)
    assert out["kendall"] == pytest.approx(stats.kendalltau(TIED_X, TIED_Y).statistic, abs=1e-6)
    # a tie-unaware Spearman (ordinal ranks) differs on these data: make sure we are not it
    ordinal = stats.pearsonr(stats.rankdata(TIED_X, "ordinal"), stats.rankdata(TIED_Y, "ordinal"))
    assert abs(out["spearman"] - ordinal.statistic) > 1e-3


def test_correlations_drop_missing_pairs():
    x = [*TIED_X, None, 7.0, float("nan")]
    y = [*TIED_Y, 0.5, None, 0.1]
    assert correlations(x, y) == pytest.approx(correlations(TIED_X, TIED_Y))


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([1.0, 2.0], [1.0, 2.0]),  # fewer than 3 pairs
        ([1.0, 2.0, None, 4.0], [1.0, None, 3.0, 2.0]),  # 2 finite pairs
        ([1.0, 1.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.4]),  # constant x
        ([0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]),  # constant y
    ],
)
def test_correlations_nan_when_undefined(x, y):
    out = correlations(x, y)
    assert set(out) == {"spearman", "pearson", "kendall"}
    assert all(math.isnan(v) for v in out.values())


def test_correlations_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="length"):
        correlations([1.0, 2.0, 3.0], [1.0, 2.0])


def test_compare_selections_known_answer():
    records = [
        _rec(0, nac_me=0.1, val_acc=0.50, ood_acc=0.40, oracle_acc=0.42),
        _rec(10, nac_me=0.3, val_acc=0.70, ood_acc=0.45, oracle_acc=0.60),
        _rec(20, nac_me=0.5, val_acc=0.65, ood_acc=0.55, oracle_acc=0.50),
        _rec(30, nac_me=None, val_acc=0.60, ood_acc=0.50, oracle_acc=0.52),
    ]
    out = compare_selections(records)
    sel = out["selection"]
    assert list(sel) == ["nac_me", "val_acc", "oracle", "last"]
    assert sel["nac_me"] == {"step": 20, "epoch": 2, "nac_me": 0.5, "ood_acc": 0.55}
    assert sel["val_acc"] == {"step": 10, "epoch": 1, "val_acc": 0.70, "ood_acc": 0.45}
    assert sel["oracle"] == {"step": 10, "epoch": 1, "oracle_acc": 0.60, "ood_acc": 0.45}
    assert sel["last"] == {"step": 30, "epoch": 3, "ood_acc": 0.50}
    corr = out["correlation"]
    assert corr["nac_me"]["spearman"] == pytest.approx(1.0, abs=1e-12)  # 3 finite pairs, same order
    ood = [0.40, 0.45, 0.55, 0.50]
    assert corr["val_acc"]["spearman"] == pytest.approx(
        stats.spearmanr([0.50, 0.70, 0.65, 0.60], ood).statistic, abs=1e-6
    )
    assert corr["oracle"]["kendall"] == pytest.approx(
        stats.kendalltau([0.42, 0.60, 0.50, 0.52], ood).statistic, abs=1e-6
    )


def test_compare_selections_without_values_gives_none_and_nan():
    out = compare_selections([_rec(0, ood_acc=0.3)], criteria=("nac_me",))
    assert out["selection"]["nac_me"] is None
    assert out["selection"]["oracle"] is None
    assert out["selection"]["last"]["step"] == 0
    assert math.isnan(out["correlation"]["nac_me"]["spearman"])


def test_average_ranks_match_scipy():
    from nac_lightning.selection import average_ranks

    values = [3.0, 1.0, 3.0, 2.0, 1.0, 3.0, 0.5]
    ranks = average_ranks(torch.tensor(values, dtype=torch.float64))
    assert ranks.tolist() == pytest.approx(stats.rankdata(values, "average").tolist())
