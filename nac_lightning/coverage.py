"""Neuron activation coverage as a torchmetrics ``Metric`` (NAC-ME and NAC-UE).

Per neuron ``n``, a histogram of its states over in-distribution data with ``bins`` equal bins
on [0, 1] (``bin(s) = min(floor(s * bins), bins - 1)``, so ``s = 1`` lands in the last bin).
A bin counts as covered once ``r`` samples fell into it::

    NAC-ME       = mean_n  (1 / bins) * sum_k min(counts[k, n] / r, 1)
    NAC-UE(x)    = mean_n  min(counts[bin(s_n(x)), n] / r, 1)

Counts are additive, so batches, dataloaders and DDP ranks are summed before the score
(``dist_reduce_fx="sum"``). Memory is ``O(bins * num_neurons)`` whatever the data size.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["NeuronCoverage"]


class NeuronCoverage(Metric):
    """Per-neuron histograms of activation states; ``compute()`` returns NAC-ME.

    Args:
        num_neurons: number of neurons ``N`` (the width of the states passed to ``update``).
        bins: number of equal bins ``M`` on [0, 1] (official NAC-ME: 50).
        r: samples a bin needs to count as fully covered (official NAC-ME: 500). If no bin
            reaches ``r``, NAC-ME is just ``n_samples / (r * bins)``: see :meth:`diagnostics`.
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).

    States that are non-finite or outside [0, 1] are not counted; their number is kept in the
    ``invalid`` state and reported by a warning at each ``compute()``.

    Example:
        >>> metric = NeuronCoverage(num_neurons=4, bins=10, r=1)
        >>> metric.update(torch.tensor([[0.05, 0.15, 0.25, 0.35]]))
        >>> float(metric.compute())
        0.1
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    counts: Tensor
    invalid: Tensor
    state_sum: Tensor
    state_sq_sum: Tensor

    def __init__(self, num_neurons: int, bins: int = 50, r: float = 500, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_neurons, int) or num_neurons < 1:
            raise ValueError(f"num_neurons must be a positive int; got {num_neurons!r}.")
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive int (official NAC-ME: 50); got {bins!r}.")
        if not (isinstance(r, (int, float)) and math.isfinite(r) and r > 0):
            raise ValueError(f"r must be a positive number (official NAC-ME: 500); got {r!r}.")
        self.num_neurons = num_neurons
        self.bins = bins
        self.r = float(r)
        self.add_state(
            "counts", default=torch.zeros(bins, num_neurons, dtype=torch.long), dist_reduce_fx="sum"
        )
        self.add_state("invalid", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        # Sums of valid states, for the spread diagnostic (mean / std of all states).
        self.add_state(
            "state_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state(
            "state_sq_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.register_buffer("_neuron_offsets", torch.arange(num_neurons), persistent=False)
        # diagnostics of the state compute() saw (under DDP: summed across ranks)
        self._computed_diagnostics: dict[str, float] | None = None

    # ------------------------------------------------------------------ histogram
    def _check_states(self, states: Tensor) -> None:
        if states.dim() != 2 or states.shape[1] != self.num_neurons:
            raise ValueError(
                f"states must have shape (batch, num_neurons={self.num_neurons}); got "
                f"{tuple(states.shape)}. Pool conv/token maps first (nac_lightning.neuron_states)."
            )

    def bin_index(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """Bin of each state and whether it is valid (finite and in [0, 1]); both ``(B, N)``."""
        valid = torch.isfinite(states) & (states >= 0) & (states <= 1)
        safe = torch.where(valid, states, torch.zeros((), dtype=states.dtype, device=states.device))
        # float64 makes s * bins exact for float32/bf16 states, so floor() never rounds up.
        idx = (safe.double() * self.bins).floor().long().clamp_(0, self.bins - 1)
        return idx, valid

    def update(self, states: Tensor, mask: Tensor | None = None) -> None:
        """Add a ``(B, N)`` batch of states to the histograms: ``O(B * N)``, no host sync.

        Args:
            states: ``(B, N)`` neuron states.
            mask: optional ``(B,)`` bool; rows where it is False are ignored entirely (e.g.
                misclassified samples). Masking here avoids the host sync of ``states[mask]``.
        """
        self._check_states(states)
        self._computed_diagnostics = None
        states = states.detach()
        if states.numel() == 0:
            return
        idx, valid = self.bin_index(states)
        if mask is not None:
            if mask.shape != states.shape[:1]:
                raise ValueError(
                    f"mask must have shape (batch={states.shape[0]},); got {tuple(mask.shape)}."
                )
            keep = mask.to(device=states.device, dtype=torch.bool).unsqueeze(1)
            self.invalid += (~valid & keep).sum()
            valid = valid & keep
        else:
            self.invalid += (~valid).sum()
        # Flat index into counts.view(-1) (bin-major): bin * N + neuron.
        flat = (idx * self.num_neurons + self._neuron_offsets).reshape(-1)
        self.counts.view(-1).index_add_(0, flat, valid.reshape(-1).long())
        vs = torch.where(valid, states, torch.zeros((), dtype=states.dtype, device=states.device))
        vs = vs.double()
        self.state_sum += vs.sum()
        self.state_sq_sum += (vs * vs).sum()

    # ------------------------------------------------------------------ scores
    def coverage(self) -> Tensor:
        """Per-bin coverage ``min(counts / r, 1)``, shape ``(bins, N)``."""
        return (self.counts.double() / self.r).clamp_(max=1.0).float()

    def compute(self) -> Tensor:
        """NAC-ME: mean over neurons and bins of the coverage, a scalar in [0, 1].

        NaN (with a warning) when no valid state was seen: 0 would look like a real score.
        Also records :meth:`diagnostics` of the state it scored (synced across DDP ranks).
        """
        self._computed_diagnostics = self._diagnostics_of_state()
        n_invalid = int(self.invalid)
        if n_invalid:
            warnings.warn(
                f"NeuronCoverage: {n_invalid} states were non-finite or outside [0, 1] and were "
                "not counted (NaN/Inf in activations or logits?).",
                RuntimeWarning,
                stacklevel=2,
            )
        if int(self.counts.sum()) == 0:
            warnings.warn(
                "NeuronCoverage saw no valid data: NAC-ME is NaN. Check that update() received "
                "states (with correct_only, that some samples were classified correctly).",
                RuntimeWarning,
                stacklevel=2,
            )
            return torch.tensor(float("nan"), device=self.counts.device)
        return self.coverage().mean()

    def score(self, states: Tensor) -> Tensor:
        """NAC-UE per sample, ``(B,)``: mean over neurons of the coverage of each state's bin.

        Uses the histograms accumulated so far (fit them on in-distribution data first).
        Higher means more in-distribution. Invalid states (non-finite, outside [0, 1]) count
        as uncovered (0).
        """
        self._check_states(states)
        idx, valid = self.bin_index(states.detach())
        per_neuron = self.coverage().gather(0, idx) * valid
        return per_neuron.mean(dim=1)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict[str, float]:
        """Numbers that tell whether NAC-ME means anything for this configuration.

        Returns a dict with
        ``occupied_bins`` (mean over neurons of bins holding at least one state),
        ``occupied_fraction`` (that divided by ``bins``),
        ``saturated`` (share of all bins that reached ``r``),
        ``state_mean`` / ``state_std`` (over all valid states),
        ``n_samples`` (states counted per neuron, on average) and ``invalid`` (states dropped).

        After ``compute()`` (and until the next ``update``/``reset``) these describe the state
        ``compute()`` scored, which under DDP is the histograms summed over all ranks (torchmetrics
        restores each rank's local state after ``compute()``). Before any ``compute()`` they
        describe this process's local state.
        """
        if self._computed_diagnostics is not None and getattr(self, "_computed", None) is not None:
            return dict(self._computed_diagnostics)
        return self._diagnostics_of_state()

    def reset(self) -> None:
        """Clear the histograms (and the diagnostics recorded by ``compute()``)."""
        super().reset()
        self._computed_diagnostics = None

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another metric's (or state dict's) histograms to this one's."""
        super().merge_state(incoming_state)
        self._computed_diagnostics = None
        self._computed = None  # torchmetrics keeps a stale compute() cache otherwise

    def _diagnostics_of_state(self) -> dict[str, float]:
        counts = self.counts
        total = counts.sum().item()
        n = total / max(self.num_neurons, 1)
        mean = self.state_sum.item() / total if total else float("nan")
        var = self.state_sq_sum.item() / total - mean * mean if total else float("nan")
        occupied = (counts > 0).sum(dim=0).double().mean().item()
        return {
            "occupied_bins": occupied,
            "occupied_fraction": occupied / self.bins,
            "saturated": (counts >= self.r).double().mean().item(),
            "state_mean": mean,
            "state_std": math.sqrt(max(var, 0.0)) if total else float("nan"),
            "n_samples": n,
            "invalid": float(self.invalid.item()),
        }

    def degeneracy_warnings(self, diagnostics: dict[str, float] | None = None) -> list[str]:
        """Human-readable reasons the score may be degenerate (empty list when it looks sound).

        * states in one or two bins per neuron: ``alpha`` too small (or too large: all at 0/1);
        * no bin reached ``r``: NAC-ME is only ``n_samples / (r * bins)``, a rescaled sample
          count; lower ``r`` or use more data.
        """
        d = self.diagnostics() if diagnostics is None else diagnostics
        out: list[str] = []
        if not d["n_samples"]:
            return out
        if d["occupied_bins"] <= 2.0:
            out.append(
                f"states occupy only {d['occupied_bins']:.2f} of {self.bins} bins per neuron "
                f"(state std {d['state_std']:.2g}): alpha is too small (states stuck near 0.5) or "
                "too large (stuck at 0/1); NAC-ME then barely depends on the model. Try alpha "
                "10x larger/smaller until states spread over many bins."
            )
        if d["saturated"] == 0.0:
            out.append(
                f"no bin reached r={self.r:g} (only {d['n_samples']:.0f} samples counted): "
                f"NAC-ME = n_samples / (r * bins) is a rescaled count of kept samples, not a "
                "coverage. Lower r (e.g. to a few percent of the samples) or use more data."
            )
        return out
