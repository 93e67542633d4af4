"""Helpers for the train tests: tiny DomainBed trees and train.py in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def image_tree(root, dataset, per_class=2, size=8):
    """A tiny DomainBed-layout tree for ``dataset`` under ``root`` (random PNG images)."""
    import numpy as np
    from PIL import Image

    from nac_lightning.data import get_dataset_class

    cls = get_dataset_class(dataset)
    classes = cls.CLASSES or [f"class_{i:02d}" for i in range(cls.NUM_CLASSES)]
    rng = np.random.default_rng(0)
    for env in cls.ENVIRONMENTS:
        for name in classes:
            folder = Path(root) / cls.FOLDER / env / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return Path(root)


def run_train(args, cwd, timeout=300):
    """Run ``python train.py ARGS`` in a subprocess (W&B offline, no Hydra full errors)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
