"""nac_lightning: NAC-ME checkpoint selection for domain generalization with PyTorch Lightning.

Public API:

* :class:`NACMECallback`: a Lightning callback that logs NAC-ME every validation run (for
  ``ModelCheckpoint`` / ``EarlyStopping``) and reports how NAC-ME and validation accuracy
  correlate with out-of-domain accuracy.
* :class:`NeuronCoverage`: a torchmetrics ``Metric`` holding per-neuron state histograms;
  ``compute()`` is NAC-ME, ``score()`` is NAC-UE, ``diagnostics()`` tells if it is degenerate.
* :func:`kl_uniform_grad`, :func:`kl_uniform_grad_autograd`: the gradient of
  ``KL(u || softmax(logits))`` w.r.t. a layer's input (closed form / autograd).
* :func:`neuron_states`: ``sigmoid(alpha * z * g)`` per sample and neuron (:func:`pool_neurons`
  sum-pools conv and token maps first).
* :func:`select`, :func:`correlations`, :func:`compare_selections`: checkpoint selection and
  tie-aware rank correlations over per-checkpoint records.
* :class:`DomainBedDataModule`, :func:`split_indices`: DomainBed data (PACS, VLCS, OfficeHome,
  TerraIncognita, embedded rotated digits) with DomainBed's exact splits.
* :class:`ERMModule`: ERM (featurizer + dropout + linear classifier) as a LightningModule.
* :class:`ResultsWriter`: a callback writing DomainBed-style ``results.jsonl``, one line per
  validation, appended as produced.

Subpackages: :mod:`nac_lightning.data` (datasets, downloads), :mod:`nac_lightning.models`,
:mod:`nac_lightning.report` (``python -m nac_lightning.report``), :mod:`nac_lightning.training`
(what ``train.py`` runs).
"""

from nac_lightning.callback import NACMECallback
from nac_lightning.coverage import NeuronCoverage
from nac_lightning.data import DomainBedDataModule, split_indices
from nac_lightning.models import ERMModule
from nac_lightning.results import ResultsWriter
from nac_lightning.selection import compare_selections, correlations, select
from nac_lightning.states import (
    kl_uniform_grad,
    kl_uniform_grad_autograd,
    neuron_states,
    pool_neurons,
)

__version__ = "0.1.0"

__all__ = [
    "DomainBedDataModule",
    "ERMModule",
    "NACMECallback",
    "NeuronCoverage",
    "ResultsWriter",
    "compare_selections",
    "correlations",
    "kl_uniform_grad",
    "kl_uniform_grad_autograd",
    "neuron_states",
    "pool_neurons",
    "select",
    "split_indices",
]
