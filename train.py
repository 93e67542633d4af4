"""Train ERM on a DomainBed dataset with NAC-ME checkpoint selection (Hydra entry point).

    python train.py                                        # embedded rotated_digits on the CPU
    python train.py dataset=pacs dataset.root=/data trainer=gpu
    python train.py -m dataset.test_envs=[0],[1],[2],[3] trial_seed=0,1,2

Configs live in ``conf/`` (main config ``conf/train.yaml``). The run: compose the config ->
build the datamodule, the ERM module, the callbacks (NAC-ME wired to the datamodule's loaders),
the loggers and the Trainer -> fit -> test the NAC-ME-selected and the validation-selected
checkpoints on the held-out domain(s) -> print the selection table. Everything the run writes
(checkpoints, results.jsonl, W&B and CSV logs, summary.json/summary.md) is under its Hydra run
directory. Bad input (unknown option, test_envs out of range, missing dataset, ...) prints one
``error:`` line and exits with status 2 before anything result-like is written.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, ListConfig, OmegaConf

from nac_lightning import NACMECallback
from nac_lightning.data import DomainBedDataModule
from nac_lightning.models import PretrainedWeightsError
from nac_lightning.results import ResultsWriter, json_safe, read_results
from nac_lightning.selection import compare_selections

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")


class UserError(Exception):
    """Bad configuration or data: reported as one ``error:`` line, exit status 2."""


def _join(values: Any, sep: str = "-") -> str:
    """``nac_join`` resolver: ``[0, 2]`` -> ``"0-2"`` (used in W&B group/run names and tags)."""
    if isinstance(values, ListConfig | list | tuple):
        return sep.join(str(v) for v in values)
    return str(values)


def register_resolvers() -> None:
    """Register the config's custom resolvers (idempotent)."""
    OmegaConf.register_new_resolver("nac_join", _join, replace=True)


register_resolvers()


@contextlib.contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Turn the expected errors of building ``what`` into a :class:`UserError` with one line."""
    try:
        yield
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise UserError(f"{what}: {_one_line(cause)}") from err
    except (ValueError, FileNotFoundError, PretrainedWeightsError) as err:
        raise UserError(f"{what}: {_one_line(err)}") from err


def _one_line(err: BaseException) -> str:
    text = str(err.args[0]) if len(err.args) == 1 and isinstance(err.args[0], str) else str(err)
    return " ".join(text.split())


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def resolved_args(cfg: DictConfig) -> dict[str, Any]:
    """The run's resolved config as plain data (without Hydra's own node)."""
    keys = [k for k in cfg if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)


# ---------------------------------------------------------------------------- building
def check_length(cfg: DictConfig) -> None:
    """Refuse a training length that leaves no validation, hence nothing to select."""
    steps, every = cfg.trainer.get("max_steps"), cfg.trainer.get("val_check_interval")
    if isinstance(steps, int) and isinstance(every, int) and 0 <= steps < every:
        raise UserError(
            f"trainer.val_check_interval={every} is larger than trainer.max_steps={steps}: no "
            f"validation would run, so there would be no checkpoint to select; lower "
            f"trainer.val_check_interval"
        )


def build_datamodule(cfg: DictConfig) -> DomainBedDataModule:
    """Instantiate ``cfg.dataset`` and set it up now, so missing data fails before training."""
    with user_errors(f"dataset '{cfg.dataset.get('dataset')}'"):
        datamodule = hydra.utils.instantiate(cfg.dataset, _convert_="all")
        datamodule.setup("fit")
    return datamodule


def build_model(cfg: DictConfig, dm: DomainBedDataModule) -> pl.LightningModule:
    """Instantiate ``cfg.model`` for the datamodule's classes, input shape and loader names."""
    with user_errors(f"model '{cfg.model.get('arch')}'"):
        return hydra.utils.instantiate(
            cfg.model,
            num_classes=dm.num_classes,
            input_shape=list(dm.input_shape),
            val_dataloader_names=list(dm.val_dataloader_names),
            ood_idx=list(dm.ood_idx),
            oracle_idx=list(dm.oracle_idx),
            test_dataloader_names=list(dm.test_dataloader_names),
            _convert_="all",
        )


def _fmt(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.replace(".", "p").replace("-", "m").replace("+", "")


def nac_specs(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Configs of the extra NAC-ME callbacks (``nac_grid`` and ``extra_nac``), by name."""
    base = _container(cfg.callbacks.get("nac_me")) or {"_target_": "nac_lightning.NACMECallback"}
    base = dict(base)
    grid = _container(cfg.get("nac_grid")) or {}
    specs: dict[str, dict[str, Any]] = {}
    axes = {k: list(grid.get(k) or []) for k in ("alpha", "r", "bins")}
    if any(axes.values()):
        defaults = {"alpha": base.get("alpha", 0.1), "r": base.get("r", 500)}
        defaults["bins"] = base.get("bins", 50)
        values = [axes[k] or [defaults[k]] for k in ("alpha", "r", "bins")]
        for alpha, r, bins in itertools.product(*values):
            name = f"nac_me_a{_fmt(alpha)}_r{_fmt(r)}" + (f"_b{bins}" if axes["bins"] else "")
            specs[name] = {**base, "alpha": alpha, "r": r, "bins": bins, "name": name}
    for name, extra in (_container(cfg.get("extra_nac")) or {}).items():
        specs[name] = {**base, **dict(extra or {}), "name": name}
    return specs


def _wire_nac(spec: dict[str, Any], dm: DomainBedDataModule) -> dict[str, Any]:
    """Add the datamodule's loader indices to a NACMECallback config."""
    wired = {
        "dataloader_idx": dm.nac_idx,
        "val_dataloader_idx": dm.val_idx,
        "ood_dataloader_idx": list(dm.ood_idx),
        "oracle_dataloader_idx": list(dm.oracle_idx),
    }
    params = inspect.signature(NACMECallback).parameters
    return {**spec, **{k: v for k, v in wired.items() if k in params}}


def build_callbacks(cfg: DictConfig, dm: DomainBedDataModule) -> list[Callback]:
    """Instantiate ``cfg.callbacks`` plus the extra NAC-ME callbacks, wired to ``dm``."""
    callbacks: list[Callback] = []
    specs: list[tuple[str, dict[str, Any]]] = []
    for key, node in (cfg.get("callbacks") or {}).items():
        if node is not None and "_target_" in node:
            specs.append((key, _container(node)))
    specs += list(nac_specs(cfg).items())
    names = set()
    for key, spec in specs:
        with user_errors(f"callback '{key}'"):
            cls = hydra.utils.get_class(spec["_target_"])
            if issubclass(cls, NACMECallback):
                spec = _wire_nac(spec, dm)
                name = spec.get("name", "nac_me")
                if name in names:
                    raise ValueError(f"two NAC-ME callbacks are named {name!r}")
                names.add(name)
            if issubclass(cls, ResultsWriter):  # args hold `_target_`s: never instantiate them
                kwargs = {k: v for k, v in spec.items() if not k.startswith("_")}
                callbacks.append(cls(**kwargs, args=resolved_args(cfg)))
            else:
                callbacks.append(hydra.utils.instantiate(spec, _convert_="all"))
    return callbacks


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate every logger of ``cfg.logger`` (none for ``logger=none``)."""
    loggers: list[Logger] = []
    for key, node in (cfg.get("logger") or {}).items():
        if node is not None and "_target_" in node:
            with user_errors(f"logger '{key}'"):
                loggers.append(hydra.utils.instantiate(node, _convert_="all"))
    return loggers


# ---------------------------------------------------------------------------- summary
def _checkpoint_step(path: str) -> int | None:
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 - the step is informative only
        return None
    return ckpt.get("global_step")


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
        "| selection | step | " + " | ".join(nac_names) + " | val acc | OOD acc | test acc |",
        "|---|---:|" + "---:|" * len(nac_names) + "---:|---:|---:|",
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
        cells += [_num(values.get(n)) for n in nac_names]
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


# ---------------------------------------------------------------------------- the run
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
        print("\n" + text + f"\n\nRun directory: {output_dir}", flush=True)
        return summary
    finally:
        _finish_wandb(loggers)


def _finish_wandb(loggers: list[Logger]) -> None:
    """Close this run's W&B run, so the next job of a multirun starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish()


def check_group_choices(argv: list[str], config_dir: str = CONFIG_DIR) -> str | None:
    """One-line message for a command-line ``group=option`` naming an option that does not exist
    (e.g. ``dataset=imagenet``), else ``None``. Hydra's own message spans many lines."""
    for arg in argv:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:
            continue
        group, value = arg.split("=", 1)
        folder = os.path.join(config_dir, group)
        if "." in group or not os.path.isdir(folder):
            continue
        if any(c in value for c in "[]()${}*") or value in ("", "null"):
            continue  # lists, sweeps functions, interpolations: left to Hydra
        options = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))
        unknown = [v for v in value.split(",") if v not in options]
        if unknown:
            return f"unknown {group} {unknown[0]!r}; choose one of: {', '.join(options)}"
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra entry point: :func:`run`, with bad input reported as one line (exit status 2)."""
    try:
        return run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    problem = check_group_choices(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()
