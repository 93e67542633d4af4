"""ERM as a LightningModule: featurizer + dropout + linear ``classifier``, trained with Adam."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from nac_lightning.models.networks import build_featurizer


class ERMModule(pl.LightningModule):
    """Empirical risk minimisation (DomainBed's ERM) on top of a featurizer.

    ``forward(x)`` returns the logits of ``classifier(dropout(featurizer(x)))``; the final
    ``nn.Linear`` is named ``classifier`` so :class:`nac_lightning.NACMECallback` hooks it (fast
    path: its input is the penultimate features, its output the logits).

    Logged metrics (names shared with ``results.jsonl`` and the report):

    - training: ``train_loss``, ``train_acc`` (per step).
    - every validation run: ``<name>_acc`` per validation dataloader, ``name`` taken from
      ``val_dataloader_names`` (e.g. ``val_acc``, ``env0_in_acc``, ``env0_out_acc``); ``ood_acc``
      = mean accuracy of the ``ood_idx`` loaders, ``oracle_acc`` = mean of the ``oracle_idx`` ones.
    - testing: ``<test_prefix><name>_acc`` per test dataloader (names from
      ``test_dataloader_names``) and ``<test_prefix>acc``, their mean.

    Dataloader names and indices default to the attached datamodule's attributes
    (:class:`nac_lightning.data.DomainBedDataModule`), so the module also works with plain
    dataloaders (names ``val``, ``val_1``, ...; no OOD accuracy).

    Args:
        num_classes: number of classes.
        input_shape: ``(C, H, W)`` of the inputs.
        arch: featurizer, one of ``"resnet18"``, ``"resnet50"``, ``"mnist_cnn"``.
        pretrained: ImageNet weights from torchvision (ResNets only).
        weights_path: local ResNet state dict to load instead of downloading.
        freeze_bn: keep BatchNorm layers in eval mode while training (ResNets).
        dropout: dropout probability on the features, before the classifier.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        val_dataloader_names, ood_idx, oracle_idx, test_dataloader_names: override the
            datamodule's attributes of the same names.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: Sequence[int] = (3, 224, 224),
        arch: str = "resnet50",
        pretrained: bool = False,
        weights_path: str | os.PathLike | None = None,
        freeze_bn: bool = True,
        dropout: float = 0.0,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        val_dataloader_names: Sequence[str] | None = None,
        ood_idx: Sequence[int] | None = None,
        oracle_idx: Sequence[int] | None = None,
        test_dataloader_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        self.save_hyperparameters()
        self.featurizer = build_featurizer(
            arch, tuple(input_shape), pretrained, weights_path, freeze_bn
        )
        self.dropout = nn.Dropout(float(dropout))
        self.classifier = nn.Linear(self.featurizer.n_outputs, int(num_classes))
        self.test_prefix = "test/"
        self._counts: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(B, num_classes)``."""
        return self.classifier(self.dropout(self.featurizer(x)))

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Cross-entropy on a batch ``(x, y, ...)``; logs ``train_loss`` and ``train_acc``."""
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log("train_loss", loss, prog_bar=True, batch_size=len(y))
        self.log("train_acc", acc, batch_size=len(y))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over all parameters with the configured ``lr`` and ``weight_decay``."""
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    # ------------------------------------------------------------------ evaluation
    def _count(self, batch, dataloader_idx: int) -> None:
        x, y = batch[0], batch[1]
        pred = self(x).argmax(dim=1)
        self._counts[dataloader_idx, 0] += (pred == y).sum()
        self._counts[dataloader_idx, 1] += y.numel()

    def _reset_counts(self, num_loaders: int) -> None:
        self._counts = torch.zeros(max(num_loaders, 1), 2, dtype=torch.long, device=self.device)

    def _accuracies(self) -> list[float]:
        counts = self.trainer.strategy.reduce(self._counts, reduce_op="sum").double()
        return [c / t if t > 0 else math.nan for c, t in counts.tolist()]

    def _attr(self, name: str):
        explicit = self.hparams.get(name)
        if explicit is not None:
            return list(explicit)
        datamodule = getattr(self.trainer, "datamodule", None)
        value = getattr(datamodule, name, None)
        return None if value is None else list(value)

    def _names(self, attr: str, stem: str, n: int) -> list[str]:
        names = self._attr(attr)
        if names is None:
            return [stem] + [f"{stem}_{i}" for i in range(1, n)]
        if len(names) != n:
            raise ValueError(
                f"{attr} has {len(names)} names ({names}) but there are {n} {stem} dataloaders"
            )
        return [str(name) for name in names]

    def on_validation_epoch_start(self) -> None:  # noqa: D102
        self._reset_counts(len(self.trainer.num_val_batches))

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Count correct predictions of validation dataloader ``dataloader_idx``."""
        self._count(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        """Log ``<name>_acc`` per validation dataloader, ``ood_acc`` and ``oracle_acc``."""
        accs = self._accuracies()
        n = len(self.trainer.num_val_batches)
        names = self._names("val_dataloader_names", "val", n)
        metrics = {f"{name}_acc": accs[i] for i, name in enumerate(names)}
        for key, attr in (("ood_acc", "ood_idx"), ("oracle_acc", "oracle_idx")):
            idx = self._attr(attr) or []
            if any(not 0 <= i < n for i in idx):
                raise ValueError(f"{attr}={idx} is out of range for {n} validation dataloaders")
            if idx:
                metrics[key] = sum(accs[i] for i in idx) / len(idx)
        for key, value in metrics.items():
            self.log(
                key,
                value,
                prog_bar=key in ("val_acc", "ood_acc"),
                add_dataloader_idx=False,
                sync_dist=True,  # already reduced: identical on every rank, silences the warning
            )

    def on_test_epoch_start(self) -> None:  # noqa: D102
        self._reset_counts(len(self.trainer.num_test_batches))

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Count correct predictions of test dataloader ``dataloader_idx``."""
        self._count(batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        """Log ``<test_prefix><name>_acc`` per test dataloader and their mean ``<test_prefix>acc``."""
        accs = self._accuracies()
        names = self._names("test_dataloader_names", "test", len(self.trainer.num_test_batches))
        for name, acc in zip(names, accs):
            self.log(f"{self.test_prefix}{name}_acc", acc, add_dataloader_idx=False, sync_dist=True)
        mean = sum(accs) / len(accs)
        self.log(f"{self.test_prefix}acc", mean, add_dataloader_idx=False, sync_dist=True)
