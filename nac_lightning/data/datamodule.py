"""DomainBedDataModule: DomainBed's splits, balanced training batches and evaluation loaders.

Dataloader layout (``val_dataloader()`` returns a list in this fixed order; with ``k`` test
environments ``t_1 < ... < t_k``):

====================  =====================================================  ==============
index                 content                                                name
====================  =====================================================  ==============
0 (``val_idx``)       union of the source environments' "out" splits          ``val``
1 .. k (``ood_idx``)  test environment ``t_j``'s "in" split (OOD accuracy)    ``env{t_j}_in``
k+1 .. 2k             test environment ``t_j``'s "out" split (oracle)         ``env{t_j}_out``
(``oracle_idx``)
2k+1 (``nac_idx``)    union of the source "in" splits, *only* with            ``train``
                      ``nac_on_train=True``; else ``nac_idx == val_idx == 0``
====================  =====================================================  ==============

Evaluation loaders never augment and are not shuffled. ``test_dataloader()`` returns one loader
per test environment holding the *whole* environment (in + out), named ``env{t}``
(``test_dataloader_names``).

Training: every step yields ``(x, y)`` with ``batch_size`` samples from *every* source
environment (DomainBed's balanced batches, drawn with replacement), concatenated domain-major:
rows ``[d * batch_size, (d + 1) * batch_size)`` come from the d-th source environment. One
"epoch" is ``steps_per_epoch`` steps, by default ``ceil(largest source "in" split / batch_size)``;
the loader is reusable across epochs (fresh, reproducible batches each epoch), so training by
steps (``max_steps``, ``val_check_interval`` in steps, ``check_val_every_n_epoch=None``) works.

Under data parallelism (``trainer.world_size > 1``) every rank draws its own balanced batches
(:class:`~nac_lightning.data.samplers.DistributedBalancedDomainSampler`, which Lightning keeps
as is), so ``batch_size`` is per process and per source domain.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from nac_lightning.data.datasets import (
    MultipleDomainDataset,
    MultipleEnvironmentImageFolder,
    TransformedSubset,
    get_dataset_class,
)
from nac_lightning.data.samplers import BalancedDomainSampler, DistributedBalancedDomainSampler
from nac_lightning.data.splits import split_indices

__all__ = ["DomainBedDataModule"]


def _normalize_test_envs(test_envs: Any, environments: list[str], dataset: str) -> list[int]:
    n_env = len(environments)
    listing = ", ".join(f"{i}={e}" for i, e in enumerate(environments))
    if test_envs is None:
        raise ValueError(
            f"test_envs is empty: choose at least one held-out environment of '{dataset}' "
            f"({listing})"
        )
    scalar = isinstance(test_envs, str) or hasattr(test_envs, "__index__")
    items = [test_envs] if scalar else list(test_envs)
    if not items:
        raise ValueError(
            f"test_envs is empty: choose at least one held-out environment of '{dataset}' "
            f"({listing})"
        )
    result = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"test_envs must hold environment indices, got {item!r}")
        try:
            env = int(item)
        except (TypeError, ValueError):
            raise ValueError(
                f"test_envs must hold environment indices (ints), got {item!r}; "
                f"environments of '{dataset}': {listing}"
            ) from None
        if not 0 <= env < n_env:
            raise ValueError(
                f"test_envs {items} out of range: '{dataset}' has {n_env} environments "
                f"({listing}); use indices 0..{n_env - 1}"
            )
        result.append(env)
    if len(set(result)) != len(result):
        raise ValueError(f"test_envs {items} holds duplicates")
    if len(set(result)) >= n_env:
        raise ValueError(
            f"test_envs {items} leaves no source environment to train on ('{dataset}' has "
            f"{n_env} environments: {listing})"
        )
    return sorted(result)


class DomainBedDataModule(L.LightningDataModule):
    """Lightning DataModule for DomainBed-style domain generalization (see module docstring).

    Args:
        dataset: ``"pacs"``, ``"vlcs"``, ``"office_home"``, ``"terra_incognita"`` or
            ``"rotated_digits"`` (embedded, no download, ``root`` may be None).
        root: data root holding the dataset folder (e.g. ``ROOT/PACS/...``).
        test_envs: held-out environment index or indices (into ``environments``).
        trial_seed: selects DomainBed's in/out splits (:func:`~nac_lightning.data.split_indices`).
        holdout_fraction: fraction of every environment held out as its "out" split.
        batch_size: training samples per source environment per step.
        eval_batch_size: batch size of evaluation loaders (DomainBed: 64).
        num_workers: DataLoader workers (0: load in the main process).
        augment: DomainBed's training augmentation on the source "in" splits (image datasets;
            ``rotated_digits`` is never augmented).
        nac_on_train: add the source "in" splits as an extra validation loader named
            ``train`` and point ``nac_idx`` at it (the official NAC-ME code's choice);
            otherwise NAC-ME uses the in-domain validation loader (``nac_idx=0``).
        nac_train_augment: with ``nac_on_train``, apply the training augmentation to that
            loader too, as the official code does (default: the eval transform).
        steps_per_epoch: training steps per epoch (default: ``ceil(max source "in" size /
            batch_size)``).
        seed: seed of the training batch sampler and of worker seeds (default: ``trial_seed``).
        replacement: draw training samples with replacement (DomainBed) or by permutation.
        pin_memory, persistent_workers: passed to every DataLoader (persistent only with
            workers).
        image_size: input side for the image datasets (DomainBed: 224).

    Raises:
        ValueError: unknown dataset, empty/out-of-range/duplicate ``test_envs``, bad sizes.
        DatasetLayoutError: (in :meth:`setup`) missing or malformed data folders.
    """

    def __init__(
        self,
        dataset: str = "rotated_digits",
        root: str | os.PathLike | None = None,
        test_envs: int | Iterable[int] = (0,),
        trial_seed: int = 0,
        holdout_fraction: float = 0.2,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        augment: bool = True,
        nac_on_train: bool = False,
        nac_train_augment: bool = False,
        steps_per_epoch: int | None = None,
        seed: int | None = None,
        replacement: bool = True,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        self.dataset_class: type[MultipleDomainDataset] = get_dataset_class(dataset)
        self.dataset_name: str = self.dataset_class.NAME
        self.root = None if root is None else os.fspath(root)
        self.environments: list[str] = list(self.dataset_class.ENVIRONMENTS)
        self.test_envs: list[int] = _normalize_test_envs(
            test_envs, self.environments, self.dataset_name
        )
        self.source_envs: list[int] = [
            i for i in range(len(self.environments)) if i not in self.test_envs
        ]
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not 0.0 <= float(holdout_fraction) < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
        if steps_per_epoch is not None and int(steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {steps_per_epoch}")
        self.trial_seed = int(trial_seed)
        self.holdout_fraction = float(holdout_fraction)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.augment = bool(augment)
        self.nac_on_train = bool(nac_on_train)
        self.nac_train_augment = bool(nac_train_augment)
        self._steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.seed = self.trial_seed if seed is None else int(seed)
        self.replacement = bool(replacement)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.image_size = int(image_size)
        self.save_hyperparameters(
            {
                "dataset": self.dataset_name,
                "root": self.root,
                "test_envs": list(self.test_envs),
                "trial_seed": self.trial_seed,
                "holdout_fraction": self.holdout_fraction,
                "batch_size": self.batch_size,
                "augment": self.augment,
                "nac_on_train": self.nac_on_train,
            }
        )

        self.num_classes: int = self.dataset_class.NUM_CLASSES
        is_image = issubclass(self.dataset_class, MultipleEnvironmentImageFolder)
        self.input_shape: tuple[int, int, int] = (
            (3, self.image_size, self.image_size) if is_image else self.dataset_class.INPUT_SHAPE
        )
        k = len(self.test_envs)
        self.val_idx: int = 0
        self.ood_idx: list[int] = list(range(1, 1 + k))
        self.oracle_idx: list[int] = list(range(1 + k, 1 + 2 * k))
        self.nac_idx: int = 1 + 2 * k if self.nac_on_train else self.val_idx
        self.val_dataloader_names: list[str] = (
            ["val"]
            + [f"env{e}_in" for e in self.test_envs]
            + [f"env{e}_out" for e in self.test_envs]
            + (["train"] if self.nac_on_train else [])
        )
        self.test_dataloader_names: list[str] = [f"env{e}" for e in self.test_envs]

        self.data: MultipleDomainDataset | None = None
        self.splits: dict[int, dict[str, list[int]]] = {}
        self.train_dataset: Dataset | None = None
        self.val_datasets: list[Dataset] = []
        self.test_datasets: list[Dataset] = []

    # ------------------------------------------------------------------ setup
    def _build_dataset(self) -> MultipleDomainDataset:
        if issubclass(self.dataset_class, MultipleEnvironmentImageFolder):
            return self.dataset_class(self.root, image_size=self.image_size)
        return self.dataset_class(self.root)

    def setup(self, stage: str | None = None) -> None:
        """Load the environments, split them (DomainBed) and build every split's dataset."""
        if self.data is not None:
            return
        data = self._build_dataset()
        self.classes: list[str] = list(data.classes)
        train_tf = data.train_transform(self.augment)
        eval_tf = data.eval_transform()
        self.splits = {}
        for i in range(len(data)):
            out_idx, in_idx = split_indices(len(data[i]), self.trial_seed, i, self.holdout_fraction)
            self.splits[i] = {"in": in_idx, "out": out_idx}
        empty = [self.environments[i] for i in self.source_envs if not self.splits[i]["in"]]
        if empty:
            raise ValueError(
                f"source environments {empty} of '{self.dataset_name}' have no training samples "
                f"after holding out {self.holdout_fraction:.0%}"
            )

        def subset(env: int, split: str, transform: Any) -> TransformedSubset:
            return TransformedSubset(data[env], self.splits[env][split], transform)

        self.train_dataset = ConcatDataset([subset(e, "in", train_tf) for e in self.source_envs])
        self.val_datasets = (
            [ConcatDataset([subset(e, "out", eval_tf) for e in self.source_envs])]
            + [subset(e, "in", eval_tf) for e in self.test_envs]
            + [subset(e, "out", eval_tf) for e in self.test_envs]
        )
        if self.nac_on_train:
            nac_tf = train_tf if self.nac_train_augment else eval_tf
            self.val_datasets.append(
                ConcatDataset([subset(e, "in", nac_tf) for e in self.source_envs])
            )
        self.test_datasets = [
            TransformedSubset(data[e], range(len(data[e])), eval_tf) for e in self.test_envs
        ]
        self.data = data

    # ------------------------------------------------------------- properties
    @property
    def steps_per_epoch(self) -> int:
        """Training steps per epoch (needs :meth:`setup` unless given explicitly)."""
        if self._steps_per_epoch is not None:
            return self._steps_per_epoch
        self._require_setup()
        largest = max(len(self.splits[e]["in"]) for e in self.source_envs)
        return math.ceil(largest / self.batch_size)

    @property
    def split_sizes(self) -> dict[str, int]:
        """Number of samples of every loader, by name (``train`` = one pass over source "in")."""
        self._require_setup()
        sizes = dict(zip(self.val_dataloader_names, (len(d) for d in self.val_datasets)))
        sizes.update(zip(self.test_dataloader_names, (len(d) for d in self.test_datasets)))
        sizes.setdefault("train", len(self.train_dataset))  # type: ignore[arg-type]
        return sizes

    def _require_setup(self) -> None:
        if self.data is None:
            raise RuntimeError("call DomainBedDataModule.setup() first (the Trainer does it)")

    # ------------------------------------------------------------ dataloaders
    def _loader_kwargs(self) -> dict[str, Any]:
        workers = self.num_workers
        return {
            "num_workers": workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.persistent_workers and workers > 0,
            "generator": torch.Generator().manual_seed(self.seed),
        }

    def train_dataloader(self) -> DataLoader:
        """Balanced batches: ``batch_size`` samples of every source environment per step."""
        self._require_setup()
        sizes = [len(self.splits[e]["in"]) for e in self.source_envs]
        kwargs = {"num_steps": self.steps_per_epoch, "seed": self.seed}
        trainer = self.trainer
        world_size = trainer.world_size if trainer is not None else 1
        if world_size > 1:  # data parallel: every rank draws its own balanced batches
            self.train_sampler: BalancedDomainSampler = DistributedBalancedDomainSampler(
                sizes, self.batch_size, replacement=self.replacement, rank=trainer.global_rank,
                num_replicas=world_size, **kwargs,
            )  # fmt: skip
        else:
            self.train_sampler = BalancedDomainSampler(
                sizes, self.batch_size, replacement=self.replacement, **kwargs
            )
        return DataLoader(
            self.train_dataset,  # type: ignore[arg-type]
            batch_size=self.batch_size * len(self.source_envs),
            sampler=self.train_sampler,
            drop_last=False,
            **self._loader_kwargs(),
        )

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.eval_batch_size, shuffle=False, **self._loader_kwargs()
        )

    def val_dataloader(self) -> list[DataLoader]:
        """Evaluation loaders in the order of :attr:`val_dataloader_names`."""
        self._require_setup()
        return [self._eval_loader(d) for d in self.val_datasets]

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per test environment (the whole environment), :attr:`test_dataloader_names`."""
        self._require_setup()
        return [self._eval_loader(d) for d in self.test_datasets]
