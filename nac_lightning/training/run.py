"""One training run: build from the config, fit, test the selected checkpoints, summarize."""

from __future__ import annotations

import json
import os
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from nac_lightning.callback import NACMECallback
from nac_lightning.results import ResultsWriter, json_safe, read_results
from nac_lightning.training.build import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    check_length,
    register_resolvers,
    resolved_args,
)
from nac_lightning.training.errors import UserError, user_errors
from nac_lightning.training.summary import format_summary, summarize

__all__ = ["run"]


def _checkpoint_step(path: str) -> int | None:
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 - the step is informative only
        return None
    return ckpt.get("global_step")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, fit, test the selected checkpoints and print the table.

    Returns the summary (also written as ``summary.json`` and ``summary.md`` in the run dir).
    Raises :class:`UserError` on bad configuration or data, before anything result-like is
    written.
    """
    register_resolvers()
    output_dir = cfg.paths.output_dir
    check_length(cfg)
    dm = build_datamodule(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model = build_model(cfg, dm)
    callbacks = build_callbacks(cfg, dm)
    loggers = build_loggers(cfg)
    with user_errors("trainer"):
        trainer: pl.Trainer = hydra.utils.instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all"
        )
    if cfg.get("ckpt_path") and not os.path.isfile(cfg.ckpt_path):
        raise UserError(f"ckpt_path: no checkpoint at {cfg.ckpt_path!r}")

    args = resolved_args(cfg)
    for logger in loggers:
        logger.log_hyperparams(args)

    try:
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))

        nac_names = [c.name for c in callbacks if isinstance(c, NACMECallback)]
        writers = [c for c in callbacks if isinstance(c, ResultsWriter)]
        monitors = [c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
        # read every best path first: testing a checkpoint restores the callbacks' states
        best = {c.monitor: c.best_model_path for c in monitors if c.best_model_path}
        tests: dict[str, dict[str, Any]] = {}
        if cfg.get("test"):
            for monitor, path in best.items():
                model.test_prefix = f"test/{monitor}/"
                out = trainer.test(model, datamodule=dm, ckpt_path=path, verbose=False)
                metrics = {k.removeprefix(model.test_prefix): v for k, v in out[0].items()}
                tests[monitor] = {
                    "checkpoint": path,
                    "step": _checkpoint_step(path),
                    "test_acc": metrics.get("acc"),
                    **{f"test_{k}": v for k, v in metrics.items() if k != "acc"},
                }
        if not trainer.is_global_zero:
            return {}
        records = (
            read_results(writers[0].path) if writers and os.path.exists(writers[0].path) else []
        )
        summary = summarize(cfg, dm, records, nac_names or ["nac_me"], tests)
        text = format_summary(summary)
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as fh:
            json.dump(json_safe(summary), fh, indent=2, allow_nan=False)
        with open(os.path.join(output_dir, "summary.md"), "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    finally:
        _finish_wandb(loggers)
    # after W&B's own closing output, so the table is the last thing on the screen
    print("\n" + text + f"\n\nRun directory: {output_dir}", flush=True)
    return summary


def _finish_wandb(loggers: list[Logger]) -> None:
    """Close this run's W&B run, so the next job of a multirun starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()
