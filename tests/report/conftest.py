"""Fixtures for the report tests."""

import pytest
from report_helpers import A0_H0, A0_H1, A1_H0, B0_H0, make_records, write_jsonl


@pytest.fixture
def sweep(tmp_path):
    """A multirun-like folder with the known-answer sweep; returns its root."""
    root = tmp_path / "multirun"
    write_jsonl(root / "0" / "a0h0", make_records(A0_H0, trial_seed=0, hparams_id="h0"))
    write_jsonl(root / "1" / "a0h1", make_records(A0_H1, trial_seed=0, hparams_id="h1"))
    write_jsonl(root / "2" / "a1h0", make_records(A1_H0, trial_seed=1, hparams_id="h0"))
    write_jsonl(root / "3", make_records(B0_H0, test_envs=(1,), trial_seed=0, hparams_id="h0"))
    return root
