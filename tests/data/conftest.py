"""Fixtures for the data tests: tiny DomainBed-layout image trees generated with PIL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from data_trees import build_tree


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """``make_tree(dataset, **kwargs)`` builds a tiny tree under a fresh folder in tmp_path."""
    counter = iter(range(1000))

    def _make(dataset: str, **kwargs) -> Path:
        return build_tree(tmp_path / f"root{next(counter)}", dataset, **kwargs)

    return _make
