"""NACMECallback: every user error has a clear message; W&B offline run holds the report."""

import glob
import json
import os

import pytest
import torch
from callback_helpers import MLP, loader, trainer
from torch.utils.data import TensorDataset
from wandb_run_reader import read_run

from nac_lightning import NACMECallback


class NoStep(MLP):
    """A module whose validation_step does not touch the batch (the callback unpacks it)."""

    def validation_step(self, batch, batch_idx):
        pass


def validate(tmp_path, cb, model, loaders):
    return trainer(tmp_path, [cb]).validate(model, loaders, verbose=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"alpha": 0}, "alpha must be a positive number"),
        ({"bins": 0}, "bins must be a positive int"),
        ({"r": -1}, "r must be a positive number"),
        ({"dataloader_idx": -1}, "dataloader_idx must be a non-negative int"),
        ({"ood_dataloader_idx": ["a"]}, "ood_dataloader_idx must be a non-negative int"),
        (
            {"dataloader_idx": [0, 1], "ood_dataloader_idx": 1},
            r"dataloader\(s\) \[1\] are tagged both",
        ),
        ({"dataloader_idx": []}, "must name at least one dataloader"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NACMECallback(**kwargs)


def test_unknown_layer_lists_close_matches(tmp_path, data):
    with pytest.raises(ValueError, match=r"no layer 'bdy\.2'.*Close matches: body\.2"):
        validate(tmp_path, NACMECallback(layer="bdy.2"), MLP(), loader(data[1]))


def test_dataloader_index_out_of_range(tmp_path, data):
    cb = NACMECallback(ood_dataloader_idx=[1, 4])
    with pytest.raises(ValueError, match=r"index \[4\] out of range: the trainer has 2 validation"):
        validate(tmp_path, cb, MLP(), [loader(data[1]), loader(data[2])])


def test_correct_only_without_labels(tmp_path, data):
    unlabeled = TensorDataset(data[1].tensors[0])
    with pytest.raises(ValueError, match="correct_only=True needs labels"):
        validate(tmp_path, NACMECallback(), NoStep(), loader(unlabeled))
    cb = NACMECallback(correct_only=False, alpha=50, bins=20, r=5)  # works without labels
    validate(tmp_path, cb, NoStep(), loader(unlabeled))
    assert cb.history[0]["n_samples"] == 300 and cb.history[0]["val_acc"] is None


class Scaled(MLP):
    """Transforms the head's output: the head is not what the model returns as logits."""

    def forward(self, x):
        return super().forward(x) * 2.0


def test_head_output_not_the_logits(tmp_path, data):
    with pytest.raises(ValueError, match="no nn.Linear in the model produces the logits"):
        validate(tmp_path, NACMECallback(), Scaled(), loader(data[1]))
    with pytest.raises(ValueError, match="'head' is the model's last Linear but its output is not"):
        validate(tmp_path, NACMECallback(layer="head"), Scaled(), loader(data[1]))
    # the general path on a named layer is still exact for such a model
    cb = NACMECallback(layer="body", alpha=50, bins=20, r=5)
    validate(tmp_path, cb, Scaled(), loader(data[1]))
    assert cb.fast is False and cb.history[0]["nac_me"] > 0


def test_unpackable_batch(tmp_path, data):
    from torch.utils.data import DataLoader

    dl = DataLoader([{"foo": torch.zeros(64)}] * 4, batch_size=2)
    with pytest.raises(
        ValueError, match=r"cannot find the inputs in a dict batch with keys \['foo'\]"
    ):
        validate(tmp_path, NACMECallback(), NoStep(), dl)


def test_wandb_offline_run_holds_table_scatter_and_summary(tmp_path, data, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.chdir(tmp_path)
    logger = WandbLogger(project="nac-test", save_dir=str(tmp_path), offline=True)
    cb = NACMECallback(alpha=50, bins=20, r=5, ood_dataloader_idx=[1])
    train, val, ood = data
    t = trainer(tmp_path, [cb], max_epochs=3, logger=logger)
    t.fit(MLP(), loader(train, shuffle=True), [loader(val), loader(ood)])
    run_dir = os.path.dirname(logger.experiment.dir)
    wandb.finish()
    run = read_run(run_dir)
    summary = run["summary"]
    assert summary["nac_me/spearman/nac_me"] == pytest.approx(
        cb.report["correlation"]["nac_me"]["spearman"]
    )
    assert summary["nac_me/selected_ood_acc/val_acc"] == pytest.approx(
        cb.report["selection"]["val_acc"]["ood_acc"]
    )
    assert summary["nac_me/history/_type"] == "table-file"
    assert summary["nac_me/scatter_table/_type"] == "table-file"  # the scatter plot's data
    tables = glob.glob(
        os.path.join(run_dir, "files", "media", "table", "nac_me", "history_*.table.json")
    )
    assert len(tables) == 1
    with open(tables[0]) as f:
        table = json.load(f)
    assert table["columns"][:5] == ["epoch", "global_step", "nac_me", "val_acc", "ood_acc"]
    assert [row[2] for row in table["data"]] == pytest.approx([h["nac_me"] for h in cb.history])
    # each validation's value is in the run history, at its global step
    logged = [h["nac_me"] for h in run["history"] if "nac_me" in h]
    assert logged == pytest.approx([h["nac_me"] for h in cb.history])
