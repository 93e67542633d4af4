"""nac_lightning: NAC-ME checkpoint selection for domain generalization with PyTorch Lightning."""

__version__ = "0.1.0"
