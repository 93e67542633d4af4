"""Aggregating runs into per-dataset tables: mean ± standard error over trial seeds."""

from __future__ import annotations

import fnmatch
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nac_lightning.report.methods import (
    ORACLE,
    TARGET,
    CriterionSelection,
    LastSelection,
    NACMESelection,
    OracleSelection,
    RankCorrelation,
    SelectionMethod,
    TrainingDomainValidation,
)
from nac_lightning.report.records import ReportError, Run, domain_label, environment_names
from nac_lightning.selection import as_float

__all__ = [
    "BASE_CRITERIA",
    "Cell",
    "Row",
    "DatasetSummary",
    "numeric_keys",
    "resolve_criteria",
    "selection_methods",
    "correlation_rows",
    "summarize",
]

BASE_CRITERIA = ("val_acc", "nac_me")
NOT_CRITERIA = {"step", "epoch", "trial_seed", "global_step", TARGET, ORACLE}


@dataclass
class Cell:
    """Per-trial-seed values (fractions) of one table cell; ``flagged`` when a run behind it
    was flagged (stopped early, truncated, ...)."""

    values: dict[int, float] = field(default_factory=dict)
    flagged: bool = False

    @property
    def n(self) -> int:
        """Number of trial seeds."""
        return len(self.values)

    @property
    def mean(self) -> float | None:
        """Mean over trial seeds, in percent (None when empty)."""
        if not self.values:
            return None
        return 100.0 * sum(self.values.values()) / self.n

    @property
    def se(self) -> float | None:
        """Standard error over trial seeds in percent, as DomainBed: std (ddof=0) / sqrt(n)."""
        if not self.values:
            return None
        m = sum(self.values.values()) / self.n
        var = sum((v - m) ** 2 for v in self.values.values()) / self.n
        return 100.0 * math.sqrt(var) / math.sqrt(self.n)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: mean, se (percent), n, per-seed values (fractions), flagged."""
        return {
            "mean": self.mean,
            "se": self.se,
            "n": self.n,
            "values": {str(k): v for k, v in sorted(self.values.items())},
            "flagged": self.flagged,
        }


@dataclass
class Row:
    """One table row: a selection method or a correlation, with a cell per test domain."""

    label: str
    kind: str  # "selection" or "correlation"
    key: str
    cells: dict[str, Cell]
    avg: Cell


@dataclass
class DatasetSummary:
    """Everything reported for one dataset."""

    dataset: str
    columns: list[str]
    rows: list[Row]
    choices: list[dict[str, Any]]
    runs: list[Run]
    n_seeds: dict[str, int]

    @property
    def flagged_runs(self) -> list[Run]:
        """Runs with flags."""
        return [run for run in self.runs if run.flagged]


def numeric_keys(runs: Sequence[Run]) -> list[str]:
    """Top-level keys holding a number in at least one record (candidate criteria)."""
    keys: dict[str, None] = {}
    for run in runs:
        for record in run.records:
            for key, value in record.items():
                if key.startswith("_") or key in NOT_CRITERIA:
                    continue
                if as_float(value) is not None:
                    keys[key] = None
    return list(keys)


def resolve_criteria(runs: Sequence[Run], requested: Sequence[str]) -> list[str]:
    """The criteria to report: ``val_acc``, ``nac_me``, then each requested name or shell
    pattern (e.g. ``"nac_me_*"``; a pattern without "/" skips keys holding "/", the
    diagnostics) matched against the records' numeric keys.

    A requested name or pattern that matches nothing is a :class:`ReportError`.
    """
    available = numeric_keys(runs)
    out = list(BASE_CRITERIA)
    for item in requested:
        item = item.strip()
        if not item:
            continue
        if any(c in item for c in "*?["):
            # a pattern without "/" leaves out diagnostics such as "nac_me_a1_r50/saturated"
            candidates = [k for k in available if "/" in item or "/" not in k]
            matches = [k for k in candidates if fnmatch.fnmatchcase(k, item)]
        else:
            matches = [item] if item in available or item in BASE_CRITERIA else []
        if not matches:
            shown = ", ".join(sorted(available)) or "none"
            raise ReportError(
                f"criterion {item!r} is not a numeric key of any record (available: {shown})"
            )
        out.extend(m for m in matches if m not in out)
    return out


def selection_methods(criteria: Sequence[str]) -> list[SelectionMethod]:
    """Rows in table order: oracle, last, training-domain validation, NAC-ME, extra criteria."""
    methods: list[SelectionMethod] = [OracleSelection(), LastSelection()]
    for crit in criteria:
        if crit == "val_acc":
            methods.append(TrainingDomainValidation())
        elif crit == "nac_me":
            methods.append(NACMESelection())
        else:
            methods.append(CriterionSelection(crit))
    return methods


def correlation_rows(criteria: Sequence[str], method: str = "spearman") -> list[RankCorrelation]:
    """Correlation rows: NAC-ME and extra criteria, validation accuracy, then oracle."""
    ordered = [c for c in criteria if c != "val_acc"] + ["val_acc", ORACLE]
    names = {"nac_me": "NAC-ME", "val_acc": "validation", ORACLE: "oracle"}
    suffix = {"spearman": "rank corr.", "kendall": "Kendall corr.", "pearson": "Pearson corr."}
    return [RankCorrelation(c, f"{names.get(c, c)} {suffix[method]}", method) for c in ordered]


def _avg_cell(cells: dict[str, Cell], columns: Sequence[str]) -> Cell:
    """Per seed, the mean over all test domains (seeds missing a domain are left out)."""
    avg = Cell(flagged=any(cells[c].flagged for c in columns))
    seeds = set.intersection(*(set(cells[c].values) for c in columns)) if columns else set()
    for seed in sorted(seeds):
        avg.values[seed] = sum(cells[c].values[seed] for c in columns) / len(columns)
    return avg


def _summarize_dataset(
    dataset: str, runs: list[Run], criteria: Sequence[str], correlation: str
) -> DatasetSummary:
    names = environment_names(runs)
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.group].append(run)
    test_env_sets = sorted({run.test_envs for run in runs})
    columns = [domain_label(envs, names) for envs in test_env_sets]
    column_of = dict(zip(test_env_sets, columns))

    methods = selection_methods(criteria)
    corr_rows = correlation_rows(criteria, correlation)
    rows: list[Row] = []
    choices: list[dict[str, Any]] = []
    sel_cells = {m.key: {c: Cell() for c in columns} for m in methods}
    corr_cells = {r.key: {c: Cell() for c in columns} for r in corr_rows}
    for (_, test_envs, seed), group_runs in sorted(groups.items()):
        column = column_of[test_envs]
        flagged = any(run.flagged for run in group_runs)
        for method in methods:
            cell = sel_cells[method.key][column]
            choice = method.choose(group_runs)
            if choice is None:
                continue
            cell.flagged |= flagged
            if choice.target is not None:
                cell.values[seed] = choice.target
            choices.append(
                {
                    "test_envs": list(test_envs),
                    "test_domain": column,
                    "trial_seed": seed,
                    "method": method.key,
                    "criterion": getattr(method, "criterion", None),
                    "value": choice.value,
                    "step": choice.record.get("step"),
                    "epoch": choice.record.get("epoch"),
                    "hparams_id": choice.run.hparams_id,
                    "file": str(choice.run.path),
                    TARGET: choice.target,
                    "run_flagged": choice.run.flagged,
                }
            )
        for corr in corr_rows:
            cell = corr_cells[corr.key][column]
            value = corr.value(group_runs)
            if value is not None:
                cell.values[seed] = value
                cell.flagged |= flagged
    for method in methods:
        cells = sel_cells[method.key]
        rows.append(Row(method.name, "selection", method.key, cells, _avg_cell(cells, columns)))
    for corr in corr_rows:
        cells = corr_cells[corr.key]
        rows.append(Row(corr.name, "correlation", corr.key, cells, _avg_cell(cells, columns)))
    n_seeds = {
        column_of[envs]: len({run.trial_seed for run in runs if run.test_envs == envs})
        for envs in test_env_sets
    }
    return DatasetSummary(dataset, columns, rows, choices, runs, n_seeds)


def summarize(
    runs: Sequence[Run], criteria: Sequence[str] = BASE_CRITERIA, correlation: str = "spearman"
) -> list[DatasetSummary]:
    """One :class:`DatasetSummary` per dataset (sorted by name)."""
    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_dataset[run.dataset].append(run)
    return [
        _summarize_dataset(name, by_dataset[name], criteria, correlation)
        for name in sorted(by_dataset)
    ]
