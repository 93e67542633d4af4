"""Small real models and data for callback tests: scikit-learn's bundled digits."""

import lightning.pytorch as pl
import torch
from quiet_trainer import quiet_trainer
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nac_lightning import NeuronCoverage, kl_uniform_grad, neuron_states


class MLP(pl.LightningModule):
    """body -> head; forward returns the head's logits."""

    def __init__(self, in_dim=64, hidden=32, classes=10, lr=1e-2):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)
        self.lr = lr

    def forward(self, x):
        return self.head(self.body(x.flatten(1)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        acc = (self(x).argmax(1) == y).float().mean()
        self.log("acc", acc, add_dataloader_idx=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class ConvNet(MLP):
    """features (conv maps) -> pool -> head, on 1x8x8 digits."""

    def __init__(self, classes=10, lr=1e-2):
        super().__init__(lr=lr)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, classes)
        del self.body

    def forward(self, x):
        return self.head(self.pool(self.features(x.view(-1, 1, 8, 8))))


def digits(n_val=300, shift=0.0, seed=0):
    """(train, in-domain val, OOD val) TensorDatasets; OOD = val inputs with noise."""
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    train = TensorDataset(x[n_val:], y[n_val:])
    val = TensorDataset(x[:n_val], y[:n_val])
    noisy = (x[:n_val] + 0.6 * torch.randn(n_val, 64, generator=g)).clamp(0, 1)
    ood = TensorDataset(noisy, y[:n_val])
    return train, val, ood


def loader(ds, shuffle=False, batch_size=64):
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle)


trainer = quiet_trainer


def reference_nac_me(model, ds, alpha, bins, r, layer_fn=None, correct_only=True):
    """NAC-ME computed independently: head input/closed form, or autograd on layer_fn's output."""
    model.eval()
    x, y = ds.tensors
    metric = NeuronCoverage(
        model.head.in_features if layer_fn is None else layer_fn.n, bins=bins, r=r
    )
    if layer_fn is None:
        with torch.no_grad():
            z = (
                model.body(x.flatten(1))
                if hasattr(model, "body")
                else model.pool(model.features(x.view(-1, 1, 8, 8)))
            )
            logits = model.head(z)
        states = neuron_states(z, kl_uniform_grad(logits, model.head.weight), alpha)
    else:
        act, logits = layer_fn(model, x)
        g = torch.autograd.grad(-torch.log_softmax(logits, 1).sum() / logits.shape[1], act)[0]
        states = neuron_states(act, g, alpha)
        logits = logits.detach()
    mask = logits.argmax(1) == y if correct_only else None
    metric.update(states, mask=mask)
    return metric.compute().item(), (logits.argmax(1) == y).float().mean().item()
