"""Known-answer selections, correlations and mean ± standard error over trial seeds."""

import math

import numpy as np
import pytest
from report_helpers import A0_H0, A0_H1, A1_H0, B0_H0, make_records, write_jsonl
from scipy import stats

from nac_lightning.report.methods import LastSelection, TrainingDomainValidation
from nac_lightning.report.records import ReportError, load_runs
from nac_lightning.report.summary import Cell, resolve_criteria, summarize
from nac_lightning.report.tables import format_cell, latex_report, markdown_table


def _rows(summary):
    return {row.key: row for row in summary.rows}


def _spearman(rows, column):
    return stats.spearmanr([r[column] for r in rows], [r[2] for r in rows]).statistic


def test_cell_mean_and_standard_error_follow_domainbed():
    cell = Cell({0: 0.35, 1: 0.55, 2: 0.60})
    data = np.array([0.35, 0.55, 0.60])
    assert cell.n == 3
    assert cell.mean == pytest.approx(100 * data.mean())
    assert cell.se == pytest.approx(100 * np.std(data / np.sqrt(3)))  # DomainBed's format_mean
    assert format_cell(cell) == f"{100 * data.mean():.1f} ± {100 * np.std(data) / np.sqrt(3):.1f}"
    assert format_cell(Cell({4: 0.2})) == "20.0"
    assert format_cell(Cell()) == "-"
    assert format_cell(Cell({0: 0.2, 1: 0.4}, flagged=True), digits=2) == "30.00 ± 7.07†"
    assert format_cell(Cell({0: 0.2, 1: 0.4}), latex=True) == "30.0 $\\pm$ 7.1"


def test_selection_over_all_hparams_and_checkpoints(sweep):
    (summary,) = summarize(load_runs([sweep]))
    assert summary.dataset == "Toy"
    assert summary.columns == ["A", "B"]
    assert summary.n_seeds == {"A": 2, "B": 1}
    rows = _rows(summary)
    expected = {
        # (A seed 0: pooled over h0 and h1, A seed 1, B seed 0)
        "val_acc": (0.35, 0.55, 0.20),  # h1 step 10 (val 0.80); step 10; step 0
        "nac_me": (0.30, 0.60, 0.40),  # h1 step 0 (nac 0.35); step 20; step 20
        "oracle": (0.60, 0.55, 0.40),  # h1 step 20 (oracle 0.62); step 10; step 20
        "last": (0.60, 0.60, 0.40),  # last ckpts: h1 has the better val_acc (0.75 > 0.70)
    }
    for key, (a0, a1, b0) in expected.items():
        row = rows[key]
        assert row.cells["A"].values == pytest.approx({0: a0, 1: a1}), key
        assert row.cells["B"].values == pytest.approx({0: b0}), key
        # Avg: only seed 0 covers both test domains
        assert row.avg.values == pytest.approx({0: (a0 + b0) / 2}), key
    val = rows["val_acc"]
    assert val.cells["A"].mean == pytest.approx(45.0)
    assert val.cells["A"].se == pytest.approx(100 * 0.1 / math.sqrt(2))
    assert [row.label for row in summary.rows[:4]] == [
        "oracle",
        "last",
        "training-domain validation",
        "NAC-ME",
    ]
    chosen = [
        c
        for c in summary.choices
        if c["method"] == "val_acc" and c["trial_seed"] == 0 and c["test_domain"] == "A"
    ]
    assert len(chosen) == 1
    assert (chosen[0]["hparams_id"], chosen[0]["step"], chosen[0]["value"]) == ("h1", 10, 0.80)
    table = markdown_table(summary)
    assert "| training-domain validation | 45.0 ± 7.1 | 20.0 | 27.5 |" in table


def test_rank_correlations_per_run_averaged_then_over_seeds(sweep):
    (summary,) = summarize(load_runs([sweep]))
    rows = _rows(summary)
    nac = rows["nac_me/spearman"]
    a_seed0 = (_spearman(A0_H0, 1) + _spearman(A0_H1, 1)) / 2
    assert nac.cells["A"].values == pytest.approx({0: a_seed0, 1: _spearman(A1_H0, 1)})
    assert nac.cells["B"].values == pytest.approx({0: _spearman(B0_H0, 1)})
    val = rows["val_acc/spearman"]
    assert val.cells["B"].values[0] == pytest.approx(-1.0)
    oracle = rows["oracle_acc/spearman"]
    assert oracle.cells["A"].values[1] == pytest.approx(_spearman(A1_H0, 3))
    assert [r.label for r in summary.rows[4:]] == [
        "NAC-ME rank corr.",
        "validation rank corr.",
        "oracle rank corr.",
    ]
    (kendall,) = summarize(load_runs([sweep]), correlation="kendall")
    b = stats.kendalltau([r[1] for r in B0_H0], [r[2] for r in B0_H0]).statistic
    assert _rows(kendall)["nac_me/kendall"].cells["B"].values[0] == pytest.approx(b)


def test_ties_go_to_the_earliest_step_then_first_hparams(tmp_path):
    h0 = [(0.5, 0.1, 0.10, 0.1), (0.9, 0.1, 0.20, 0.1), (0.9, 0.1, 0.30, 0.1)]
    h1 = [(0.9, 0.1, 0.40, 0.1), (0.9, 0.1, 0.50, 0.1), (0.2, 0.1, 0.60, 0.1)]
    write_jsonl(tmp_path / "a", make_records(h0, hparams_id="h0"))
    write_jsonl(tmp_path / "b", make_records(h1, hparams_id="h1"))
    runs = load_runs([tmp_path])
    choice = TrainingDomainValidation().choose(runs)
    assert (choice.run.hparams_id, choice.record["step"], choice.target) == ("h1", 0, 0.40)
    h1_late = [(0.5, 0.1, 0.40, 0.1), (0.9, 0.1, 0.50, 0.1), (0.2, 0.1, 0.60, 0.1)]
    write_jsonl(tmp_path / "b", make_records(h1_late, hparams_id="h1"))
    choice = TrainingDomainValidation().choose(load_runs([tmp_path]))
    assert (choice.run.hparams_id, choice.record["step"]) == ("h0", 10)
    last = LastSelection().choose(load_runs([tmp_path]))
    assert (last.run.hparams_id, last.target) == ("h0", 0.30)


def test_null_criterion_values_are_skipped_and_missing_criterion_gives_empty_cells(tmp_path):
    values = [(0.5, None, 0.1, 0.1), (0.6, None, 0.2, 0.2), (0.4, 0.3, 0.3, 0.3)]
    write_jsonl(tmp_path / "a", make_records(values))
    (summary,) = summarize(load_runs([tmp_path]))
    rows = _rows(summary)
    assert rows["nac_me"].cells["A"].values == {0: 0.3}
    # 1 finite pair: the correlation is undefined and left out
    assert rows["nac_me/spearman"].cells["A"].values == {}
    assert format_cell(rows["nac_me/spearman"].avg) == "-"


def test_extra_criteria_by_name_and_pattern(tmp_path):
    extra = {
        "nac_me_a1_r50": [0.9, 0.1, 0.2],
        "nac_me_a2_r50": [0.1, 0.2, 0.9],
        "nac_me_a1_r50/saturated": [0.0, 0.1, 0.2],  # a diagnostic: not matched by "nac_me_*"
        "note": ["x", "y", "z"],  # not numeric: never a criterion
    }
    write_jsonl(tmp_path / "a", make_records(A0_H0, **extra))
    runs = load_runs([tmp_path])
    assert resolve_criteria(runs, []) == ["val_acc", "nac_me"]
    assert resolve_criteria(runs, ["nac_me_a2_r50"]) == ["val_acc", "nac_me", "nac_me_a2_r50"]
    crits = resolve_criteria(runs, ["nac_me_*", "val_acc"])
    assert crits == ["val_acc", "nac_me", "nac_me_a1_r50", "nac_me_a2_r50"]
    assert resolve_criteria(runs, ["*/saturated"]) == [
        "val_acc",
        "nac_me",
        "nac_me_a1_r50/saturated",
    ]
    with pytest.raises(ReportError, match="'nac_me_a9' is not a numeric key.*nac_me_a1_r50"):
        resolve_criteria(runs, ["nac_me_a9"])
    with pytest.raises(ReportError, match="'note' is not a numeric key"):
        resolve_criteria(runs, ["note"])
    (summary,) = summarize(runs, crits)
    rows = _rows(summary)
    assert rows["nac_me_a1_r50"].cells["A"].values == {0: 0.40}  # step 0
    assert rows["nac_me_a2_r50"].cells["A"].values == {0: 0.45}  # step 20
    assert "nac_me_a2_r50 rank corr." in [r.label for r in summary.rows]


def test_fallback_column_names_and_flagged_cells(tmp_path):
    bare = make_records(A0_H0)
    for r in bare:
        del r["args"]
    write_jsonl(tmp_path / "a", bare)
    write_jsonl(tmp_path / "b", make_records(A1_H0[:2], trial_seed=1, environments=()))
    runs = load_runs([tmp_path])
    (summary,) = summarize(runs)
    assert summary.columns == ["env0"]
    assert [r.trial_seed for r in summary.flagged_runs] == [1]
    assert all(row.cells["env0"].flagged for row in summary.rows[:4])
    assert "env0" in markdown_table(summary)
    assert "†" in markdown_table(summary)
    assert "$^\\dagger$" in latex_report([summary])
