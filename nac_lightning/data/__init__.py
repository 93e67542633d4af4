"""DomainBed data for nac_lightning: splits, datasets, transforms, the DataModule, downloads.

Public names:

* :func:`split_indices`, :func:`seed_hash`: DomainBed's exact in/out splits.
* :class:`DomainBedDataModule`: Lightning DataModule (balanced training batches, evaluation
  loaders in a fixed, documented order).
* :data:`DATASETS`, :func:`get_dataset_class` and the dataset classes :class:`PACS`,
  :class:`VLCS`, :class:`OfficeHome`, :class:`TerraIncognita`, :class:`RotatedDigits`.
* :func:`eval_transform`, :func:`train_transform`: DomainBed's image transforms.
* :class:`BalancedDomainSampler`: the per-domain balanced batch sampler.
* :class:`DatasetLayoutError`, :class:`CorruptImageError`: data errors.

Downloads: ``nac-download {pacs,vlcs,office_home,terra_incognita,all} --root DIR`` (see
:mod:`nac_lightning.data.download`).
"""

from nac_lightning.data.datamodule import DomainBedDataModule
from nac_lightning.data.datasets import (
    DATASETS,
    PACS,
    VLCS,
    CorruptImageError,
    DatasetLayoutError,
    MultipleDomainDataset,
    MultipleEnvironmentImageFolder,
    OfficeHome,
    RotatedDigits,
    TerraIncognita,
    get_dataset_class,
)
from nac_lightning.data.samplers import BalancedDomainSampler
from nac_lightning.data.splits import seed_hash, split_indices
from nac_lightning.data.transforms import eval_transform, train_transform

__all__ = [
    "DATASETS",
    "PACS",
    "VLCS",
    "BalancedDomainSampler",
    "CorruptImageError",
    "DatasetLayoutError",
    "DomainBedDataModule",
    "MultipleDomainDataset",
    "MultipleEnvironmentImageFolder",
    "OfficeHome",
    "RotatedDigits",
    "TerraIncognita",
    "eval_transform",
    "get_dataset_class",
    "seed_hash",
    "split_indices",
    "train_transform",
]
