"""Fixtures for the train area: bundled digits, tiny DomainBed trees, the composed config,
train.py as a module and as a subprocess."""

import importlib.util

import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from train_helpers import CONF, REPO


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


@pytest.fixture(scope="session")
def train_script():
    """The repository's train.py, imported as a module (its resolvers registered)."""
    spec = importlib.util.spec_from_file_location("nac_train_script", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def compose_cfg(train_script, tmp_path):
    """``compose_cfg(overrides)``: the composed train config with paths inside tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _compose(overrides=(), output_dir=None):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(output_dir or tmp_path / "run")
        return cfg

    return _compose
