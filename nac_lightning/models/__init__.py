"""Models for ERM on DomainBed datasets: featurizers and the ERM LightningModule."""

from nac_lightning.models.erm import ERMModule
from nac_lightning.models.networks import (
    ARCHS,
    MNISTCNN,
    PretrainedWeightsError,
    ResNetFeaturizer,
    build_featurizer,
)

__all__ = [
    "ARCHS",
    "ERMModule",
    "MNISTCNN",
    "PretrainedWeightsError",
    "ResNetFeaturizer",
    "build_featurizer",
]
