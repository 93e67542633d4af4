"""``NACMECallback``: NAC-ME on in-domain validation data, every validation run."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn

from nac_lightning.callback.batches import BatchUnpacker, default_unpack
from nac_lightning.callback.layers import (
    Tap,
    extract_logits,
    find_logits_linear,
    recording,
    resolve_module,
)
from nac_lightning.callback.reporting import log_report
from nac_lightning.coverage import NeuronCoverage
from nac_lightning.selection import compare_selections
from nac_lightning.serialization import write_json_atomic
from nac_lightning.states import kl_uniform_grad, kl_uniform_grad_autograd, neuron_states

__all__ = ["NACMECallback"]


def _as_indices(value: int | Sequence[int] | None, what: str) -> tuple[int, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, int) else tuple(value)
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(
                f"NACMECallback: {what} must be a non-negative int or a list of them (the position "
                f"of a validation dataloader); got {value!r}."
            )
    return items


def _batch_size(x: Any) -> int | None:
    found: list[int] = []
    apply_to_collection(x, Tensor, lambda t: found.append(t.shape[0]) if t.dim() else None)
    return found[0] if found else None


class NACMECallback(Callback):
    """Compute NAC-ME every validation run and log it for checkpoint selection.

    NAC-ME (Liu et al., ICLR 2024) scores a model from in-domain data alone: how widely its
    neurons' activation states ``sigmoid(alpha * z * dKL(u||softmax)/dz)`` cover [0, 1]. Higher
    is expected to generalize better out of domain. Log it, then select on it::

        trainer = Trainer(callbacks=[NACMECallback(ood_dataloader_idx=[1]),
                                     ModelCheckpoint(monitor="nac_me", mode="max")])
        trainer.fit(model, train_loader, [in_domain_val_loader, ood_loader])

    Args:
        alpha: state sharpness (official NAC-ME: 0.1). **Choosing alpha**: look at the logged
            ``<name>/occupied_bins`` and ``<name>/state_std``. If states occupy only 1-2 bins
            per neuron (std ~1e-3), alpha is too small for your features' scale and NAC-ME
            barely depends on the model; raise it by 10x steps until states spread over many
            bins (but not until they pile up at 0 and 1). The callback warns once when it sees this.
        bins: histogram bins ``M`` on [0, 1] (official: 50).
        r: samples a bin needs to count as covered (official: 500). **Choosing r**: it must be
            well below ``n_correct / bins`` for some bins to fill. If no bin reaches r
            (``<name>/saturated`` is 0), NAC-ME = n_correct / (r * bins), a rescaled count of
            correct samples, i.e. just accuracy; lower r (the callback warns). A few percent of
            the kept samples per bin is a reasonable start.
        layer: ``None`` (fast path): auto-detect the ``nn.Linear`` whose output is what the
            model returns as logits and use its input (penultimate features), with the gradient
            in closed form, reusing the validation loop's own forward pass. A module path naming
            that Linear (e.g. ``"classifier"``) does the same. Any other module path (e.g.
            ``"featurizer.layer4"``; conv maps and token maps are sum-pooled) or a list of paths
            uses the general path: the callback runs the forward with gradients itself and
            takes that module's output; several layers give one coverage each, averaged.
        dataloader_idx: validation dataloader(s) with in-domain data to compute NAC on.
        ood_dataloader_idx: validation dataloader(s) holding out-of-domain data. Never used for
            NAC; only their accuracy is tracked and correlated with NAC-ME.
        correct_only: keep only correctly classified samples (official). Needs labels.
        name: logged name (``ModelCheckpoint(monitor=name)``) and prefix of the diagnostics.
        val_dataloader_idx: dataloader(s) whose accuracy is the "in-domain validation
            accuracy" compared against NAC-ME; defaults to ``dataloader_idx``.
        oracle_dataloader_idx: dataloader(s) whose accuracy is the oracle selection criterion
            (DomainBed: the test domain's "out" split). Without it the oracle is the best OOD
            accuracy itself.
        batch_unpacker: ``batch -> (inputs, labels)`` for batches that are not ``(x, y, ...)``
            tuples or dicts with usual keys.
        forward_fn: ``(pl_module, inputs) -> logits`` if ``pl_module(inputs)`` does not return
            the logits (a tensor, a tuple starting with them, or a dict with ``"logits"``).
        verify_samples: samples of the first batch used to check the closed form against
            autograd on the fast path.
        save_dir: where to write ``<name>_history.json`` (after every validation) and
            ``<name>_report.json`` (end of fit). Default: the trainer's log dir.
        prog_bar: show ``name`` in the progress bar (turn off for extra callbacks of a grid).

    Logged each validation run (not during the sanity check): ``name``, and under ``name/``:
    ``occupied_bins``, ``saturated``, ``state_std``, ``n_samples``, ``nonfinite``, ``val_acc``,
    ``ood_acc`` (and ``<layer>`` per layer when several). ``history`` keeps one dict per validation and is
    saved in the callback's ``state_dict`` (a resumed run keeps it). At the end of fit,
    ``report`` holds the Spearman/Pearson/Kendall correlations of NAC-ME and validation
    accuracy with OOD accuracy and the OOD accuracy each criterion selects (plus oracle and
    last); it is logged to every logger (W&B also gets a table and a scatter plot).

    Faults: a sample with NaN/Inf logits counts as misclassified, and a sample with NaN/Inf
    logits or activation states is left out of NAC-ME; their number is logged as
    ``<name>/nonfinite`` with a warning. With no sample left (none classified correctly, all
    non-finite, or an empty in-domain loader) NAC-ME is NaN, never 0, with a warning.
    ``ModelCheckpoint(mode="max")`` never prefers a NaN to a finite score. ``EarlyStopping``
    stops at the first NaN by default; pass ``check_finite=False`` to count a NaN validation
    as no improvement instead.

    DDP: histograms, diagnostics and accuracy counts are summed across ranks before the score,
    so every rank logs the same value. ``DistributedSampler`` pads the validation set with
    repeated samples so every rank gets as many; those repeats are counted too. Use a
    validation set whose size is divisible by the world size (or
    ``use_distributed_sampler=False`` with your own sharding that gives every rank at least
    one in-domain batch) for an exact match with a single-process run.
    """

    def __init__(
        self,
        alpha: float = 0.1,
        bins: int = 50,
        r: float = 500,
        layer: str | Sequence[str] | None = None,
        dataloader_idx: int | Sequence[int] = 0,
        ood_dataloader_idx: int | Sequence[int] = (),
        correct_only: bool = True,
        name: str = "nac_me",
        val_dataloader_idx: int | Sequence[int] | None = None,
        oracle_dataloader_idx: int | Sequence[int] = (),
        batch_unpacker: BatchUnpacker | None = None,
        forward_fn: Callable[[pl.LightningModule, Any], Any] | None = None,
        verify_samples: int = 4,
        save_dir: str | None = None,
        prog_bar: bool = True,
    ) -> None:
        super().__init__()
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"NACMECallback: alpha must be a positive number; got {alpha!r}.")
        NeuronCoverage(1, bins=bins, r=r)  # validates bins and r with clear messages
        if not isinstance(name, str) or not name:
            raise ValueError(f"NACMECallback: name must be a non-empty string; got {name!r}.")
        self.alpha = float(alpha)
        self.bins = bins
        self.r = r
        self.layer = layer
        self.layers: list[str] | None = (
            None if layer is None else [layer] if isinstance(layer, str) else list(layer)
        )
        if self.layers is not None and (not self.layers or not all(self.layers)):
            raise ValueError(
                f"NACMECallback: layer must be a module path or a list; got {layer!r}."
            )
        self.dataloader_idx = _as_indices(dataloader_idx, "dataloader_idx")
        if not self.dataloader_idx:
            raise ValueError("NACMECallback: dataloader_idx must name at least one dataloader.")
        self.ood_dataloader_idx = _as_indices(ood_dataloader_idx, "ood_dataloader_idx")
        self.val_dataloader_idx = (
            self.dataloader_idx
            if val_dataloader_idx is None
            else _as_indices(val_dataloader_idx, "val_dataloader_idx")
        )
        self.oracle_dataloader_idx = _as_indices(oracle_dataloader_idx, "oracle_dataloader_idx")
        overlap = set(self.dataloader_idx) & set(self.ood_dataloader_idx)
        if overlap:
            raise ValueError(
                f"NACMECallback: dataloader(s) {sorted(overlap)} are tagged both as in-domain "
                "(dataloader_idx) and out-of-domain (ood_dataloader_idx); OOD data is never used "
                "for NAC. Tag each dataloader once."
            )
        self.correct_only = correct_only
        self.name = name
        self.unpack = batch_unpacker or default_unpack
        self.forward_fn = forward_fn
        self.verify_samples = max(1, int(verify_samples))
        self.save_dir = save_dir
        self.prog_bar = prog_bar

        self.history: list[dict[str, Any]] = []
        self.report: dict[str, Any] | None = None
        # decided on the first batch: fast path (closed form on the head's input) or not
        self.fast: bool | None = None
        self.head_name: str | None = None
        self._head: nn.Linear | None = None
        self._head_tap: Tap | None = None
        self._metrics: dict[str, NeuronCoverage] = {}
        self._acc: dict[int, list[Tensor]] = {}
        # in-domain samples [seen, excluded for non-finite logits/states] this validation run
        self._seen: Tensor | None = None
        self._nonfinite: Tensor | None = None
        self._check_pending = False  # closed form not yet checked (no finite sample so far)
        self._active = False
        self._batch_armed = False
        self._warned_degenerate = False
        self._model_id: int | None = None
        self._layer_modules: dict[str, nn.Module] = {}  # the named layers, set in setup()

    # ----------------------------------------------------------------- Lightning plumbing
    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "report": self.report}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.report = state_dict.get("report")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # resolved once per stage (fails early, with close matches), not per batch
        self._layer_modules = {p: resolve_module(pl_module, p) for p in self.layers or []}
        if self._model_id != id(pl_module):  # a new model: detect the layers again
            self._release()
            self._model_id = id(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._head_tap is not None:
            self._head_tap.armed = False

    def _release(self) -> None:
        if self._head_tap is not None:
            self._head_tap.remove()
        self._head_tap = None
        self._head = None
        self.head_name = None
        self.fast = None
        self._check_pending = False
        self._metrics = {}

    # ----------------------------------------------------------------- helpers
    @property
    def _watched(self) -> set[int]:
        return {
            *self.dataloader_idx,
            *self.val_dataloader_idx,
            *self.ood_dataloader_idx,
            *self.oracle_dataloader_idx,
        }

    def _forward(self, pl_module: pl.LightningModule, x: Any) -> Tensor:
        out = self.forward_fn(pl_module, x) if self.forward_fn else pl_module(x)
        return extract_logits(out)

    @contextmanager
    def _grad_mode(self, trainer: pl.Trainer) -> Iterator[None]:
        """Gradients inside Lightning's inference-mode evaluation loop, with the trainer's
        precision (autocast) as in its own forward passes."""
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            trainer.precision_plugin.forward_context(),
        ):
            yield

    @staticmethod
    def _fresh(x: Any) -> Any:
        """Normal (non-inference) copies of the tensors in ``x``; call under inference_mode(False)."""
        return apply_to_collection(x, Tensor, lambda t: t.clone())

    def _slice(self, x: Any, k: int) -> Any:
        return apply_to_collection(x, Tensor, lambda t: t[:k])

    def _labels(self, y: Tensor | None, logits: Tensor) -> Tensor | None:
        if y is None:
            return None
        if y.dim() == 2 and y.shape == logits.shape:  # one-hot / soft labels
            return y.argmax(dim=1)
        if y.dim() != 1 or y.shape[0] != logits.shape[0]:
            raise ValueError(
                f"NACMECallback: labels of shape {tuple(y.shape)} do not match logits of shape "
                f"{tuple(logits.shape)}; expected class indices (B,). Pass batch_unpacker=."
            )
        return y

    # ----------------------------------------------------------------- layer detection
    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, x: Any) -> None:
        """Find the logits Linear and decide fast vs general path, on a few samples."""
        linears = {n: m for n, m in pl_module.named_modules() if isinstance(m, nn.Linear)}
        k = self.verify_samples
        with self._grad_mode(trainer), recording(linears, keep_input=True) as rec:
            logits = self._forward(pl_module, self._fresh(self._slice(x, k)))
            call_order = list(rec.outputs)
            matches = find_logits_linear(rec.outputs, logits, call_order)
            named_linear = (
                self.layers is not None and len(self.layers) == 1 and self.layers[0] in linears
            )
            if self.layers is None:
                if not matches:
                    raise ValueError(
                        "NACMECallback: no nn.Linear in the model produces the logits it returns "
                        f"(Linear layers called: {call_order or 'none'}). Name the layer to read "
                        "with layer='module.path' (general path), or return the classifier's "
                        "output from forward (or pass forward_fn=)."
                    )
                self.head_name, self.fast = matches[-1], True
            elif named_linear and self.layers[0] in matches:
                self.head_name, self.fast = self.layers[0], True
            elif named_linear and call_order and self.layers[0] == call_order[-1]:
                raise ValueError(
                    f"NACMECallback: layer {self.layers[0]!r} is the model's last Linear but its "
                    "output is not the logits the model returns (something transforms them "
                    "after the head), so the closed-form gradient would be wrong. Return the "
                    "head's output from forward (or pass forward_fn=), or name another module "
                    "for the general path."
                )
            else:
                self.head_name, self.fast = (matches[-1] if matches else None), False
            if self.fast:
                self._check_pending = not self._check_closed_form(
                    rec.inputs.get(self.head_name),
                    rec.outputs[self.head_name],
                    logits,
                    linears[self.head_name],
                )
        if self.head_name is not None:
            self._head = linears[self.head_name]
            self._head_tap = Tap({self.head_name: self._head}, keep_input=True)

    def _check_closed_form(
        self, z: Tensor | None, head_out: Tensor, logits: Tensor, head: nn.Linear
    ) -> bool:
        """Compare the closed-form gradient with autograd on the samples whose values are all
        finite. False when there was none (a NaN/Inf batch): check again on a later batch."""
        if z is None or z.dim() != 2:
            shape = None if z is None else tuple(z.shape)
            raise ValueError(
                f"NACMECallback: the fast path needs (batch, features) inputs to the head "
                f"{self.head_name!r}; got {shape}. Name the layer whose output you want "
                "(general path), e.g. layer='featurizer'."
            )
        if not z.requires_grad:
            return True  # frozen features: the head's output is the logits, checked by equality
        g_auto = kl_uniform_grad_autograd(logits, z).float()
        g_closed = kl_uniform_grad(head_out, head.weight).float()
        finite = (
            torch.isfinite(g_auto).all(1)
            & torch.isfinite(g_closed).all(1)
            & torch.isfinite(logits).all(1)
        )
        if not bool(finite.any()):
            return False
        g_auto, g_closed = g_auto[finite], g_closed[finite]
        tol = 1e-2 if logits.dtype in (torch.float16, torch.bfloat16) else 1e-4
        if not torch.allclose(g_closed, g_auto, rtol=tol, atol=tol * g_auto.abs().max().item()):
            raise RuntimeError(
                f"NACMECallback: the closed-form gradient on {self.head_name!r} disagrees with "
                "autograd (max abs diff "
                f"{(g_closed - g_auto).abs().max().item():.3g}): the hooked layer's output is not "
                "the model's logits. Name the layer explicitly (general path)."
            )
        return True

    def _check_closed_form_on(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, x: Any
    ) -> None:
        """The deferred check, on a whole batch (only until one finite sample was seen)."""
        head = {self.head_name: self._head}
        with self._grad_mode(trainer), recording(head, keep_input=True) as rec:
            logits = self._forward(pl_module, self._fresh(x))
            self._check_pending = not self._check_closed_form(
                rec.inputs.get(self.head_name), rec.outputs[self.head_name], logits, self._head
            )

    # ----------------------------------------------------------------- per-run state
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = not trainer.sanity_checking
        if not self._active:
            return
        n_loaders = len(trainer.num_val_batches)
        bad = sorted(i for i in self._watched if i >= n_loaders)
        if bad:
            raise ValueError(
                f"NACMECallback: dataloader index {bad} out of range: the trainer has {n_loaders} "
                f"validation dataloader(s) (indices 0..{n_loaders - 1}). Check dataloader_idx="
                f"{list(self.dataloader_idx)}, ood_dataloader_idx={list(self.ood_dataloader_idx)}."
            )
        for metric in self._metrics.values():
            metric.reset()
        device = pl_module.device
        self._acc = {
            i: [torch.zeros((), dtype=torch.long, device=device) for _ in range(2)]
            for i in self._watched
        }
        self._seen = torch.zeros((), dtype=torch.long, device=device)
        self._nonfinite = torch.zeros((), dtype=torch.long, device=device)

    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch_armed = self._active and dataloader_idx in self._watched
        if self._batch_armed and self.fast is None:
            # detect the head before the validation step runs, so its forward is captured
            x, y = self.unpack(batch)
            self._check_labels(y, dataloader_idx)
            self._prepare(trainer, pl_module, x)
        if self._head_tap is not None:
            self._head_tap.clear()
            self._head_tap.armed = self._batch_armed

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._batch_armed:
            return
        if self._head_tap is not None:
            self._head_tap.armed = False
        x, y = self.unpack(batch)
        self._check_labels(y, dataloader_idx)
        if self._check_pending and dataloader_idx in self.dataloader_idx:
            self._check_closed_form_on(trainer, pl_module, x)
        if dataloader_idx in self.dataloader_idx and not self.fast:
            logits, states = self._general_states(trainer, pl_module, x)
        else:
            z, logits = self._captured_or_forward(pl_module, x)
            states = None
            if dataloader_idx in self.dataloader_idx:
                g = kl_uniform_grad(logits, self._head.weight)
                states = {self.head_name: neuron_states(z, g, self.alpha)}
        labels = self._labels(y, logits)
        # NaN/Inf logits count as misclassified (argmax would pick a NaN) and, like non-finite
        # states, exclude the sample from NAC; they are counted and reported at epoch end.
        finite = torch.isfinite(logits).all(dim=1)
        correct = None if labels is None else (logits.argmax(dim=1) == labels) & finite
        if dataloader_idx in self._acc and correct is not None:
            counts = self._acc[dataloader_idx]
            counts[0] += correct.sum()
            counts[1] += correct.numel()
        if states is not None:
            for s in states.values():
                finite = finite & torch.isfinite(s).all(dim=1)
            self._seen += finite.numel()
            self._nonfinite += finite.numel() - finite.sum()
            mask = correct & finite if self.correct_only else finite
            for layer, s in states.items():
                self._metric(layer, s).update(s, mask=mask)
        if self._head_tap is not None:
            self._head_tap.clear()

    def _check_labels(self, y: Tensor | None, dataloader_idx: int) -> None:
        if self.correct_only and y is None and dataloader_idx in self.dataloader_idx:
            raise ValueError(
                "NACMECallback: correct_only=True needs labels, but the validation batch has "
                "none. Return (x, y) batches, pass batch_unpacker=, or set correct_only=False."
            )

    def _metric(self, layer: str, states: Tensor) -> NeuronCoverage:
        metric = self._metrics.get(layer)
        if metric is None or metric.num_neurons != states.shape[1]:
            metric = NeuronCoverage(states.shape[1], bins=self.bins, r=self.r).to(states.device)
            self._metrics[layer] = metric
        return metric

    def _captured_or_forward(self, pl_module: pl.LightningModule, x: Any) -> tuple[Tensor, Tensor]:
        """Head input and logits: from the validation step's own forward when it ran the
        model on this batch, else from a forward pass of our own (no gradients needed)."""
        tap = self._head_tap
        if tap is None:  # general path without a logits Linear: plain forward for accuracy
            return None, self._forward(pl_module, x).detach()
        captured = tap.outputs.get(self.head_name)
        n = _batch_size(x)
        if captured is None or (n is not None and captured.shape[0] != n):
            tap.clear()  # the step did not run the model on this batch: run it ourselves
            with torch.no_grad(), tap.exclusive():
                self._forward(pl_module, x)
        return tap.inputs.get(self.head_name), tap.outputs[self.head_name].detach()

    def _general_states(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, x: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Own forward with gradients; states of each named layer's output."""
        with self._grad_mode(trainer), recording(self._layer_modules, differentiable=True) as rec:
            logits = self._forward(pl_module, self._fresh(x))
            missing = [p for p in self.layers if p not in rec.outputs]
            if missing:
                raise ValueError(
                    f"NACMECallback: layer(s) {missing} produced no tensor output in the forward "
                    "pass; name modules that run on every forward and return a tensor."
                )
            acts = [rec.outputs[p] for p in self.layers]
            grads = kl_uniform_grad_autograd(logits, acts)
        states = {p: neuron_states(a, g, self.alpha) for p, a, g in zip(self.layers, acts, grads)}
        return logits.detach(), states

    # ----------------------------------------------------------------- epoch end
    def _loader_accuracies(self, trainer: pl.Trainer) -> dict[int, float | None]:
        """Accuracy of every watched dataloader (counts summed over ranks, one reduction per
        loader, in the same order on every rank); ``None`` for a loader without labeled data."""
        accs: dict[int, float | None] = {}
        for i in sorted(self._acc):
            correct, total = (trainer.strategy.reduce(t, reduce_op="sum") for t in self._acc[i])
            accs[i] = correct.item() / total.item() if total.item() else None
        return accs

    @staticmethod
    def _mean_accuracy(accs: dict[int, float | None], indices: Sequence[int]) -> float | None:
        """Mean accuracy of the dataloaders ``indices`` that saw labeled data, else ``None``."""
        values = [accs[i] for i in indices if accs[i] is not None]
        return sum(values) / len(values) if values else None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        values: dict[str, float] = {}
        diags = []
        for layer in self.layers or [self.head_name]:
            metric = self._metrics.get(layer)
            if metric is None:
                values[layer] = math.nan
                continue
            with warnings.catch_warnings():  # the callback reports these with more context
                warnings.filterwarnings("ignore", "NeuronCoverage", RuntimeWarning)
                values[layer] = float(metric.compute())  # sums the histograms across ranks
            d = metric.diagnostics()
            diags.append(d)
            if not self._warned_degenerate:
                reasons = metric.degeneracy_warnings(d)
                if reasons:
                    self._warned_degenerate = True
                    rank_zero_warn(f"NACMECallback({self.name!r}): " + " ".join(reasons))
        nac = sum(values.values()) / len(values) if values else math.nan
        seen, nonfinite = (
            int(trainer.strategy.reduce(t, reduce_op="sum").item())
            for t in (self._seen, self._nonfinite)
        )
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        if nonfinite:
            rank_zero_warn(
                f"NACMECallback({self.name!r}): {nonfinite} of {seen} in-domain validation "
                f"samples had NaN/Inf logits or activation states ({where}); they are excluded "
                f"from {self.name} and count as misclassified (logged as {self.name}/nonfinite)."
            )
        if not diags:
            rank_zero_warn(
                f"NACMECallback({self.name!r}): no in-domain validation data reached the callback "
                f"(dataloaders {list(self.dataloader_idx)} empty?); {self.name} is NaN."
            )
        elif math.isnan(nac):
            if nonfinite >= seen:
                why = f"all {seen} in-domain validation samples had NaN/Inf values"
            else:
                why = (
                    f"none of the {seen} in-domain validation samples was classified correctly "
                    f"(correct_only=True; {nonfinite} had NaN/Inf values)"
                )
            rank_zero_warn(
                f"NACMECallback({self.name!r}): {why} ({where}), so {self.name} is NaN for this "
                "validation, not 0. ModelCheckpoint(mode='max') ranks NaN below every finite "
                "score; EarlyStopping stops on NaN unless check_finite=False."
            )
        accs = self._loader_accuracies(trainer)
        entry: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "nac_me": nac,
            "val_acc": self._mean_accuracy(accs, self.val_dataloader_idx),
            "ood_acc": self._mean_accuracy(accs, self.ood_dataloader_idx),
        }
        for i in self.ood_dataloader_idx:
            entry[f"ood_acc/{i}"] = accs[i]
        if self.oracle_dataloader_idx:
            entry["oracle_acc"] = self._mean_accuracy(accs, self.oracle_dataloader_idx)
        if len(values) > 1:
            entry.update({f"nac_me/{k}": v for k, v in values.items()})
        for key in ("occupied_bins", "saturated", "state_std", "n_samples"):
            entry[key] = sum(d[key] for d in diags) / len(diags) if diags else math.nan
        entry["nonfinite"] = nonfinite

        logged = {self.name: nac}
        for key, value in entry.items():
            if key in ("epoch", "global_step", "nac_me") or value is None:
                continue
            logged[f"{self.name}/{key.replace('nac_me/', '')}"] = value
        for key, value in logged.items():
            pl_module.log(
                key,
                torch.tensor(value, dtype=torch.float32, device=pl_module.device),
                prog_bar=self.prog_bar and key == self.name,
                on_step=False,
                on_epoch=True,
                batch_size=1,
                sync_dist=True,  # identical on every rank already; avoids Lightning's warning
            )
        self.history = [h for h in self.history if h["global_step"] != entry["global_step"]]
        self.history.append(entry)
        self._write(trainer, f"{self.name}_history.json", self.history)

    # ----------------------------------------------------------------- end of fit
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # resumed from a checkpoint: entries after it belong to a run that is being redone
        self.history = [h for h in self.history if h["global_step"] <= trainer.global_step]
        batches = list(trainer.num_val_batches)  # [] when validation is off
        if batches and all(i < len(batches) and batches[i] == 0 for i in self.dataloader_idx):
            consequence = (
                f"Lightning skips validation altogether, so {self.name} is never logged and "
                f"ModelCheckpoint/EarlyStopping(monitor={self.name!r}) cannot select on it"
                if sum(batches) == 0
                else f"{self.name} will be NaN at every validation"
            )
            rank_zero_warn(
                f"NACMECallback({self.name!r}): the in-domain validation dataloader(s) "
                f"{list(self.dataloader_idx)} are empty: {consequence}. Check the validation "
                "split."
            )

    def compute_report(self) -> dict[str, Any]:
        """Correlations with OOD accuracy and the OOD accuracy each criterion selects."""
        oracle = "oracle_acc" if self.oracle_dataloader_idx else "ood_acc"
        report = compare_selections(
            self.history, criteria=("nac_me", "val_acc"), target="ood_acc", oracle=oracle
        )
        report["target"] = "ood_acc"
        report["n_validations"] = len(self.history)
        report["config"] = {
            "alpha": self.alpha,
            "bins": self.bins,
            "r": self.r,
            "layer": self.layers,
            "head": self.head_name,
            "fast_path": self.fast,
            "correct_only": self.correct_only,
        }
        return report

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:
            return
        self.report = self.compute_report()
        self._write(trainer, f"{self.name}_report.json", self.report)
        if trainer.is_global_zero and trainer.loggers:
            log_report(trainer.loggers, self.name, self.report, self.history, trainer.global_step)

    def _write(self, trainer: pl.Trainer, filename: str, obj: Any) -> None:
        directory = self.save_dir or trainer.log_dir or trainer.default_root_dir  # all ranks
        if trainer.is_global_zero:
            write_json_atomic(os.path.join(directory, filename), obj)
