"""Rendering dataset summaries as Markdown (and LaTeX) tables."""

from __future__ import annotations

from collections.abc import Sequence

from nac_lightning.report.methods import LAST_NOTE, ORACLE_NOTE
from nac_lightning.report.summary import Cell, DatasetSummary

__all__ = ["format_cell", "markdown_table", "markdown_report", "latex_report", "NOTES"]

FLAG = "†"

NOTES = (
    "Values are in percent: mean ± standard error over trial seeds (standard error as in "
    "DomainBed: population std / sqrt(n); a single seed shows the value alone).",
    "Selection rows: OOD accuracy (test domains' 'in' split, ood_acc) of the checkpoint each "
    "method chooses among all (hparams, checkpoint) pairs of a (dataset, test domains, trial "
    "seed); ties go to the earliest step.",
    "Correlation rows: correlation of the criterion with OOD accuracy over the checkpoints of "
    "each run, averaged over the runs (hparams) of a (test domains, trial seed), then over "
    "trial seeds. Undefined correlations (fewer than 3 checkpoints, constant series) are "
    "left out.",
    "Avg: per trial seed, the mean over the test domains (seeds missing a domain are left out).",
    ORACLE_NOTE,
    LAST_NOTE,
    f"{FLAG}: uses a run that was flagged (stopped early or truncated; see 'Flagged runs').",
)


def format_cell(cell: Cell, digits: int = 1, latex: bool = False) -> str:
    """Format as "71.6 ± 1.2" ("71.6" for one seed, "-" when empty), plus a flag mark if flagged."""
    if cell.mean is None:
        return "-"
    text = f"{cell.mean:.{digits}f}"
    if cell.n > 1:
        pm = " $\\pm$ " if latex else " ± "
        text += f"{pm}{cell.se:.{digits}f}"
    if cell.flagged:
        text += "$^\\dagger$" if latex else FLAG
    return text


def _seeds_text(summary: DatasetSummary) -> str:
    counts = set(summary.n_seeds.values())
    if len(counts) == 1:
        n = counts.pop()
        return f"{n} trial seed{'s' if n != 1 else ''} per test domain"
    return "trial seeds per test domain: " + ", ".join(
        f"{col} {n}" for col, n in summary.n_seeds.items()
    )


def markdown_table(summary: DatasetSummary, digits: int = 1) -> str:
    """The dataset's table as GitHub Markdown."""
    header = ["selection", *summary.columns, "Avg"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.rows:
        cells = [format_cell(row.cells[c], digits) for c in summary.columns]
        cells.append(format_cell(row.avg, digits))
        lines.append("| " + " | ".join([row.label, *cells]) + " |")
    return "\n".join(lines)


def _flag_lines(summaries: Sequence[DatasetSummary]) -> list[str]:
    lines = []
    for summary in summaries:
        for run in summary.flagged_runs:
            where = (
                f"{run.dataset} test_envs={list(run.test_envs)} trial_seed={run.trial_seed} "
                f"hparams_id={run.hparams_id}"
            )
            lines.append(f"- `{run.path}` ({where}): " + "; ".join(run.flags))
    return lines


def markdown_report(
    summaries: Sequence[DatasetSummary], n_runs: int, digits: int = 1, correlation: str = "spearman"
) -> str:
    """The full Markdown report: one table per dataset, notes, and the flagged runs."""
    parts = [
        "# NAC-ME model selection report",
        "",
        f"{n_runs} run(s); correlation: {correlation}.",
    ]
    for summary in summaries:
        parts += [
            "",
            f"## Dataset: {summary.dataset}",
            "",
            f"{len(summary.runs)} run(s), {_seeds_text(summary)}.",
            "",
            markdown_table(summary, digits),
        ]
    parts += ["", "## Notes", ""] + [f"- {note}" for note in NOTES]
    flags = _flag_lines(summaries)
    parts += ["", "## Flagged runs", ""] + (flags or ["None."])
    return "\n".join(parts) + "\n"


def _tex(text: str) -> str:
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    return text.replace("±", "$\\pm$").replace(FLAG, "$^\\dagger$")


def latex_report(summaries: Sequence[DatasetSummary], digits: int = 1) -> str:
    """A standalone LaTeX document (booktabs) with one table per dataset."""
    out = [
        "\\documentclass{article}",
        "\\usepackage{booktabs}",
        "\\usepackage{adjustbox}",
        "\\begin{document}",
        "\\section*{NAC-ME model selection}",
    ]
    for summary in summaries:
        cols = len(summary.columns) + 1
        out += [
            f"\\subsection*{{{_tex(summary.dataset)}}}",
            f"% {_seeds_text(summary)}",
            "\\begin{center}",
            "\\adjustbox{max width=\\textwidth}{%",
            "\\begin{tabular}{l" + "c" * cols + "}",
            "\\toprule",
            " & ".join(
                ["\\textbf{Selection}"]
                + [f"\\textbf{{{_tex(c)}}}" for c in [*summary.columns, "Avg"]]
            )
            + " \\\\",
            "\\midrule",
        ]
        previous = None
        for row in summary.rows:
            if previous == "selection" and row.kind == "correlation":
                out.append("\\midrule")
            previous = row.kind
            cells = [format_cell(row.cells[c], digits, latex=True) for c in summary.columns]
            cells.append(format_cell(row.avg, digits, latex=True))
            out.append(" & ".join([_tex(row.label), *cells]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}}", "\\end{center}"]
    out += ["\\begin{itemize}"] + [f"\\item {_tex(n)}" for n in NOTES] + ["\\end{itemize}"]
    out.append("\\end{document}")
    return "\n".join(out) + "\n"
