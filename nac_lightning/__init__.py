"""nac_lightning: NAC-ME checkpoint selection for domain generalization with PyTorch Lightning.

Public API:

* :func:`kl_uniform_grad`, :func:`kl_uniform_grad_autograd`: the gradient of
  ``KL(u || softmax(logits))`` w.r.t. a layer's input (closed form / autograd).
* :func:`neuron_states`: ``sigmoid(alpha * z * g)`` per sample and neuron.
* :class:`NeuronCoverage`: a torchmetrics ``Metric`` holding per-neuron state histograms;
  ``compute()`` is NAC-ME, ``score()`` is NAC-UE.
"""

from nac_lightning.coverage import NeuronCoverage
from nac_lightning.states import (
    kl_uniform_grad,
    kl_uniform_grad_autograd,
    neuron_states,
    pool_neurons,
)

__version__ = "0.1.0"

__all__ = [
    "NeuronCoverage",
    "kl_uniform_grad",
    "kl_uniform_grad_autograd",
    "neuron_states",
    "pool_neurons",
]
