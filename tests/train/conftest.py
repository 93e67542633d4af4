"""Shared fixtures for the train area: real digits (scikit-learn's bundled set) as tensors."""

import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset


@pytest.fixture(scope="session")
def digits():
    """All 1,797 bundled 8x8 digits as ``(x (N, 1, 8, 8) in [0, 1], y (N,))``."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    return x, y


@pytest.fixture(scope="session")
def make_loader():
    """A factory of plain DataLoaders of ``(x, y)`` tuples."""

    def make(x, y, batch_size=64, shuffle=False):
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)

    return make
