"""Helpers for the data tests: tiny DomainBed-layout image trees generated with PIL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nac_lightning.data import get_dataset_class

# Class folder names used for generated trees (the real ones where the dataset class checks them).
TREE_CLASSES = {
    "pacs": ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
    "vlcs": ("bird", "car", "chair", "dog", "person"),
    "office_home": tuple(f"Class_{i:02d}" for i in range(65)),
    "terra_incognita": (
        "bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon",
        "squirrel",
    ),
}  # fmt: skip


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (12, 10)) -> None:
    """Write a small random RGB image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def build_tree(
    root: Path,
    dataset: str,
    images_per_class: int | Sequence[int] = 2,
    environments: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Create ``root/<FOLDER>/<env>/<class>/img_k.(png|jpg)`` for ``dataset``; return root.

    ``images_per_class`` may be one count per environment.
    """
    cls = get_dataset_class(dataset)
    envs = list(cls.ENVIRONMENTS if environments is None else environments)
    names = list(TREE_CLASSES[cls.NAME] if classes is None else classes)
    counts = (
        [images_per_class] * len(envs)
        if isinstance(images_per_class, int)
        else list(images_per_class)
    )
    rng = np.random.default_rng(seed)
    for env, count in zip(envs, counts):
        for c in names:
            for k in range(count):
                suffix = "jpg" if k % 2 else "png"
                write_image(root / str(cls.FOLDER) / env / c / f"img_{k}.{suffix}", rng)
    return root
