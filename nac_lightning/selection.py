"""Checkpoint selection and rank correlations over per-checkpoint records.

A *record* is a mapping describing one validation run (one checkpoint), e.g. one line of
``results.jsonl`` or one entry of ``NACMECallback.history``. Keys used here:

- ``"step"`` (or ``"global_step"``) and ``"epoch"``: where the checkpoint was taken;
- any numeric criterion (``"nac_me"``, ``"val_acc"``, ...), the reported target (``"ood_acc"``)
  and the oracle key (``"oracle_acc"``: test domain "out" split accuracy).

A record whose value for a key is missing, ``None`` or not finite is skipped for that key only.
Shared by the NAC-ME callback (per run) and by ``nac_lightning.report`` (over many runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torchmetrics.functional import kendall_rank_corrcoef, pearson_corrcoef

__all__ = [
    "as_float",
    "record_step",
    "average_ranks",
    "select",
    "last",
    "correlations",
    "compare_selections",
]

CORRELATIONS = ("spearman", "pearson", "kendall")


def as_float(value: Any) -> float | None:
    """Return ``value`` as a finite float, or ``None`` when missing, non-numeric or not finite."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def record_step(record: Mapping[str, Any]) -> int | None:
    """The record's global step: ``"step"``, else ``"global_step"``, else ``None``."""
    for key in ("step", "global_step"):
        value = record.get(key)
        if value is not None:
            return int(value)
    return None


def _order_key(index: int, record: Mapping[str, Any]) -> tuple[float, int]:
    step = record_step(record)
    return (math.inf if step is None else float(step), index)


def select(
    records: Iterable[Mapping[str, Any]], key: str, mode: str = "max"
) -> dict[str, Any] | None:
    """Return the record with the best finite ``key`` (``mode`` "max" or "min").

    Ties go to the earliest step (then to the earliest record in the input order). Records
    whose ``key`` is missing, ``None`` or not finite are ignored; ``None`` when none remain.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"select(): mode must be 'max' or 'min', got {mode!r}")
    sign = 1.0 if mode == "max" else -1.0
    best = None
    best_rank: tuple[float, float, int] | None = None
    for index, record in enumerate(records):
        value = as_float(record.get(key))
        if value is None:
            continue
        step, idx = _order_key(index, record)
        rank = (-sign * value, step, idx)
        if best_rank is None or rank < best_rank:
            best, best_rank = record, rank
    return None if best is None else dict(best)


def last(records: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Return the record with the largest step (the latest in input order on ties or no step)."""
    best = None
    best_rank = None
    for index, record in enumerate(records):
        step, idx = _order_key(index, record)
        step = -math.inf if step == math.inf else step
        if best_rank is None or (step, idx) >= best_rank:
            best, best_rank = record, (step, idx)
    return None if best is None else dict(best)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, tied values sharing their average rank (vectorized)."""
    _, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    return (ends - (counts.to(torch.float64) - 1) / 2)[inverse]


def _nan_correlations() -> dict[str, float]:
    return {name: math.nan for name in CORRELATIONS}


def correlations(x: Sequence[Any], y: Sequence[Any]) -> dict[str, float]:
    """Spearman (tie-aware), Pearson and Kendall (tau-b) correlations of paired series.

    Pairs where either value is ``None`` or not finite are dropped. Every coefficient is NaN
    when fewer than 3 finite pairs remain or either series is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"correlations(): x and y differ in length ({len(x)} vs {len(y)})")
    pairs = [(as_float(a), as_float(b)) for a, b in zip(x, y)]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if len(pairs) < 3:
        return _nan_correlations()
    xs = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
    ys = torch.tensor([b for _, b in pairs], dtype=torch.float64)
    if bool((xs == xs[0]).all()) or bool((ys == ys[0]).all()):
        return _nan_correlations()
    out = {
        # Pearson on average ranks: exact tie-aware Spearman (torchmetrics' spearman_corrcoef
        # is tie-aware too but adds eps=1e-6 to its denominator, so perfect orders give 0.999998)
        "spearman": pearson_corrcoef(average_ranks(xs), average_ranks(ys)),
        "pearson": pearson_corrcoef(xs, ys),
        "kendall": kendall_rank_corrcoef(xs, ys),
    }
    return {name: float(value) for name, value in out.items()}


def _summary(record: Mapping[str, Any] | None, keys: Sequence[str]) -> dict[str, Any] | None:
    if record is None:
        return None
    out: dict[str, Any] = {"step": record_step(record), "epoch": record.get("epoch")}
    for key in keys:
        out[key] = as_float(record.get(key))
    return out


def compare_selections(
    records: Sequence[Mapping[str, Any]],
    criteria: Sequence[str] = ("nac_me", "val_acc"),
    target: str = "ood_acc",
    oracle: str = "oracle_acc",
) -> dict[str, dict[str, Any]]:
    """Compare checkpoint-selection criteria on one set of per-checkpoint records.

    Returns ``{"selection": {crit: {"step", "epoch", crit, target} or None, ...,
    "oracle": {...}, "last": {...}}, "correlation": {crit: {"spearman", "pearson", "kendall"},
    ..., "oracle": {...}}}``. Each criterion selects the checkpoint with its highest value
    (:func:`select`); "oracle" selects by ``oracle`` (the test domain's "out" split accuracy)
    and "last" is the latest checkpoint; every selection reports ``target`` of its checkpoint.
    Correlations are computed with ``target`` over the checkpoints (:func:`correlations`).
    """
    records = list(records)
    selection: dict[str, Any] = {}
    correlation: dict[str, Any] = {}
    target_values = [r.get(target) for r in records]
    for crit in [*criteria, oracle]:
        name = "oracle" if crit == oracle else crit
        selection[name] = _summary(select(records, crit), [crit, target])
        correlation[name] = correlations([r.get(crit) for r in records], target_values)
    selection["last"] = _summary(last(records), [target])
    return {"selection": selection, "correlation": correlation}
