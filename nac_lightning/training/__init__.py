"""What ``train.py`` runs: build the datamodule, model, callbacks and loggers from the Hydra
config, fit, test the NAC-ME- and validation-selected checkpoints, print the selection table.

``train.py`` is only the Hydra entry point; everything here can be used from Python too
(``run(cfg)`` with a config composed by ``hydra.compose``).
"""

from nac_lightning.training.build import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    check_length,
    nac_specs,
    register_resolvers,
    resolved_args,
)
from nac_lightning.training.errors import UserError, check_group_choices, user_errors
from nac_lightning.training.run import run
from nac_lightning.training.summary import format_summary, summarize

__all__ = [
    "UserError",
    "build_callbacks",
    "build_datamodule",
    "build_loggers",
    "build_model",
    "check_group_choices",
    "check_length",
    "format_summary",
    "nac_specs",
    "register_resolvers",
    "resolved_args",
    "run",
    "summarize",
    "user_errors",
]
