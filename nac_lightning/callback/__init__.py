"""The Lightning callback that computes NAC-ME every validation run."""

from nac_lightning.callback.batches import default_unpack
from nac_lightning.callback.nac_me import NACMECallback

__all__ = ["NACMECallback", "default_unpack"]
