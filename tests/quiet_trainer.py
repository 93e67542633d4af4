"""A quiet CPU Trainer for tests (shared by the callback and reliability tests)."""

import lightning.pytorch as pl


def quiet_trainer(root, callbacks, max_epochs: int = 3, **kw) -> pl.Trainer:
    """No logger, bar or summary; checkpointing only if a ModelCheckpoint is given; files under
    ``root``."""
    kw.setdefault("logger", False)
    kw.setdefault(
        "enable_checkpointing",
        any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
    )
    kw.setdefault("accelerator", "cpu")
    kw.setdefault("devices", 1)
    kw.setdefault("num_sanity_val_steps", 0)
    return pl.Trainer(
        default_root_dir=root,
        max_epochs=max_epochs,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )
