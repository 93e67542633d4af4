"""DomainBed's per-environment in/out splits, reproduced exactly.

DomainBed (``domainbed/lib/misc.py``) splits every environment once per ``trial_seed``:

* ``seed = int(md5(str((trial_seed, env_index)).encode()).hexdigest(), 16) % 2**31``
* ``keys = list(range(n)); np.random.RandomState(seed).shuffle(keys)``
* the first ``int(n * holdout_fraction)`` keys are the "out" split (validation), the rest "in".

The hash is taken over the *string* of a tuple of plain Python ints: a numpy integer would
stringify differently (``np.int64(0)``) and give another split, so arguments are converted with
:func:`operator.index` first.
"""

from __future__ import annotations

import hashlib
import operator

import numpy as np

__all__ = ["seed_hash", "split_indices"]


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer (int or numpy integer), got {type(value).__name__} {value!r}"
        ) from None


def seed_hash(*args: object) -> int:
    """DomainBed's ``misc.seed_hash``: an md5-derived seed in ``[0, 2**31)`` for ``args``.

    Integer arguments (including numpy integers) are converted to plain Python ints first, so
    ``seed_hash(np.int64(0), 0) == seed_hash(0, 0)``.
    """
    normalized = tuple(
        operator.index(a) if not isinstance(a, bool) and hasattr(a, "__index__") else a
        for a in args
    )
    return int(hashlib.md5(str(normalized).encode("utf-8")).hexdigest(), 16) % (2**31)


def split_indices(
    n: int, trial_seed: int, env_index: int, holdout_fraction: float = 0.2
) -> tuple[list[int], list[int]]:
    """Return DomainBed's ``(out_indices, in_indices)`` for an environment of ``n`` samples.

    Args:
        n: number of samples in the environment (>= 0).
        trial_seed: DomainBed's ``trial_seed`` (selects the split).
        env_index: the environment's index in the dataset's sorted environment list.
        holdout_fraction: fraction held out as the "out" split, in ``[0, 1)``.

    Returns:
        Two lists of Python ints: the first ``int(n * holdout_fraction)`` shuffled indices
        ("out", used for validation / oracle selection) and the remaining ones ("in", used for
        training or, for a test environment, the reported OOD accuracy).

    Example:
        >>> split_indices(10, 0, 0)
        ([2, 3], [8, 1, 4, 5, 0, 9, 6, 7])
    """
    n = _as_int(n, "n")
    trial_seed = _as_int(trial_seed, "trial_seed")
    env_index = _as_int(env_index, "env_index")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    try:
        holdout_fraction = float(holdout_fraction)
    except (TypeError, ValueError):
        raise TypeError(f"holdout_fraction must be a float, got {holdout_fraction!r}") from None
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(
            f"holdout_fraction must be in [0, 1), got {holdout_fraction} "
            "(DomainBed uses 0.2: 20% of each environment is held out)"
        )
    keys = list(range(n))
    np.random.RandomState(seed_hash(trial_seed, env_index)).shuffle(keys)
    n_out = int(n * holdout_fraction)
    return keys[:n_out], keys[n_out:]
