"""Multi-domain datasets in DomainBed's layout, one class per dataset, plus a name registry.

Image datasets live under ``root/<FOLDER>/<environment>/<class>/<image>``; the environments are
the sorted environment folders (DomainBed's order) and each one is a torchvision
:class:`~torchvision.datasets.ImageFolder`. Every environment uses the *same* class-to-index
mapping (the sorted union of class folders), so a label means the same class in every domain.

Each dataset object is a sequence of environments: ``dataset[i]`` is the i-th environment, a
map-style dataset returning *untransformed* ``(x, y)`` samples (a PIL image for image datasets, a
tensor for ``rotated_digits``). Transforms are applied per split by :class:`TransformedSubset`,
so an environment's training split can be augmented while its held-out split is not.

Registry (:data:`DATASETS`): ``"pacs"``, ``"vlcs"``, ``"office_home"``, ``"terra_incognita"``,
``"rotated_digits"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from nac_lightning.data.transforms import eval_transform, train_transform

__all__ = [
    "DATASETS",
    "PACS",
    "VLCS",
    "CorruptImageError",
    "DatasetLayoutError",
    "EnvironmentImageFolder",
    "MultipleDomainDataset",
    "MultipleEnvironmentImageFolder",
    "OfficeHome",
    "RotatedDigits",
    "TerraIncognita",
    "TransformedSubset",
    "get_dataset_class",
    "load_rgb_image",
    "validate_layout",
]

_IMG_EXTENSIONS = tuple(IMG_EXTENSIONS)  # what ImageFolder loads
DOWNLOAD_COMMAND = "nac-download {name} --root {root}  (or: python -m nac_lightning.data.download {name} --root {root})"


class DatasetLayoutError(FileNotFoundError):
    """The data root does not hold the dataset in DomainBed's folder layout."""


class CorruptImageError(OSError):
    """An image file could not be opened or decoded; the message names the file."""


def load_rgb_image(path: str) -> Image.Image:
    """Open ``path`` with PIL and return it fully decoded as RGB.

    Raises:
        CorruptImageError: naming the file, when it cannot be opened or decoded (truncated,
            not an image, unreadable).
    """
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except Exception as exc:  # re-raised with the file name; PIL raises many types
        raise CorruptImageError(
            f"cannot read image file '{path}': {type(exc).__name__}: {exc}. "
            "Delete or replace this file (or re-download the dataset)."
        ) from exc


class EnvironmentImageFolder(ImageFolder):
    """An ImageFolder for one environment with a class mapping fixed from outside.

    Args:
        root: the environment folder (``root/<FOLDER>/<environment>``).
        classes: the dataset's class names; label ``i`` is ``classes[i]`` in every environment.
            A class folder missing from this environment simply contributes no samples.
        transform: optional transform applied to the PIL image (None: return the PIL image).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classes: Sequence[str],
        transform: Callable | None = None,
    ) -> None:
        self._fixed_classes = list(classes)
        super().__init__(str(root), transform=transform, loader=load_rgb_image, allow_empty=True)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """Return the fixed, shared class list and mapping (not this folder's own listing)."""
        return list(self._fixed_classes), {c: i for i, c in enumerate(self._fixed_classes)}


class TransformedSubset(Dataset):
    """The samples ``indices`` of ``dataset`` with ``transform`` applied to ``x``.

    ``dataset[i]`` must return ``(x, y)``; ``transform`` may be None (identity).
    """

    def __init__(
        self, dataset: Dataset, indices: Sequence[int], transform: Callable | None = None
    ) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        x, y = self.dataset[self.indices[index]]
        if self.transform is not None:
            x = self.transform(x)
        return x, y


class MultipleDomainDataset:
    """Base class: a sequence of environments (DomainBed's ``MultipleDomainDataset``).

    Class attributes describe the dataset without touching the disk: ``NAME`` (registry key),
    ``ENVIRONMENTS`` (sorted environment names), ``NUM_CLASSES``, ``INPUT_SHAPE`` (C, H, W),
    ``FOLDER`` (folder under the data root, None when nothing is read from disk),
    ``CLASSES`` (expected class names, None when only their number is checked),
    ``DOWNLOADABLE`` (whether ``nac-download`` fetches it).
    """

    NAME: str = ""
    ENVIRONMENTS: tuple[str, ...] = ()
    NUM_CLASSES: int = 0
    INPUT_SHAPE: tuple[int, int, int] = (3, 224, 224)
    FOLDER: str | None = None
    CLASSES: tuple[str, ...] | None = None
    DOWNLOADABLE: bool = False

    datasets: list[Dataset]
    environments: list[str]
    classes: list[str]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.NUM_CLASSES

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one transformed input."""
        return self.INPUT_SHAPE

    def __getitem__(self, index: int) -> Dataset:
        return self.datasets[index]

    def __len__(self) -> int:
        return len(self.datasets)

    def train_transform(self, augment: bool) -> Callable | None:
        """Transform for training ("in") splits of source environments."""
        return None

    def eval_transform(self) -> Callable | None:
        """Transform for every evaluation split."""
        return None

    @classmethod
    def expected_layout(cls, root: str | os.PathLike | None = None) -> str:
        """Human-readable description of the folder layout this dataset expects."""
        base = "ROOT" if root is None else str(root)
        envs = ",".join(cls.ENVIRONMENTS)
        return f"{os.path.join(base, cls.FOLDER or '')}/{{{envs}}}/<class>/<image>"


def _visible_subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def validate_layout(cls: type[MultipleDomainDataset], root: str | os.PathLike | None) -> list[str]:
    """Check ``root/<FOLDER>`` against ``cls``'s environments and classes.

    Returns:
        The sorted class names (the union over environments).

    Raises:
        DatasetLayoutError: missing root or dataset folder (naming the expected layout and the
            download command), environment folders that differ from the expected ones (found vs
            expected), wrong classes, or an environment without images.
    """
    name = cls.NAME
    download = DOWNLOAD_COMMAND.format(name=name, root=root if root is not None else "ROOT")
    layout = cls.expected_layout(root)
    if root is None:
        raise DatasetLayoutError(
            f"dataset '{name}' needs a data root (root=None given). Expected layout: {layout}. "
            f"Download it with: {download}"
        )
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DatasetLayoutError(
            f"data root '{root_path}' does not exist or is not a folder. "
            f"Expected layout for '{name}': {layout}. Download it with: {download}"
        )
    data_path = root_path / str(cls.FOLDER)
    if not data_path.is_dir():
        present = _visible_subdirs(root_path)
        raise DatasetLayoutError(
            f"dataset folder '{data_path}' for '{name}' not found (folders in the root: "
            f"{present}). Expected layout: {layout}. Download it with: {download}"
        )
    found = _visible_subdirs(data_path)
    expected = list(cls.ENVIRONMENTS)
    if found != expected:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        raise DatasetLayoutError(
            f"environment folders in '{data_path}' do not match '{name}': found {found}, "
            f"expected {expected} (missing {missing}, unexpected {extra}). "
            f"Expected layout: {layout}. Re-download with: {download}"
        )
    per_env = {env: _visible_subdirs(data_path / env) for env in expected}
    union = sorted(set().union(*per_env.values()))
    wrong_names = cls.CLASSES is not None and union != sorted(cls.CLASSES)
    if wrong_names or len(union) != cls.NUM_CLASSES:
        want = sorted(cls.CLASSES) if cls.CLASSES is not None else f"{cls.NUM_CLASSES} classes"
        raise DatasetLayoutError(
            f"class folders of '{name}' under '{data_path}' do not match: found {len(union)} "
            f"classes {union}, expected {want}. Per environment: "
            + "; ".join(f"{e}: {len(c)}" for e, c in per_env.items())
            + f". Re-download with: {download}"
        )
    for env, classes in per_env.items():
        if classes != union:
            warnings.warn(
                f"environment '{env}' of '{name}' lacks class folders "
                f"{sorted(set(union) - set(classes))}; labels stay consistent across environments",
                stacklevel=3,
            )
    return union


class MultipleEnvironmentImageFolder(MultipleDomainDataset):
    """A DomainBed image dataset: one :class:`EnvironmentImageFolder` per environment.

    Args:
        root: the data root holding ``<FOLDER>/`` (see :meth:`expected_layout`).
        image_size: side of the square network input (DomainBed: 224).

    Raises:
        DatasetLayoutError: see :func:`validate_layout`.
    """

    def __init__(self, root: str | os.PathLike | None, image_size: int = 224) -> None:
        self.classes = validate_layout(type(self), root)
        self.root = Path(root).expanduser() / str(self.FOLDER)  # type: ignore[arg-type]
        self.image_size = int(image_size)
        self.environments = list(self.ENVIRONMENTS)
        self.datasets = []
        for env in self.environments:
            folder = EnvironmentImageFolder(self.root / env, self.classes)
            if len(folder) == 0:
                raise DatasetLayoutError(
                    f"environment folder '{self.root / env}' of '{self.NAME}' holds no images "
                    f"(looked for {', '.join(sorted(ext for ext in _IMG_EXTENSIONS))} files in its "
                    "class folders). Re-download with: "
                    + DOWNLOAD_COMMAND.format(name=self.NAME, root=root)
                )
            self.datasets.append(folder)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(3, image_size, image_size)``."""
        return (3, self.image_size, self.image_size)

    def train_transform(self, augment: bool) -> Callable:
        """DomainBed's augmentation when ``augment`` else the eval transform."""
        return train_transform(self.image_size) if augment else eval_transform(self.image_size)

    def eval_transform(self) -> Callable:
        """DomainBed's eval transform (resize, to tensor, ImageNet normalization)."""
        return eval_transform(self.image_size)


class PACS(MultipleEnvironmentImageFolder):
    """PACS: 4 domains (art_painting, cartoon, photo, sketch), 7 classes, 9,991 images."""

    NAME = "pacs"
    FOLDER = "PACS"
    ENVIRONMENTS = ("art_painting", "cartoon", "photo", "sketch")
    NUM_CLASSES = 7
    CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
    DOWNLOADABLE = True


class VLCS(MultipleEnvironmentImageFolder):
    """VLCS: 4 domains (Caltech101, LabelMe, SUN09, VOC2007), 5 classes, 10,729 images."""

    NAME = "vlcs"
    FOLDER = "VLCS"
    ENVIRONMENTS = ("Caltech101", "LabelMe", "SUN09", "VOC2007")
    NUM_CLASSES = 5
    DOWNLOADABLE = True


class OfficeHome(MultipleEnvironmentImageFolder):
    """OfficeHome: 4 domains (Art, Clipart, Product, Real World), 65 classes, 15,588 images."""

    NAME = "office_home"
    FOLDER = "office_home"
    ENVIRONMENTS = ("Art", "Clipart", "Product", "Real World")
    NUM_CLASSES = 65
    DOWNLOADABLE = True


class TerraIncognita(MultipleEnvironmentImageFolder):
    """TerraIncognita: 4 camera-trap locations (38, 43, 46, 100), 10 classes."""

    NAME = "terra_incognita"
    FOLDER = "terra_incognita"
    ENVIRONMENTS = ("location_100", "location_38", "location_43", "location_46")
    NUM_CLASSES = 10
    CLASSES = (
        "bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon",
        "squirrel",
    )  # fmt: skip
    DOWNLOADABLE = True


class RotatedDigits(MultipleDomainDataset):
    """A small, embedded stand-in for RotatedMNIST built from scikit-learn's bundled digits.

    The 1,797 real 8x8 digits of :func:`sklearn.datasets.load_digits` (no download) are
    shuffled once with ``shuffle_seed``, scaled to ``[0, 1]``, upsampled to 20x20 (bilinear) and
    padded to 28x28 (MNIST's 20x20 digit box in a 28x28 frame), then dealt round-robin into 6
    disjoint environments (``images[i::6]``, as DomainBed's RotatedMNIST) rotated by 0, 15, 30,
    45, 60 and 75 degrees (bilinear, zero fill). Each environment is an in-memory
    :class:`~torch.utils.data.TensorDataset` of ``(x: float32 (1, 28, 28), y: int64)``, ~300
    samples. No augmentation is applied (as for DomainBed's MNIST datasets).

    ``input_shape`` is ``(1, 28, 28)``, ``num_classes`` 10. ``root`` is ignored.
    """

    NAME = "rotated_digits"
    FOLDER = None
    ANGLES = (0, 15, 30, 45, 60, 75)
    ENVIRONMENTS = tuple(str(a) for a in ANGLES)
    NUM_CLASSES = 10
    INPUT_SHAPE = (1, 28, 28)
    CLASSES = tuple(str(d) for d in range(10))

    def __init__(self, root: str | os.PathLike | None = None, shuffle_seed: int = 0) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        perm = np.random.RandomState(shuffle_seed).permutation(len(digits.target))
        x = torch.from_numpy(digits.images[perm]).to(torch.float32).div_(16.0).unsqueeze(1)
        y = torch.from_numpy(digits.target[perm]).to(torch.int64)
        x = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
        x = torch.nn.functional.pad(x.clamp_(0.0, 1.0), (4, 4, 4, 4))
        self.classes = list(self.CLASSES)
        self.environments = list(self.ENVIRONMENTS)
        self.datasets = []
        n_env = len(self.ANGLES)
        for i, angle in enumerate(self.ANGLES):
            xi = TF.rotate(x[i::n_env], float(angle), interpolation=InterpolationMode.BILINEAR)
            self.datasets.append(TensorDataset(xi.clamp_(0.0, 1.0).contiguous(), y[i::n_env]))


DATASETS: dict[str, type[MultipleDomainDataset]] = {
    cls.NAME: cls for cls in (PACS, VLCS, OfficeHome, TerraIncognita, RotatedDigits)
}


_ALIASES = {
    "officehome": "office_home",
    "terraincognita": "terra_incognita",
    "digits": "rotated_digits",
}


def get_dataset_class(name: str) -> type[MultipleDomainDataset]:
    """Return the dataset class registered as ``name`` (see :data:`DATASETS`).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    key = str(name).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; known datasets: {sorted(DATASETS)}")
    return DATASETS[key]
