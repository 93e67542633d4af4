"""nac_lightning: NAC-ME checkpoint selection for domain generalization with PyTorch Lightning.

Public API:

* :func:`kl_uniform_grad`, :func:`kl_uniform_grad_autograd`: the gradient of
  ``KL(u || softmax(logits))`` w.r.t. a layer's input (closed form / autograd).
* :func:`neuron_states`: ``sigmoid(alpha * z * g)`` per sample and neuron.
* :class:`NeuronCoverage`: a torchmetrics ``Metric`` holding per-neuron state histograms;
  ``compute()`` is NAC-ME, ``score()`` is NAC-UE.
* :class:`NACMECallback`: a Lightning callback that logs NAC-ME every validation run (for
  ``ModelCheckpoint`` / ``EarlyStopping``) and reports how NAC-ME and validation accuracy
  correlate with out-of-domain accuracy.
* :mod:`nac_lightning.selection`: checkpoint selection and rank correlations.
"""

from nac_lightning.callback import NACMECallback
from nac_lightning.coverage import NeuronCoverage
from nac_lightning.states import (
    kl_uniform_grad,
    kl_uniform_grad_autograd,
    neuron_states,
    pool_neurons,
)

__version__ = "0.1.0"

__all__ = [
    "NACMECallback",
    "NeuronCoverage",
    "kl_uniform_grad",
    "kl_uniform_grad_autograd",
    "neuron_states",
    "pool_neurons",
]
