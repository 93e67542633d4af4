"""Getting inputs and labels out of a validation batch."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["BatchUnpacker", "default_unpack", "INPUT_KEYS", "LABEL_KEYS"]

#: ``(batch) -> (inputs, labels or None)``
BatchUnpacker = Callable[[Any], "tuple[Any, Tensor | None]"]

INPUT_KEYS = ("x", "input", "inputs", "image", "images", "img", "pixel_values", "data")
LABEL_KEYS = ("y", "label", "labels", "target", "targets")


def default_unpack(batch: Any) -> tuple[Any, Tensor | None]:
    """Split a batch into ``(inputs, labels)``; labels are ``None`` when the batch has none.

    Understands ``(x, y, *rest)`` tuples and lists, a bare tensor ``x``, and dicts with one
    of the keys in :data:`INPUT_KEYS` and optionally one of :data:`LABEL_KEYS`. Anything else:
    pass ``batch_unpacker=`` to :class:`~nac_lightning.NACMECallback`.
    """
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    if isinstance(batch, Mapping):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        if x is not None:
            return x, next((batch[k] for k in LABEL_KEYS if k in batch), None)
        raise ValueError(
            f"NACMECallback cannot find the inputs in a dict batch with keys {sorted(batch)}; "
            f"expected one of {INPUT_KEYS}. Pass batch_unpacker=lambda b: (inputs, labels)."
        )
    raise ValueError(
        f"NACMECallback cannot unpack a batch of type {type(batch).__name__}; expected (x, y) "
        "tuples, a tensor or a dict. Pass batch_unpacker=lambda b: (inputs, labels)."
    )
