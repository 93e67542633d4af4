"""Command line: ``python -m nac_lightning.report PATH... --out DIR [--latex] [--criteria ...]``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nac_lightning.report.records import ReportError, Run, load_runs
from nac_lightning.report.summary import DatasetSummary, resolve_criteria, summarize
from nac_lightning.report.tables import NOTES, latex_report, markdown_report
from nac_lightning.serialization import json_safe

__all__ = ["build_report", "summary_json", "main"]


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "file": str(run.path),
        "dataset": run.dataset,
        "test_envs": list(run.test_envs),
        "trial_seed": run.trial_seed,
        "hparams_id": run.hparams_id,
        "n_records": len(run.records),
        "last_step": run.last_step,
        "flags": list(run.flags),
    }


def summary_json(
    summaries: Sequence[DatasetSummary],
    runs: Sequence[Run],
    criteria: Sequence[str],
    correlation: str,
) -> dict[str, Any]:
    """The JSON summary: runs (with flags), and per dataset its rows' cells and choices."""
    datasets = []
    for s in summaries:
        rows = []
        for row in s.rows:
            cells = {c: row.cells[c].to_json() for c in s.columns}
            rows.append(
                {
                    "label": row.label,
                    "kind": row.kind,
                    "key": row.key,
                    "cells": cells,
                    "Avg": row.avg.to_json(),
                }
            )
        datasets.append(
            {
                "dataset": s.dataset,
                "columns": s.columns,
                "n_seeds": s.n_seeds,
                "rows": rows,
                "choices": s.choices,
            }
        )
    return json_safe(
        {
            "criteria": list(criteria),
            "correlation": correlation,
            "notes": list(NOTES),
            "runs": [_run_json(r) for r in runs],
            "datasets": datasets,
        }
    )


def build_report(
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    criteria: Sequence[str] = (),
    latex: bool = False,
    correlation: str = "spearman",
    digits: int = 1,
    figures: bool = True,
    figure_key: str = "nac_me",
) -> dict[str, Any]:
    """Load the runs under ``paths`` and build the report; write it under ``out`` if given.

    Writes ``report.md``, ``report.json``, ``report.tex`` (with ``latex``) and
    ``figures/*.png``. Returns ``{"markdown", "latex" (or None), "summary" (the JSON dict),
    "files" (written paths)}``. User errors raise :class:`ReportError`.
    """
    runs = load_runs(paths)
    crits = resolve_criteria(runs, criteria)
    summaries = summarize(runs, crits, correlation)
    markdown = markdown_report(summaries, len(runs), digits, correlation)
    tex = latex_report(summaries, digits) if latex else None
    summary = summary_json(summaries, runs, crits, correlation)
    files: list[Path] = []
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ReportError(f"--out {out}: exists and is not a folder")
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(markdown, encoding="utf-8")
        files.append(out / "report.md")
        (out / "report.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        files.append(out / "report.json")
        if tex is not None:
            (out / "report.tex").write_text(tex, encoding="utf-8")
            files.append(out / "report.tex")
        if figures:
            from nac_lightning.report.figures import write_figures

            files.extend(write_figures(summaries, out / "figures", key=figure_key))
    return {"markdown": markdown, "latex": tex, "summary": summary, "files": files}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nac-report",
        description="DomainBed-style tables of checkpoint selection (training-domain validation, "
        "NAC-ME, oracle, last) and rank correlations, from results.jsonl files.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="results.jsonl files or folders searched recursively (e.g. multirun/)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="write report.md, report.json, figures/ (and report.tex) here"
    )
    parser.add_argument("--latex", action="store_true", help="also write report.tex")
    parser.add_argument(
        "--criteria",
        action="append",
        default=[],
        metavar="KEYS",
        help="extra selection criteria, comma-separated record keys or shell "
        "patterns (e.g. 'nac_me_a1_r50' or 'nac_me_*'); val_acc and nac_me are "
        "always reported",
    )
    parser.add_argument(
        "--correlation",
        choices=("spearman", "kendall", "pearson"),
        default="spearman",
        help="correlation of the correlation rows",
    )
    parser.add_argument("--digits", type=int, default=1, help="decimals in the tables")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument(
        "--figure-key",
        default="nac_me",
        metavar="KEY",
        help="the NAC-ME criterion the figures plot (default nac_me), e.g. nac_me_a10_r20",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nac-report`` / ``python -m nac_lightning.report``; returns the exit code
    (0 ok, 2 bad input, reported on stderr without a traceback)."""
    args = _parser().parse_args(argv)
    criteria = [c for item in args.criteria for c in item.split(",")]
    try:
        result = build_report(
            args.paths,
            args.out,
            criteria,
            args.latex,
            args.correlation,
            args.digits,
            not args.no_figures,
            args.figure_key,
        )
    except ReportError as err:
        print(f"nac-report: error: {err}", file=sys.stderr)
        return 2
    print(result["markdown"], end="")
    for run in result["summary"]["runs"]:
        if run["flags"]:
            print(f"nac-report: warning: {run['file']}: {'; '.join(run['flags'])}", file=sys.stderr)
    if result["files"]:
        print(f"\nwrote {len(result['files'])} file(s) under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
