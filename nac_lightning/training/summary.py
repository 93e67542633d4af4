"""The end-of-run selection table: what NAC-ME and validation accuracy pick, and correlations."""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig

from nac_lightning.data import DomainBedDataModule
from nac_lightning.selection import compare_selections

__all__ = ["summarize", "format_summary"]


def _num(value: Any, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The selection and correlation tables as Markdown text."""
    sel, cor = summary["selection"], summary["correlation"]
    tests = summary.get("tests", {})
    nac_names = summary["nac_names"]
    head = (
        f"Checkpoint selection: {summary['dataset']}, test env(s) {summary['test_envs']} "
        f"({', '.join(summary['test_env_names'])}), trial_seed {summary['trial_seed']}, "
        f"{summary['n_checkpoints']} checkpoints. Accuracies in %; OOD = held-out 'in' split, "
        f"test = the whole held-out domain, re-tested from the saved checkpoint."
    )
    rows = [
        f"| selection | step | {nac_names[0]} | val acc | OOD acc | test acc |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {nac_names[0]: f"NAC-ME ({nac_names[0]})", "val_acc": "validation (val_acc)"}
    labels.update({"oracle": "oracle (oracle_acc)", "last": "last"})
    for crit in [nac_names[0], "val_acc", *nac_names[1:], "oracle", "last"]:
        rec = sel.get(crit)
        if rec is None:
            continue
        values = summary["records_by_step"].get(str(rec["step"]), {})
        test = tests.get(crit, {}).get("test_acc")
        cells = [labels.get(crit, crit), str(rec["step"])]
        cells.append(_num(values.get(nac_names[0])))
        cells += [_num(values.get("val_acc"), True), _num(rec.get("ood_acc"), True)]
        cells.append(_num(test, True))
        rows.append("| " + " | ".join(cells) + " |")
    corr = [
        "",
        "Rank correlation with OOD accuracy over the checkpoints:",
        "| criterion | spearman | pearson | kendall |",
        "|---|---:|---:|---:|",
    ]
    for crit in [nac_names[0], "val_acc", *nac_names[1:], "oracle"]:
        if crit in cor:
            c = cor[crit]
            label = "oracle_acc" if crit == "oracle" else crit
            corr.append(
                f"| {label} | {_num(c['spearman'])} | {_num(c['pearson'])} | {_num(c['kendall'])} |"
            )
    return "\n".join([head, "", *rows, *corr])


def summarize(
    cfg: DictConfig,
    dm: DomainBedDataModule,
    records: list[dict[str, Any]],
    nac_names: list[str],
    tests: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Selections and correlations over ``records`` (results.jsonl) plus the re-tests."""
    comparison = compare_selections(records, criteria=[*nac_names, "val_acc"])
    by_step = {str(r.get("step")): {k: r.get(k) for k in [*nac_names, "val_acc"]} for r in records}
    return {
        "dataset": dm.dataset_name,
        "test_envs": list(dm.test_envs),
        "test_env_names": [dm.environments[e] for e in dm.test_envs],
        "trial_seed": int(cfg.trial_seed),
        "n_checkpoints": len(records),
        "nac_names": nac_names,
        "selection": comparison["selection"],
        "correlation": comparison["correlation"],
        "tests": tests,
        "records_by_step": by_step,
    }
