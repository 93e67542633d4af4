"""ResultsWriter: results.jsonl lines per validation, JSON-safe, flushed, resume without duplicates."""

import json
import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from nac_lightning.results import ResultsWriter, hparams_id, json_safe, read_results


class TinyModel(pl.LightningModule):
    """A linear classifier on flattened digits that also logs a NaN and a +inf metric."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(64, 10)

    def forward(self, x):
        return self.classifier(x.flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        acc = (self(x).argmax(1) == y).float().mean()
        self.log("val_acc", acc)
        self.log("weird/nan", float("nan"))
        self.log("weird/inf", float("inf"))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class LineCounter(pl.Callback):
    """Counts the lines already on disk when each validation ends (after the writer)."""

    def __init__(self, path):
        self.path = path
        self.seen = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.seen.append(len(read_results(self.path)))


def _fit(tmp_path, digits, make_loader, callbacks, max_steps, ckpt_path=None, **kw):
    x, y = digits
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
        num_sanity_val_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kw,
    )
    model = TinyModel()
    trainer.fit(
        model,
        make_loader(x[:640], y[:640], batch_size=32),
        make_loader(x[640:], y[640:]),
        ckpt_path=ckpt_path,
    )
    return trainer, model


def _writer(path):
    return ResultsWriter(
        path,
        dataset="rotated_digits",
        test_envs=(2,),
        trial_seed=1,
        hparams={"lr": 0.1, "batch_size": 32},
        args={"trainer": {"max_steps": 6}, "tags": ("a", "b")},
    )


def test_json_safe_and_hparams_id():
    data = {"a": float("nan"), "b": torch.tensor(0.5), "c": (1, float("-inf")), 3: {"d": True}}
    assert json_safe(data) == {"a": None, "b": 0.5, "c": [1, None], "3": {"d": True}}
    json.dumps(json_safe(data), allow_nan=False)
    assert hparams_id({"lr": 1e-3, "wd": 0}) == hparams_id({"wd": 0, "lr": 1e-3})
    assert hparams_id({"lr": 1e-3, "wd": 0}) != hparams_id({"lr": 1e-4, "wd": 0})
    assert len(hparams_id({})) == 32


def test_one_line_per_validation_flushed_as_produced(tmp_path, digits, make_loader):
    path = tmp_path / "results.jsonl"
    counter = LineCounter(path)
    trainer, _ = _fit(tmp_path, digits, make_loader, [_writer(path), counter], max_steps=6)
    records = read_results(path)
    # sanity check skipped; validation after steps 2, 4, 6
    assert [r["step"] for r in records] == [2, 4, 6]
    assert counter.seen == [1, 2, 3]  # each line on disk before the next validation
    last = records[-1]
    assert last["val_acc"] == pytest.approx(trainer.callback_metrics["val_acc"].item())
    assert 0.0 <= last["val_acc"] <= 1.0
    assert last["nac_me"] is None  # no NAC-ME callback in this trainer
    assert last["weird/nan"] is None and last["weird/inf"] is None
    assert last["epoch"] == 0 and isinstance(last["train_loss"], float)
    assert last["dataset"] == "rotated_digits" and last["test_envs"] == [2]
    assert last["trial_seed"] == 1
    assert last["hparams"] == {"lr": 0.1, "batch_size": 32}
    assert last["hparams_id"] == hparams_id({"batch_size": 32, "lr": 0.1})
    assert last["args"] == {"trainer": {"max_steps": 6}, "tags": ["a", "b"]}
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    # validate() and test() outside fit write nothing
    trainer.validate(trainer.lightning_module, make_loader(*digits), verbose=False)
    assert len(read_results(path)) == 3


def test_resume_drops_lines_past_the_checkpoint(tmp_path, digits, make_loader):
    path = tmp_path / "results.jsonl"
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=None)
    _fit(tmp_path, digits, make_loader, [_writer(path), ckpt], max_steps=4)
    assert [r["step"] for r in read_results(path)] == [2, 4]
    # a crash after writing the step-6 line but before checkpointing it, plus a torn line
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": 6, "epoch": 0, "val_acc": 0.0, "stale": True}) + "\n")
        fh.write('{"step": 8, "ep')
    ckpt2 = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit(
        tmp_path,
        digits,
        make_loader,
        [_writer(path), ckpt2],
        max_steps=8,
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    records = read_results(path)
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert not any(r.get("stale") for r in records)
    (backup,) = tmp_path.glob("results.jsonl.*.bak")  # the dropped lines are kept there
    assert '"stale": true' in backup.read_text()


def test_fresh_run_starts_a_new_file(tmp_path, digits, make_loader):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"step": 2, "old": True}) + "\n")
    _fit(tmp_path, digits, make_loader, [_writer(path)], max_steps=2)
    records = read_results(path)
    assert [r["step"] for r in records] == [2] and "old" not in records[0]
    assert math.isfinite(records[0]["val_acc"])
    # the previous file is kept, not lost
    (backup,) = tmp_path.glob("results.jsonl.*.bak")
    assert json.loads(backup.read_text()) == {"step": 2, "old": True}
