"""Building the run's objects from the composed Hydra config, wired to the datamodule."""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, ListConfig, OmegaConf

from nac_lightning.callback import NACMECallback
from nac_lightning.data import DomainBedDataModule
from nac_lightning.results import ResultsWriter
from nac_lightning.training.errors import UserError, user_errors

__all__ = [
    "register_resolvers",
    "resolved_args",
    "check_length",
    "build_datamodule",
    "build_model",
    "nac_specs",
    "build_callbacks",
    "build_loggers",
]


def _join(values: Any, sep: str = "-") -> str:
    """``nac_join`` resolver: ``[0, 2]`` -> ``"0-2"`` (used in W&B group/run names and tags)."""
    if isinstance(values, ListConfig | list | tuple):
        return sep.join(str(v) for v in values)
    return str(values)


def register_resolvers() -> None:
    """Register the config's custom resolvers (idempotent)."""
    OmegaConf.register_new_resolver("nac_join", _join, replace=True)


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
    for spec in specs.values():  # only the main score goes to the progress bar
        spec.setdefault("prog_bar", False)
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
                # environment names let the report label its columns (e.g. "photo", "45")
                args = {**resolved_args(cfg), "environments": list(dm.environments)}
                callbacks.append(cls(**kwargs, args=args))
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
