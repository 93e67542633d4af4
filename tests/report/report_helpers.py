"""Helpers for the report tests: hand-built results.jsonl files with known answers."""

import json
from pathlib import Path


def make_records(
    values,
    *,
    dataset="Toy",
    test_envs=(0,),
    trial_seed=0,
    hparams_id="h0",
    environments=("A", "B"),
    step_every=10,
    **extra,
):
    """Records from rows of (val_acc, nac_me, ood_acc, oracle_acc), one per checkpoint."""
    records = []
    for i, (val, nac, ood, oracle) in enumerate(values):
        record = {
            "step": i * step_every,
            "epoch": i,
            "nac_me": nac,
            "val_acc": val,
            "ood_acc": ood,
            "oracle_acc": oracle,
            "dataset": dataset,
            "test_envs": list(test_envs),
            "trial_seed": trial_seed,
            "hparams": {"lr": hparams_id},
            "hparams_id": hparams_id,
            "args": {"data": {"dataset": dataset, "environments": list(environments)}},
        }
        record.update({k: v[i] for k, v in extra.items()})
        records.append(record)
    return records


def write_jsonl(path: Path, records, tail: str = "") -> Path:
    """Write records as JSON lines under path (a folder gets results.jsonl), plus a raw tail."""
    path = Path(path)
    if path.suffix != ".jsonl":
        path = path / "results.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


# Known-answer sweep (fractions). Columns: val_acc, nac_me, ood_acc, oracle_acc.
# Test domain A (test_envs [0]), seed 0: two hparams; seed 1: one run. Domain B: seed 0 only.
A0_H0 = [(0.50, 0.10, 0.40, 0.41), (0.60, 0.30, 0.50, 0.52), (0.70, 0.20, 0.45, 0.50)]
A0_H1 = [(0.65, 0.35, 0.30, 0.30), (0.80, 0.20, 0.35, 0.36), (0.75, 0.25, 0.60, 0.62)]
A1_H0 = [(0.50, 0.20, 0.50, 0.50), (0.70, 0.10, 0.55, 0.60), (0.60, 0.40, 0.60, 0.55)]
B0_H0 = [(0.90, 0.10, 0.20, 0.25), (0.80, 0.20, 0.30, 0.20), (0.70, 0.30, 0.40, 0.30)]
