"""Model-selection methods and rank-correlation rows, one class per method (as DomainBed).

Every method sees all runs of one selection group (same dataset, test domains and trial seed;
one run per hyperparameter setting) and chooses one checkpoint among all (hparams, checkpoint)
pairs; the table reports that checkpoint's OOD accuracy (``ood_acc``: the test domains' "in"
split). Ties go to the earliest step, then to the first run in ``hparams_id`` order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nac_lightning.report.records import Run
from nac_lightning.selection import as_float, correlations, select

__all__ = [
    "TARGET",
    "ORACLE",
    "Choice",
    "SelectionMethod",
    "CriterionSelection",
    "TrainingDomainValidation",
    "NACMESelection",
    "OracleSelection",
    "LastSelection",
    "RankCorrelation",
]

TARGET = "ood_acc"
ORACLE = "oracle_acc"

ORACLE_NOTE = (
    "oracle = the checkpoint with the best test-domain 'out' split accuracy (oracle_acc) over "
    "all (hparams, checkpoint) pairs, as in the NAC-ME paper's table; DomainBed's oracle "
    "instead takes the last checkpoint of each run (no early stopping) and picks the "
    "hyperparameters by test-domain 'out' accuracy."
)
LAST_NOTE = (
    "last = the last checkpoint of each run; with several hyperparameter settings, the one "
    "whose last checkpoint has the best training-domain validation accuracy."
)


@dataclass
class Choice:
    """A chosen checkpoint: its run, its record, and the criterion value that chose it."""

    run: Run
    record: dict[str, Any]
    value: float | None

    @property
    def target(self) -> float | None:
        """OOD accuracy (fraction) of the chosen checkpoint, or None if not recorded."""
        return as_float(self.record.get(TARGET))


def _pool(runs: Sequence[Run], records_of=lambda run: run.records) -> list[dict[str, Any]]:
    pooled = []
    for index, run in enumerate(runs):
        for record in records_of(run):
            pooled.append({**record, "_run": index})
    return pooled


class SelectionMethod:
    """Base class: ``choose(runs)`` returns a :class:`Choice` or None (nothing to choose)."""

    #: identifier used in the JSON summary
    key: str = ""
    #: row label in the tables
    name: str = ""

    def choose(self, runs: Sequence[Run]) -> Choice | None:
        """Choose one checkpoint among all (hparams, checkpoint) pairs of ``runs``."""
        raise NotImplementedError

    def _choice(self, runs: Sequence[Run], record: dict | None, key: str) -> Choice | None:
        if record is None:
            return None
        run = runs[record.pop("_run")]
        return Choice(run, record, as_float(record.get(key)))


class CriterionSelection(SelectionMethod):
    """Argmax of a recorded criterion (e.g. ``"nac_me_a1_r50"``) over all (hparams, checkpoint)
    pairs; records where the criterion is null are skipped."""

    def __init__(self, key: str, name: str | None = None):
        self.key = key
        self.criterion = key
        self.name = name or key

    def choose(self, runs: Sequence[Run]) -> Choice | None:
        return self._choice(runs, select(_pool(runs), self.criterion), self.criterion)


class TrainingDomainValidation(CriterionSelection):
    """DomainBed's training-domain validation: argmax of ``val_acc`` (source "out" splits)."""

    def __init__(self):
        super().__init__("val_acc", "training-domain validation")


class NACMESelection(CriterionSelection):
    """NAC-ME: argmax of ``nac_me`` (in-domain coverage of the validation data)."""

    def __init__(self, key: str = "nac_me"):
        super().__init__(key, "NAC-ME" if key == "nac_me" else key)


class OracleSelection(CriterionSelection):
    """Oracle: argmax of ``oracle_acc`` (test domains' "out" split) over all pairs."""

    def __init__(self):
        super().__init__(ORACLE, "oracle")
        self.key = "oracle"


class LastSelection(SelectionMethod):
    """The last checkpoint of each run; across hparams, the best last-checkpoint ``val_acc``."""

    key = "last"
    name = "last"

    def choose(self, runs: Sequence[Run]) -> Choice | None:
        pooled = _pool(runs, lambda run: run.records[-1:])
        record = select(pooled, "val_acc") or (dict(pooled[0]) if pooled else None)
        return self._choice(runs, record, "val_acc")


class RankCorrelation:
    """Correlation of a criterion with OOD accuracy over the checkpoints of each run, averaged
    over the runs (hparams) of a group; runs where it is undefined (NaN) are left out."""

    def __init__(self, criterion: str, name: str, method: str = "spearman"):
        if method not in ("spearman", "pearson", "kendall"):
            raise ValueError(f"unknown correlation {method!r}: use spearman, pearson or kendall")
        self.criterion = criterion
        self.method = method
        self.key = f"{criterion}/{method}"
        self.name = name

    def per_run(self, run: Run) -> float:
        """The correlation over one run's checkpoints (NaN when undefined)."""
        x = [r.get(self.criterion) for r in run.records]
        y = [r.get(TARGET) for r in run.records]
        return correlations(x, y)[self.method]

    def value(self, runs: Sequence[Run]) -> float | None:
        """Mean of :meth:`per_run` over ``runs``, or None if undefined for every run."""
        values = [v for v in (self.per_run(run) for run in runs) if not math.isnan(v)]
        return sum(values) / len(values) if values else None
