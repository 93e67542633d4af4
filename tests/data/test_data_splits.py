"""DomainBed split reproduction: seed hash, shuffle, holdout."""

from __future__ import annotations

import numpy as np
import pytest

from nac_lightning.data import seed_hash, split_indices


def test_worked_example_from_domainbed():
    # NAC.md section 6: seed_hash(0, 0) shuffles range(10) to [2,3,8,1,4,5,0,9,6,7].
    out_idx, in_idx = split_indices(10, 0, 0)
    assert out_idx == [2, 3]
    assert in_idx == [8, 1, 4, 5, 0, 9, 6, 7]
    assert all(type(i) is int for i in out_idx + in_idx)


def test_seed_hash_values():
    assert [seed_hash(0, e) for e in range(4)] == [894182419, 1514274641, 1325548499, 1796103049]
    # derived offline with hashlib.md5(str((t, e)).encode()) % 2**31
    assert seed_hash(1, 2) == 1981683110
    assert seed_hash(3, 1) == 1603725249


@pytest.mark.parametrize(
    ("n", "trial_seed", "env", "expected_out", "expected_in"),
    [
        (7, 1, 2, [3], [6, 0, 1, 4, 5, 2]),
        (
            25,
            3,
            1,
            [4, 5, 11, 17, 23],
            [22, 3, 2, 24, 14, 12, 9, 1, 0, 8, 10, 16, 18, 20, 15, 21, 19, 13, 6, 7],
        ),
    ],
)
def test_derived_values(n, trial_seed, env, expected_out, expected_in):
    assert split_indices(n, trial_seed, env) == (expected_out, expected_in)


def test_numpy_integers_give_the_same_split():
    assert split_indices(np.int64(50), np.int64(2), np.int32(3)) == split_indices(50, 2, 3)
    assert seed_hash(np.int64(0), np.int64(0)) == seed_hash(0, 0)


@pytest.mark.parametrize("n", [0, 1, 4, 5, 99, 1000])
@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5])
def test_partition_and_sizes(n, fraction):
    out_idx, in_idx = split_indices(n, 0, 1, fraction)
    assert len(out_idx) == int(n * fraction)
    assert sorted(out_idx + in_idx) == list(range(n))


def test_splits_depend_on_trial_seed_and_env():
    base = split_indices(100, 0, 0)
    assert split_indices(100, 0, 0) == base
    assert split_indices(100, 1, 0) != base
    assert split_indices(100, 0, 1) != base


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": -1}, ValueError, "n must be >= 0"),
        ({"n": 10.0}, TypeError, "n must be an integer"),
        ({"trial_seed": "0"}, TypeError, "trial_seed must be an integer"),
        ({"env_index": True}, TypeError, "env_index must be an integer"),
        ({"holdout_fraction": 1.0}, ValueError, r"holdout_fraction must be in \[0, 1\)"),
        ({"holdout_fraction": -0.1}, ValueError, "holdout_fraction"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    args = {"n": 10, "trial_seed": 0, "env_index": 0, "holdout_fraction": 0.2} | kwargs
    with pytest.raises(error, match=match):
        split_indices(**args)
