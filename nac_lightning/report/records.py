"""Loading and validating ``results.jsonl`` files (one line per validation run) into runs."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "REQUIRED_KEYS",
    "ReportError",
    "Run",
    "find_results",
    "load_run",
    "load_runs",
    "environment_names",
    "domain_label",
]

RESULTS_NAME = "results.jsonl"

#: keys every line must hold (values of the accuracy keys may be null)
REQUIRED_KEYS = ("step", "val_acc", "ood_acc", "dataset", "test_envs", "trial_seed")
NUMERIC_OPTIONAL = ("nac_me", "oracle_acc")


class ReportError(Exception):
    """A problem with the user's input (missing path, malformed file, ...): shown without traceback."""


@dataclass
class Run:
    """One training run: the validated records of one ``results.jsonl`` file, sorted by step.

    ``flags`` lists what is odd about the run (truncated last line, stopped early, duplicate
    steps); flagged runs are still used, up to their last valid line.
    """

    path: Path
    records: list[dict[str, Any]]
    dataset: str
    test_envs: tuple[int, ...]
    trial_seed: int
    hparams_id: str
    flags: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def group(self) -> tuple[str, tuple[int, ...], int]:
        """The selection group: ``(dataset, test_envs, trial_seed)``."""
        return (self.dataset, self.test_envs, self.trial_seed)

    @property
    def identity(self) -> tuple[str, tuple[int, ...], int, str]:
        """``(dataset, test_envs, trial_seed, hparams_id)``: unique per run."""
        return (self.dataset, self.test_envs, self.trial_seed, self.hparams_id)

    @property
    def last_step(self) -> int:
        """Step of the run's last record."""
        return self.records[-1]["step"]

    @property
    def flagged(self) -> bool:
        """Whether anything about the run was flagged."""
        return bool(self.flags)


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (searched recursively) into the ``results.jsonl`` files they hold.

    Raises :class:`ReportError` for a missing path or a folder without any ``results.jsonl``.
    Each file is returned once, even if reached through several paths.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    paths = list(paths)
    if not paths:
        raise ReportError("no input path given: pass results.jsonl files or folders holding them")
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReportError(f"{path}: no such file or folder")
        if path.is_dir():
            files = sorted(p for p in path.rglob(RESULTS_NAME) if p.is_file())
            if not files:
                raise ReportError(
                    f"{path}: no {RESULTS_NAME} found in this folder or below it "
                    "(pass the output folder of a training run or multirun)"
                )
        else:
            files = [path]
        for file in files:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found


def _stable_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.md5(text.encode()).hexdigest()[:12]


def _validate(record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ReportError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ReportError(
            f"{where}: missing required key(s) {', '.join(missing)} "
            f"(every line needs {', '.join(REQUIRED_KEYS)}; was it written by nac_lightning's "
            "results writer?)"
        )
    step = record["step"]
    if isinstance(step, bool) or not isinstance(step, int):
        raise ReportError(f"{where}: 'step' must be an integer, got {step!r}")
    if not isinstance(record["dataset"], str):
        raise ReportError(f"{where}: 'dataset' must be a string, got {record['dataset']!r}")
    envs = record["test_envs"]
    if isinstance(envs, int) and not isinstance(envs, bool):
        envs = [envs]
    if (
        not isinstance(envs, list)
        or not envs
        or not all(isinstance(e, int) and not isinstance(e, bool) for e in envs)
    ):
        raise ReportError(
            f"{where}: 'test_envs' must be a non-empty list of integers, got {envs!r}"
        )
    seed = record["trial_seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ReportError(f"{where}: 'trial_seed' must be an integer, got {seed!r}")
    for key in ("val_acc", "ood_acc", *NUMERIC_OPTIONAL):
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ReportError(f"{where}: '{key}' must be a number or null, got {value!r}")
    out = dict(record)
    out["test_envs"] = sorted(envs)
    if out.get("hparams_id") is None:
        out["hparams_id"] = (
            _stable_hash(record.get("hparams")) if "hparams" in record else "default"
        )
    out["hparams_id"] = str(out["hparams_id"])
    return out


def load_run(path: str | Path) -> Run:
    """Read and validate one ``results.jsonl`` file.

    Blank lines are skipped. A final line that is not valid JSON and lacks its newline (a run
    that crashed while writing) is ignored and flagged; any other malformed line, a line
    without the required keys, or a change of dataset / test_envs / trial_seed / hparams_id
    inside the file raises :class:`ReportError` naming the file and line number. Duplicate
    steps (a resumed run that did not drop its later lines) keep the last line and are flagged.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot read ({err})") from err
    lines = text.split("\n")
    ends_with_newline = text.endswith("\n")
    last_index = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    if last_index < 0:
        raise ReportError(f"{path}: empty file (the run wrote no validation results yet)")

    by_step: dict[int, dict[str, Any]] = {}
    flags: list[str] = []
    truncated = False
    identity: tuple | None = None
    duplicates = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{path}:{i + 1}"
        try:
            raw = json.loads(line, parse_constant=lambda c: math.nan)
        except json.JSONDecodeError as err:
            if i == last_index and not ends_with_newline:
                truncated = True
                flags.append(f"truncated last line {i + 1} ignored (crashed while writing?)")
                continue
            raise ReportError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from err
        record = _validate(raw, where)
        this = (record["dataset"], tuple(record["test_envs"]), record["trial_seed"])
        this = (*this, record["hparams_id"])
        if identity is None:
            identity = this
        elif this != identity:
            names = ("dataset", "test_envs", "trial_seed", "hparams_id")
            diff = [f"{n} {a!r} -> {b!r}" for n, a, b in zip(names, identity, this) if a != b]
            raise ReportError(
                f"{where}: {'; '.join(diff)} within one file (one results.jsonl per run expected)"
            )
        if record["step"] in by_step:
            duplicates += 1
        record["_line"] = i + 1
        by_step[record["step"]] = record
    if identity is None:
        raise ReportError(f"{path}: no complete line (the run crashed before its first result)")
    if duplicates:
        flags.append(f"{duplicates} duplicate step(s): the later line of each was kept")
    records = [by_step[s] for s in sorted(by_step)]
    dataset, test_envs, trial_seed, hparams_id = identity
    return Run(path, records, dataset, test_envs, trial_seed, hparams_id, flags, truncated)


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Load every ``results.jsonl`` under ``paths`` and flag runs that stopped early.

    A run stopped early when it has fewer records (validations) than the longest run with the
    same ``(dataset, hparams_id)``; it is still used up to its last line. Two files holding
    the same run (same dataset, test_envs, trial_seed, hparams_id) are an error.
    """
    runs = [load_run(p) for p in find_results(paths)]
    owners: dict[tuple, Path] = {}
    for run in runs:
        if run.identity in owners:
            raise ReportError(
                f"the same run (dataset={run.dataset}, test_envs={list(run.test_envs)}, "
                f"trial_seed={run.trial_seed}, hparams_id={run.hparams_id}) is in both "
                f"{owners[run.identity]} and {run.path}: pass only one of them"
            )
        owners[run.identity] = run.path
    longest: dict[tuple[str, str], int] = defaultdict(int)
    for run in runs:
        key = (run.dataset, run.hparams_id)
        longest[key] = max(longest[key], len(run.records))
    for run in runs:
        expected = longest[(run.dataset, run.hparams_id)]
        if len(run.records) < expected:
            run.flags.append(
                f"stopped early: {len(run.records)} of {expected} validations "
                f"(last step {run.last_step}); used up to its last line"
            )
    runs.sort(key=lambda r: (r.dataset, r.test_envs, r.trial_seed, r.hparams_id))
    return runs


def _find_environments(obj: Any, depth: int = 0) -> list[str] | None:
    if depth > 6 or not isinstance(obj, Mapping):
        return None
    envs = obj.get("environments")
    if isinstance(envs, list) and envs and all(isinstance(e, str) for e in envs):
        return list(envs)
    for value in obj.values():
        found = _find_environments(value, depth + 1)
        if found:
            return found
    return None


def environment_names(runs: Sequence[Run]) -> list[str] | None:
    """The dataset's environment names, from a record's ``environments`` list (top level or
    anywhere inside ``args``), or ``None`` when the records do not hold them."""
    for run in runs:
        for record in (run.records[0], run.records[-1]):
            found = _find_environments(record)
            if found:
                return found
    return None


def domain_label(test_envs: Sequence[int], names: Sequence[str] | None) -> str:
    """Column label for a test-domain set: environment names joined by "+", else "env{k}"."""
    parts = [
        names[e] if names is not None and 0 <= e < len(names) else f"env{e}" for e in test_envs
    ]
    return "+".join(parts)
