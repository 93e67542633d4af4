"""A callback that crashes training at a given step (simulates a killed job in resume tests)."""

from lightning.pytorch.callbacks import Callback


class CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
