"""DomainBed-style ``results.jsonl``: one JSON line per validation run, written as produced."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from nac_lightning.serialization import json_safe

__all__ = ["ResultsWriter", "hparams_id", "json_safe", "read_results"]  # json_safe re-exported


def hparams_id(hparams: Mapping[str, Any]) -> str:
    """A stable hash of ``hparams`` (md5 of its canonical JSON), as DomainBed's ``args_hash``."""
    canonical = json.dumps(json_safe(hparams), sort_keys=True, separators=(",", ":"))
    return hashlib.md5(canonical.encode()).hexdigest()


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a ``results.jsonl`` file into a list of records (blank lines skipped)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class ResultsWriter(pl.Callback):
    """Append one JSON line per validation run to ``path`` (DomainBed's ``results.jsonl``).

    Each line holds ``step`` (global step), ``epoch``, ``nac_me`` (``null`` when absent), every
    scalar in ``trainer.callback_metrics`` (accuracies, other NAC-ME callbacks and their
    diagnostics, ...), then ``dataset``, ``test_envs``, ``trial_seed``, ``hparams``,
    ``hparams_id`` (stable hash of ``hparams``) and ``args`` (e.g. the resolved config).
    Non-finite floats are written as ``null``.

    Lines are written in ``on_validation_end`` while fitting (never for the sanity check or a
    standalone ``trainer.validate()``), flushed and fsynced one by one, by global rank zero only,
    so a crash loses nothing already computed. When training starts, lines with ``step`` greater
    than the trainer's global step are dropped: a run resumed from a checkpoint continues the
    file without duplicates, and a fresh run (step 0) starts a new file. The previous file is
    then kept beside it as ``results.jsonl.<time>.bak`` (a warning names it).

    Args:
        path: the ``results.jsonl`` file to write (parent folders are created).
        dataset: dataset name recorded on every line.
        test_envs: held-out environment indices.
        trial_seed: DomainBed trial seed (data split).
        hparams: training hyperparameters; their hash groups runs of one setting across seeds.
        args: anything else to record (the resolved run config).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dataset: str | None = None,
        test_envs: Sequence[int] = (),
        trial_seed: int = 0,
        hparams: Mapping[str, Any] | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.dataset = dataset
        self.test_envs = [int(e) for e in test_envs]
        self.trial_seed = int(trial_seed)
        self.hparams = json_safe(dict(hparams or {}))
        self.hparams_id = hparams_id(self.hparams)
        self.args = json_safe(dict(args or {}))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Drop lines past the (possibly resumed) global step before appending."""
        if trainer.is_global_zero and os.path.exists(self.path):
            self._truncate_after(trainer.global_step)

    def _truncate_after(self, step: int) -> None:
        with open(self.path, encoding="utf-8") as fh:
            lines = fh.readlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            if isinstance(record, dict) and int(record.get("step", -1)) <= step and step > 0:
                kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) == len(lines):
            return
        # keep what is dropped: nothing already computed is lost
        backup = f"{self.path}.{time.strftime('%Y%m%d-%H%M%S')}.bak"
        shutil.copyfile(self.path, backup)
        rank_zero_warn(
            f"ResultsWriter: {len(lines) - len(kept)} line(s) of {self.path} come after step "
            f"{step} (a fresh run, or a resume from an earlier checkpoint) and were removed; "
            f"the previous file is kept as {backup}"
        )
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def record(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The record for the current validation run (what the next line will hold)."""
        metrics = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch)}
        metrics["nac_me"] = None
        for key, value in trainer.callback_metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                continue
            metrics[key] = json_safe(value)
        metrics.update(
            dataset=self.dataset,
            test_envs=self.test_envs,
            trial_seed=self.trial_seed,
            hparams=self.hparams,
            hparams_id=self.hparams_id,
            args=self.args,
        )
        return metrics

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Append the line of this validation run (fitting only, rank zero only)."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if not trainer.is_global_zero:
            return
        line = json.dumps(self.record(trainer), allow_nan=False)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
