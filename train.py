"""Train ERM on a DomainBed dataset with NAC-ME checkpoint selection (Hydra entry point).

    python train.py                                        # embedded rotated_digits on the CPU
    python train.py dataset=pacs data.root=/data trainer=gpu
    python train.py -m dataset.test_envs=[0],[1],[2],[3] trial_seed=0,1,2

Configs live in ``conf/`` (main config ``conf/train.yaml``); the work is done by
:func:`nac_lightning.training.run`: build the datamodule, ERM module, callbacks (NAC-ME wired
to the datamodule's loaders), loggers and Trainer -> fit -> test the NAC-ME-selected and the
validation-selected checkpoints on the held-out domain(s) -> print the selection table.
Everything a run writes is under its Hydra run directory. Bad input (unknown option, test_envs
out of range, missing dataset, ...) prints one ``error:`` line and exits with status 2 before
anything result-like is written.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from nac_lightning.training import (  # noqa: F401  (re-exported for scripts and tests)
    UserError,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    check_group_choices,
    register_resolvers,
    run,
)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra entry point: :func:`run`, with bad input reported as one line (exit status 2)."""
    try:
        return run(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    problem = check_group_choices(sys.argv[1:], CONFIG_DIR)
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()
