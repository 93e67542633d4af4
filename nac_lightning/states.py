"""Neuron activation states: the KL-to-uniform gradient and ``sigmoid(alpha * z * g)``.

NAC (Liu et al., ICLR 2024) describes each neuron by a state in [0, 1] that combines its
activation ``z`` with the gradient ``g`` of ``KL(u || softmax(logits))`` with respect to ``z``
(``u`` uniform over the classes)::

    s = sigmoid(alpha * z * g)

Two ways to get ``g``:

* :func:`kl_uniform_grad`: closed form when ``z`` is the input of the final linear layer
  ``logits = z @ W.T + b``: ``g = (softmax(logits) - 1/C) @ W``. No backward pass.
* :func:`kl_uniform_grad_autograd`: any activation the logits were computed from, by
  ``torch.autograd.grad`` (parameters' ``.grad`` stay untouched).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["kl_uniform_grad", "kl_uniform_grad_autograd", "neuron_states", "pool_neurons"]


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(
            f"logits must have shape (batch, classes); got {tuple(logits.shape)}. "
            "Pass the classifier's output before softmax."
        )
    if logits.shape[1] < 2:
        raise ValueError(f"logits need at least 2 classes; got {logits.shape[1]}.")


def kl_uniform_grad(logits: Tensor, weight: Tensor) -> Tensor:
    """Per-sample gradient of ``KL(u || softmax(logits))`` w.r.t. the input of a linear head.

    Args:
        logits: ``(B, C)`` output of ``torch.nn.Linear`` (``logits = z @ weight.T + bias``).
        weight: ``(C, N)`` weight of that linear layer.

    Returns:
        ``(B, N)`` tensor ``(softmax(logits) - 1/C) @ weight``, computed in at least float32
        (low-precision logits, e.g. under bf16 autocast, are upcast first).
    """
    _check_logits(logits)
    if weight.dim() != 2 or weight.shape[0] != logits.shape[1]:
        raise ValueError(
            f"weight must have shape (classes={logits.shape[1]}, features); got "
            f"{tuple(weight.shape)}. Pass the final nn.Linear's .weight."
        )
    dtype = torch.promote_types(logits.dtype, torch.float32)
    probs = torch.softmax(logits.detach().to(dtype), dim=1)
    return (probs - 1.0 / logits.shape[1]) @ weight.detach().to(dtype)


def kl_uniform_grad_autograd(
    logits: Tensor,
    activation: Tensor | Sequence[Tensor],
    retain_graph: bool = False,
) -> Tensor | tuple[Tensor, ...]:
    """Per-sample gradient of ``KL(u || softmax(logits))`` w.r.t. any activation, by autograd.

    The loss is summed over the batch, as in the official code; with the model in eval mode
    samples are independent, so each sample's slice is its own gradient. Only the activations
    are differentiated (``torch.autograd.grad``), so parameters' ``.grad`` are left untouched.

    Args:
        logits: ``(B, C)`` logits computed from ``activation`` with autograd enabled.
        activation: a tensor (or several) in the graph of ``logits``.
        retain_graph: keep the graph for a later backward through the same forward.

    Returns:
        The gradient, shaped like ``activation`` (a tuple when several were given).
    """
    _check_logits(logits)
    many = isinstance(activation, (list, tuple))
    acts = tuple(activation) if many else (activation,)
    for a in acts:
        if not a.requires_grad:
            raise ValueError(
                "activation does not require grad: run the forward pass with gradients enabled "
                "(torch.enable_grad(), outside torch.inference_mode()) so the logits depend on it."
            )
    if not logits.requires_grad:
        raise ValueError("logits do not require grad: they were not computed from the activation.")
    num_classes = logits.shape[1]
    # KL(u || p) = const - (1/C) * sum_c log p_c; summed over the batch.
    loss = -torch.log_softmax(logits.float(), dim=1).sum() / num_classes
    grads = torch.autograd.grad(loss, acts, retain_graph=retain_graph, allow_unused=False)
    return grads if many else grads[0]


def pool_neurons(t: Tensor) -> Tensor:
    """Reduce an activation (or its gradient) to one value per neuron: ``(B, N)``.

    ``(B, N)`` is returned as is; conv maps ``(B, C, H, W)`` are summed over ``H, W`` and token
    maps ``(B, T, C)`` over ``T`` (as the official code does; a 1x1 map is a no-op).
    """
    if t.dim() == 2:
        return t
    if t.dim() == 4:
        return t.sum(dim=(2, 3))
    if t.dim() == 3:
        return t.sum(dim=1)
    raise ValueError(
        f"cannot pool an activation of shape {tuple(t.shape)}: expected (B, N), conv maps "
        "(B, C, H, W) or token maps (B, T, C)."
    )


def neuron_states(activations: Tensor, grads: Tensor, alpha: float) -> Tensor:
    """Neuron activation states ``sigmoid(alpha * z * g)``, one per sample and neuron.

    Args:
        activations: ``z``: ``(B, N)``, conv maps ``(B, C, H, W)`` or token maps ``(B, T, C)``.
        grads: ``g``, the same shape as ``activations``
            (:func:`kl_uniform_grad` or :func:`kl_uniform_grad_autograd`).
        alpha: sharpness. Too small and every state sits near 0.5 (see the README's "choosing
            alpha and r").

    Returns:
        ``(B, N)`` float32 (or float64) states in [0, 1]. ``z`` and ``g`` are sum-pooled
        separately before the product, as in the official code. Where the pooled ``z`` or
        ``g`` is NaN or infinite the state is NaN (``sigmoid`` would turn an infinite product
        into a plausible 0 or 1), so :class:`~nac_lightning.NeuronCoverage` counts and skips it.
    """
    if activations.shape != grads.shape:
        raise ValueError(
            f"activations {tuple(activations.shape)} and grads {tuple(grads.shape)} differ in "
            "shape; the gradient must be taken with respect to the same tensor."
        )
    dtype = torch.promote_types(activations.dtype, torch.float32)
    z = pool_neurons(activations.detach().to(dtype))
    g = pool_neurons(grads.detach().to(dtype))
    states = torch.sigmoid(alpha * z * g)
    return states.masked_fill(~(torch.isfinite(z) & torch.isfinite(g)), float("nan"))
