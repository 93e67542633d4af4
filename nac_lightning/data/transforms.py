"""DomainBed's image transforms (torchvision) for the 224x224 image datasets.

* :func:`eval_transform`: ``Resize((224, 224))``, ``ToTensor``, ImageNet ``Normalize``; used for
  every evaluation split and for training when augmentation is off.
* :func:`train_transform`: ``RandomResizedCrop(224, scale=(0.7, 1.0))``,
  ``RandomHorizontalFlip``, ``ColorJitter(0.3, 0.3, 0.3, 0.3)``, ``RandomGrayscale``,
  ``ToTensor``, ``Normalize``; DomainBed's training augmentation.

Both take a PIL image (RGB) and return a float tensor of shape ``(3, size, size)``.
"""

from __future__ import annotations

from torchvision import transforms

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "eval_transform", "train_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(size: int = 224) -> transforms.Compose:
    """DomainBed's evaluation transform: resize to ``size x size``, to tensor, normalize."""
    return transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )


def train_transform(size: int = 224) -> transforms.Compose:
    """DomainBed's training augmentation (random resized crop, flip, color jitter, grayscale)."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.7, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.3, 0.3, 0.3, 0.3),
            transforms.RandomGrayscale(),
            transforms.ToTensor(),
            transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ]
    )
