"""DomainBed-style results report: ``python -m nac_lightning.report PATH... --out DIR``.

Reads the ``results.jsonl`` files of one or many runs, selects a checkpoint per (dataset, test
domains, trial seed) with each selection method, and reports the chosen checkpoints' OOD
accuracy and the criteria's rank correlation with OOD accuracy (mean ± standard error over
trial seeds), as Markdown / LaTeX tables, a JSON summary and PNG figures.
"""

from nac_lightning.report.records import ReportError, Run, find_results, load_run, load_runs
from nac_lightning.report.summary import DatasetSummary, resolve_criteria, summarize

__all__ = [
    "ReportError",
    "Run",
    "DatasetSummary",
    "find_results",
    "load_run",
    "load_runs",
    "resolve_criteria",
    "summarize",
    "build_report",
]


def build_report(*args, **kwargs):
    """See :func:`nac_lightning.report.__main__.build_report` (imported lazily)."""
    from nac_lightning.report.__main__ import build_report as _build_report

    return _build_report(*args, **kwargs)
