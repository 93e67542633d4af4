"""Small real models, data and references for the reliability tests (scikit-learn's digits).

Everything here is importable from spawned DDP workers (``tests/reliability`` is on their
``sys.path``), so models and callbacks used with ``strategy="ddp_spawn"`` live here.
"""

from __future__ import annotations

import json
import math
import os

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from quiet_trainer import quiet_trainer
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nac_lightning import NACMECallback, NeuronCoverage, kl_uniform_grad, neuron_states

ALPHA, BINS, R = 50.0, 20, 5


def digits_tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits, shuffled with ``seed``: inputs in [0, 1] ``(n, 64)`` and labels."""
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm], y[perm]


def split(n_train: int, n_val: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Disjoint train and validation sets of the given sizes."""
    x, y = digits_tensors(seed)
    assert n_train + n_val <= len(x)
    return (
        TensorDataset(x[n_val : n_val + n_train], y[n_val : n_val + n_train]),
        TensorDataset(x[:n_val], y[:n_val]),
    )


def loader(ds, batch_size: int = 64, shuffle: bool = False) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle)


class MLP(pl.LightningModule):
    """body (two Linear+ReLU) -> head; forward returns the head's logits."""

    def __init__(self, in_dim: int = 64, hidden: int = 32, classes: int = 10, lr: float = 1e-2):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)
        self.lr = lr

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        out = self(x)  # subclasses may return (logits, ...) or {"logits": ...}
        logits = (
            out[0] if isinstance(out, tuple) else out["logits"] if isinstance(out, dict) else out
        )
        acc = (logits.argmax(1) == y).float().mean()
        self.log("acc", acc, add_dataloader_idx=True, batch_size=len(y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


make_trainer = quiet_trainer


def head_states(model: MLP, x: torch.Tensor, alpha: float = ALPHA):
    """States of the head's input (closed form) and the logits, computed outside Lightning."""
    model.eval()
    with torch.no_grad():
        z = model.features(x)
        logits = model.head(z)
    return neuron_states(z, kl_uniform_grad(logits, model.head.weight), alpha), logits


def reference(model: MLP, x, y, alpha=ALPHA, bins=BINS, r=R) -> dict[str, float]:
    """NAC-ME (correct samples only), accuracy and kept-sample count, computed independently."""
    states, logits = head_states(model, x, alpha)
    correct = logits.argmax(1) == y
    metric = NeuronCoverage(states.shape[1], bins=bins, r=r)
    metric.update(states[correct])
    value = metric.compute().item() if correct.any() else math.nan
    return {
        "nac_me": value,
        "val_acc": correct.float().mean().item(),
        "n_samples": int(correct.sum()),
    }


class RankRecorder(Callback):
    """Writes, per rank, what each rank saw and logged after every validation run and the
    NACMECallbacks' histories at the end of fit, to ``<out>/rank<k>.json`` (DDP workers'
    callbacks never come back to the parent process)."""

    def __init__(self, out: str, keys: tuple[str, ...]) -> None:
        self.out = str(out)
        self.keys = keys
        self.rows: list[dict] = []

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        row = {
            "epoch": trainer.current_epoch,
            "num_val_batches": [int(n) for n in trainer.num_val_batches],
            "world_size": trainer.world_size,
        }
        row.update({k: float(trainer.callback_metrics[k]) for k in self.keys})
        self.rows.append(row)

    def on_fit_end(self, trainer, pl_module):
        histories = {c.name: c.history for c in trainer.callbacks if isinstance(c, NACMECallback)}
        path = os.path.join(self.out, f"rank{trainer.global_rank}.json")
        with open(path, "w") as f:
            json.dump({"rows": self.rows, "histories": histories}, f)

    def teardown(self, trainer, pl_module, stage):
        # a DDP worker that exits with its gloo process group alive can abort in the C++
        # teardown ("terminate called without an active exception"); close it first
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Faulty(MLP):
    """An MLP whose validation forward passes can be poisoned, to simulate numerical faults.

    ``where="features"`` writes ``value`` into the head's input (penultimate features),
    ``where="logits"`` into the head's output, for the first ``rows`` samples of every
    validation batch (``rows=None``: all of them), at the epochs in ``epochs``
    (``None``: every epoch). Training is never poisoned.
    """

    def __init__(self, where="features", value=math.nan, rows=4, epochs=None, **kw):
        super().__init__(**kw)
        self.where, self.value, self.rows = where, value, rows
        self.epochs = None if epochs is None else set(epochs)
        (self.body if where == "features" else self.head).register_forward_hook(self._poison)

    def poisoned(self) -> bool:
        t = self._trainer
        return (
            t is not None
            and t.validating
            and (self.epochs is None or t.current_epoch in self.epochs)
        )

    def _poison(self, module, args, out):
        if not self.poisoned():
            return None
        out = out.clone()
        out[: self.rows if self.rows is not None else len(out)] = self.value
        return out
