"""Bad configuration or data, reported by train.py as one ``error:`` line (exit status 2)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from hydra.errors import InstantiationException

from nac_lightning.models import PretrainedWeightsError

__all__ = ["UserError", "user_errors", "check_group_choices"]


class UserError(Exception):
    """Bad configuration or data: reported as one ``error:`` line, exit status 2."""


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


def check_group_choices(argv: list[str], config_dir: str) -> str | None:
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
