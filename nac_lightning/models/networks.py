"""Featurizers for ERM on DomainBed datasets: torchvision ResNets and DomainBed's small MNIST CNN.

Every featurizer maps a batch of images ``(B, C, H, W)`` to features ``(B, n_outputs)`` and exposes
``n_outputs``, so a linear classifier can sit on top (see :class:`nac_lightning.models.ERMModule`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

RESNET_ARCHS = ("resnet18", "resnet50")
ARCHS = (*RESNET_ARCHS, "mnist_cnn")


class PretrainedWeightsError(RuntimeError):
    """torchvision's pretrained weights could not be fetched (e.g. no internet)."""


class ResNetFeaturizer(nn.Module):
    """A torchvision ResNet with its ``fc`` layer removed (DomainBed's ``ResNet`` featurizer).

    Args:
        arch: ``"resnet18"`` (512 features) or ``"resnet50"`` (2048 features).
        input_shape: ``(C, H, W)`` of the inputs. With ``C != 3`` the first convolution is
            rebuilt for ``C`` channels, its weights copied cyclically from the RGB ones (as DomainBed).
        pretrained: load torchvision's ImageNet weights (``IMAGENET1K_V1``, DomainBed's choice),
            downloaded by torchvision into its cache when not there yet.
        weights_path: a local state dict (e.g. torchvision's ``resnet50-0676ba61.pth``) loaded
            instead of downloading; implies ``pretrained``. ``fc.*`` keys are ignored.
        freeze_bn: keep every BatchNorm layer in eval mode during training (running statistics
            frozen), as DomainBed does for its ResNets.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        input_shape: Sequence[int] = (3, 224, 224),
        pretrained: bool = False,
        weights_path: str | os.PathLike | None = None,
        freeze_bn: bool = True,
    ) -> None:
        super().__init__()
        import torchvision.models as tvm

        if arch not in RESNET_ARCHS:
            raise ValueError(f"unknown ResNet arch {arch!r}; choose one of {list(RESNET_ARCHS)}")
        builder = getattr(tvm, arch)
        weights = None
        if pretrained and weights_path is None:
            weights = tvm.get_model_weights(arch).IMAGENET1K_V1
        try:
            network = builder(weights=weights)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise PretrainedWeightsError(
                f"could not get torchvision's pretrained {arch} weights ({err}); without internet "
                f"pass model.weights_path=/path/to/{os.path.basename(weights.url)} (torchvision's "
                f"file) or set model.pretrained=false"
            ) from err
        if weights_path is not None:
            _load_backbone_state(network, weights_path)
        self.n_outputs = network.fc.in_features
        network.fc = nn.Identity()

        channels = int(input_shape[0])
        if channels != 3:
            old = network.conv1
            new = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            with torch.no_grad():
                new.weight.copy_(old.weight[:, torch.arange(channels) % 3])
            network.conv1 = new
        self.network = network
        self.freeze_bn = bool(freeze_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pooled ResNet features ``(B, n_outputs)``."""
        return self.network(x)

    def train(self, mode: bool = True) -> ResNetFeaturizer:
        """Set train/eval mode; with ``freeze_bn`` the BatchNorm layers always stay in eval mode."""
        super().train(mode)
        if self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self


def _load_backbone_state(network: nn.Module, weights_path: str | os.PathLike) -> None:
    """Load a torchvision-style ResNet state dict from a local file, ignoring ``fc.*``."""
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"model.weights_path={path!r} does not exist; point it at a torchvision ResNet "
            f"state dict (.pth)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k for k in network.state_dict() if not k.startswith("fc.")}
    missing, unexpected = sorted(own - state.keys()), sorted(state.keys() - own)
    if missing or unexpected:
        raise ValueError(
            f"model.weights_path={path!r} does not match the ResNet: missing keys "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected keys "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    network.load_state_dict(state, strict=False)


class MNISTCNN(nn.Module):
    """DomainBed's ``MNIST_CNN`` featurizer for small digit images (e.g. 1x28x28).

    Four 3x3 convolutions (64, 128 stride 2, 128, 128 channels), each followed by ReLU and
    GroupNorm(8), then global average pooling to ``n_outputs = 128`` features.
    """

    n_outputs = 128

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__()
        channels = int(input_shape[0])
        self.conv1 = nn.Conv2d(channels, 64, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.bn0 = nn.GroupNorm(8, 64)
        self.bn1 = nn.GroupNorm(8, 128)
        self.bn2 = nn.GroupNorm(8, 128)
        self.bn3 = nn.GroupNorm(8, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the pooled features ``(B, 128)``."""
        x = self.bn0(torch.relu(self.conv1(x)))
        x = self.bn1(torch.relu(self.conv2(x)))
        x = self.bn2(torch.relu(self.conv3(x)))
        x = self.bn3(torch.relu(self.conv4(x)))
        return self.avgpool(x).flatten(1)


def build_featurizer(
    arch: str,
    input_shape: Sequence[int],
    pretrained: bool = False,
    weights_path: str | os.PathLike | None = None,
    freeze_bn: bool = True,
) -> nn.Module:
    """Build the featurizer named ``arch`` (one of :data:`ARCHS`) for inputs of ``input_shape``."""
    if arch == "mnist_cnn":
        if pretrained or weights_path is not None:
            raise ValueError(
                "arch 'mnist_cnn' has no pretrained weights; set model.pretrained=false"
            )
        return MNISTCNN(input_shape)
    if arch in RESNET_ARCHS:
        return ResNetFeaturizer(arch, input_shape, pretrained, weights_path, freeze_bn)
    raise ValueError(f"unknown model arch {arch!r}; choose one of {list(ARCHS)}")
