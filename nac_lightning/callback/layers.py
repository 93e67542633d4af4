"""Finding the layers NAC reads from, and capturing their activations with forward hooks."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["resolve_module", "extract_logits", "find_logits_linear", "Tap", "recording"]


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``; a clear error listing close matches if there is none."""
    modules = dict(model.named_modules())
    if path in modules and path != "":
        return modules[path]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    close += [n for n in names if path and (n.endswith("." + path) or path in n) and n not in close]
    hint = f" Close matches: {', '.join(close[:8])}." if close else ""
    raise ValueError(
        f"NACMECallback: the model has no layer {path!r}.{hint} Layer names are module paths "
        "as listed by model.named_modules() (e.g. 'classifier' or 'featurizer.layer4')."
    )


def extract_logits(output: Any) -> Tensor:
    """The logits in a model's output: a tensor, the first tensor of a tuple/list, or the
    ``"logits"`` entry of a dict."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise ValueError(
        f"NACMECallback: cannot find logits in the model's output of type {type(output).__name__};"
        " return a tensor, a tuple whose first item is the logits, or a dict with 'logits', or"
        " pass forward_fn=lambda module, x: logits."
    )


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, Tensor)), None)
    return None


class Tap:
    """Forward hooks that keep the first input and output of some modules while armed.

    ``armed`` is switched on for the batches the callback wants; each armed batch keeps the
    first call of each module (a validation_step that calls the model twice does not mix
    batches). Hooks stay registered for the callback's lifetime and do nothing when disarmed.
    """

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        keep_input: bool = False,
        differentiable: bool = False,
    ) -> None:
        self.armed = False
        self.keep_input = keep_input
        # With gradients on, a tensor output that does not require grad (frozen layers before
        # it) is replaced by a leaf that does, so the logits can be differentiated w.r.t. it.
        self.differentiable = differentiable
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    #: while set, only this tap records: a callback's own forward pass is not mistaken by the
    #: other callbacks' taps for the validation step's forward.
    _exclusive: Tap | None = None

    @contextmanager
    def exclusive(self) -> Iterator[Tap]:
        """Record with this tap alone (and armed) inside the block."""
        previous, Tap._exclusive = Tap._exclusive, self
        armed, self.armed = self.armed, True
        try:
            yield self
        finally:
            Tap._exclusive, self.armed = previous, armed

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if not self.armed or name in self.outputs:
                return
            if Tap._exclusive is not None and Tap._exclusive is not self:
                return
            out = _first_tensor(output)
            if out is None:
                return
            replace = (
                self.differentiable
                and isinstance(output, Tensor)
                and torch.is_grad_enabled()
                and not out.requires_grad
                and out.is_floating_point()
            )
            if replace:
                out = out.detach().requires_grad_(True)
            self.outputs[name] = out
            if self.keep_input and args:
                inp = _first_tensor(args[0])
                if inp is not None:
                    self.inputs[name] = inp
            return out if replace else None

        return hook

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()


@contextmanager
def recording(
    modules: Mapping[str, nn.Module], keep_input: bool = False, differentiable: bool = False
) -> Iterator[Tap]:
    """A temporary :class:`Tap`, recording exclusively."""
    tap = Tap(modules, keep_input=keep_input, differentiable=differentiable)
    try:
        with tap.exclusive():
            yield tap
    finally:
        tap.remove()


def find_logits_linear(
    recorded: Mapping[str, Tensor], logits: Tensor, order: Sequence[str]
) -> list[str]:
    """Names of the ``nn.Linear`` layers whose recorded output is the model's logits.

    ``recorded`` maps Linear names to their outputs in one forward pass; ``order`` lists the
    names in call order. A layer matches if its output is the logits tensor itself or equal to
    it (NaNs in the same places count as equal). The last-called match comes last.
    """
    out = []
    for name in order:
        o = recorded.get(name)
        if o is None:
            continue
        same = o is logits or (
            o.shape == logits.shape
            and o.dtype == logits.dtype
            # NaN-aware equality: a first batch with NaN logits must still find the head
            and torch.allclose(o.detach(), logits.detach(), rtol=0.0, atol=0.0, equal_nan=True)
        )
        if same:
            out.append(name)
    return out
