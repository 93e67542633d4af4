"""Writing and logging the NAC-ME history and the end-of-fit selection/correlation report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

from nac_lightning.serialization import json_safe

__all__ = ["flatten_report", "log_report", "HISTORY_COLUMNS"]


def flatten_report(report: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """``{"<prefix>/selected_ood_acc/<crit>": ..., "<prefix>/spearman/<crit>": ...}``."""
    flat: dict[str, float] = {}
    target = report.get("target", "ood_acc")
    for crit, sel in report["selection"].items():
        if sel is not None and sel.get(target) is not None:
            flat[f"{prefix}/selected_{target}/{crit}"] = float(sel[target])
            flat[f"{prefix}/selected_step/{crit}"] = float(sel["step"])
    for crit, corr in report["correlation"].items():
        for kind, value in corr.items():
            flat[f"{prefix}/{kind}/{crit}"] = float(value)
    return flat


HISTORY_COLUMNS = ("epoch", "global_step", "nac_me", "val_acc", "ood_acc")


def _history_rows(history: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    extra = sorted({k for h in history for k in h if k not in HISTORY_COLUMNS})
    columns = [*HISTORY_COLUMNS, *extra]
    rows = [[json_safe(h.get(c)) for c in columns] for h in history]
    return columns, rows


def log_report(
    loggers: Sequence[Logger],
    name: str,
    report: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    step: int,
) -> None:
    """Log the flattened report to every logger; with W&B also a history table, a scatter
    plot of NAC-ME vs OOD accuracy and summary values."""
    flat = flatten_report(report, name)
    for logger in loggers:
        if flat:
            logger.log_metrics(flat, step=step)
        if isinstance(logger, WandbLogger):
            _log_wandb(logger, name, flat, history)


def _log_wandb(
    logger: WandbLogger, name: str, flat: Mapping[str, float], history: Sequence[Mapping]
) -> None:
    import wandb

    columns, rows = _history_rows(history)
    table = wandb.Table(columns=columns, data=rows)
    payload: dict[str, Any] = {f"{name}/history": table}
    if any(h.get("ood_acc") is not None for h in history):
        payload[f"{name}/scatter"] = wandb.plot.scatter(
            table, "nac_me", "ood_acc", title=f"{name} vs OOD accuracy (one point per validation)"
        )
    logger.experiment.log(payload)
    logger.experiment.summary.update(dict(flat))
