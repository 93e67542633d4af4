"""NACMECallback under faults: NaN/Inf values, NaN epochs and checkpoint/early-stopping
selection, empty loaders, no correctly classified sample, validation sets that change size.

NaN handling, as these tests pin it down:

* A validation sample whose logits contain NaN/Inf counts as misclassified (``argmax`` of a
  NaN row would be class 0) and is excluded from NAC-ME, as is a sample with any non-finite
  activation state. They are counted (history/logged ``<name>/nonfinite``) and warned about.
* When no sample is kept (all non-finite, or none classified correctly with
  ``correct_only=True``) NAC-ME is NaN, never 0, with a warning saying why.
* ``ModelCheckpoint(monitor="nac_me", mode="max")`` ranks a NaN below every finite score,
  so it never selects a NaN epoch while some epoch is finite. If *every* validation is NaN it
  keeps the first one with ``best_model_score == -inf``.
* ``EarlyStopping(monitor="nac_me")`` with its default ``check_finite=True`` stops training at
  the first NaN validation. Recommended: ``check_finite=False``, so a NaN validation counts as
  "no improvement" and the run stops only after ``patience`` of them.
"""

import math

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from reliability_helpers import ALPHA, BINS, MLP, Faulty, R, loader, make_trainer, reference, split
from torch.utils.data import TensorDataset

from nac_lightning import NACMECallback, NeuronCoverage, neuron_states

N_VAL, BATCH, ROWS = 300, 64, 4


@pytest.fixture(scope="module")
def data():
    return split(1000, N_VAL)


def poisoned_rows(n=N_VAL, batch=BATCH, rows=ROWS):
    """Indices of the samples Faulty poisons: the first `rows` of every batch."""
    return torch.cat([torch.arange(s, min(s + rows, n)) for s in range(0, n, batch)])


@pytest.mark.parametrize(
    "where,value,layer",
    [
        ("features", math.nan, None),
        ("features", math.inf, None),
        ("logits", math.inf, None),
        ("logits", -math.inf, None),
        ("logits", math.nan, None),
        ("features", math.nan, "body"),  # general path (autograd on a named layer)
    ],
)
def test_nonfinite_samples_are_counted_excluded_and_warned(tmp_path, data, where, value, layer):
    _, val = data
    x, y = val.tensors
    torch.manual_seed(0)
    model = Faulty(where=where, value=value, rows=ROWS)
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, layer=layer)
    t = make_trainer(tmp_path, [cb])
    with pytest.warns(UserWarning, match=r"20 of 300 in-domain validation samples had NaN/Inf"):
        t.validate(model, loader(val, BATCH), verbose=False)
    bad = poisoned_rows()
    clean = torch.ones(N_VAL, dtype=torch.bool)
    clean[bad] = False
    # argmax of a NaN/Inf row is class 0: counting it would inflate the accuracy
    assert (y[bad] == 0).any()
    ref = reference(model, x[clean], y[clean])  # the model is clean outside validation
    h = cb.history[-1]
    assert h["nonfinite"] == len(bad) == 20
    assert t.callback_metrics["nac_me/nonfinite"].item() == 20
    assert h["nac_me"] == pytest.approx(ref["nac_me"], abs=1e-6)
    assert h["n_samples"] == ref["n_samples"]
    assert h["val_acc"] == pytest.approx(ref["n_samples"] / N_VAL)  # poisoned = misclassified
    assert math.isfinite(t.callback_metrics["nac_me"].item())


def test_nonfinite_activation_or_gradient_gives_an_invalid_state():
    z = torch.tensor([[1.0, math.inf, -math.inf, 2.0, math.nan]])
    g = torch.tensor([[0.5, 0.3, 0.3, math.inf, 0.1]])
    s = neuron_states(z, g, alpha=1.0)
    # sigmoid(+-inf) would be a plausible-looking 1 or 0: NaN instead, so it is not counted
    assert s[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item())
    assert torch.isnan(s[0, 1:]).all()
    m = NeuronCoverage(5, bins=10, r=1)
    m.update(s)
    assert int(m.invalid) == 4 and int(m.counts.sum()) == 1
    # conv maps: one non-finite position makes the pooled neuron invalid
    zc = torch.ones(1, 2, 3, 3)
    zc[0, 1, 2, 2] = math.inf
    sc = neuron_states(zc, torch.full_like(zc, 0.1), alpha=1.0)
    assert torch.isfinite(sc[0, 0]) and torch.isnan(sc[0, 1])


def fit_with_nan_epochs(tmp_path, data, nan_epochs, extra, max_epochs=4):
    train, val = data
    torch.manual_seed(0)
    model = Faulty(rows=None, epochs=nan_epochs, lr=2e-2)  # every sample NaN at nan_epochs
    cb = NACMECallback(alpha=10.0, bins=BINS, r=R)
    t = make_trainer(tmp_path, [cb, *extra], max_epochs=max_epochs)
    t.fit(model, loader(train, 64, shuffle=True), loader(val, BATCH))
    return cb, t


def test_checkpoint_never_selects_a_nan_epoch(tmp_path, data):
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="nac_me", mode="max", filename="{epoch}")
    with pytest.warns(UserWarning, match=r"all 300 in-domain validation samples had NaN/Inf"):
        cb, t = fit_with_nan_epochs(tmp_path, data, {0, 2}, [ck])
    values = [h["nac_me"] for h in cb.history]
    assert [math.isnan(v) for v in values] == [True, False, True, False]
    assert [h["nonfinite"] for h in cb.history] == [300, 0, 300, 0]
    best = max((1, 3), key=lambda i: values[i])
    assert ck.best_model_path.endswith(f"epoch={best}.ckpt")
    assert ck.best_model_score.item() == pytest.approx(values[best])
    # every validation NaN: Lightning keeps the first one, scored -inf (check the score!)
    ck_all = ModelCheckpoint(dirpath=tmp_path / "all", monitor="nac_me", mode="max")
    cb, _ = fit_with_nan_epochs(tmp_path / "all", data, None, [ck_all], max_epochs=2)
    assert all(math.isnan(h["nac_me"]) for h in cb.history)
    assert ck_all.best_model_score.item() == -math.inf


def test_early_stopping_check_finite(tmp_path, data):
    # default check_finite=True: the first NaN validation (epoch 1) ends the run
    es = EarlyStopping(monitor="nac_me", mode="max", patience=3)
    cb, t = fit_with_nan_epochs(tmp_path / "a", data, {1}, [es])
    assert len(cb.history) == 2 and es.stopped_epoch == 1
    assert t.current_epoch == 2  # stopped after epoch 1 of 4
    # recommended check_finite=False: NaN counts as no improvement, training goes on
    es = EarlyStopping(monitor="nac_me", mode="max", patience=3, check_finite=False)
    cb, _ = fit_with_nan_epochs(tmp_path / "b", data, {1}, [es])
    assert len(cb.history) == 4 and es.stopped_epoch == 0
    assert math.isnan(cb.history[1]["nac_me"]) and math.isfinite(es.best_score.item())
    # ... and a persistently NaN run (divergence) still stops after `patience` validations
    es = EarlyStopping(monitor="nac_me", mode="max", patience=2, check_finite=False)
    cb, _ = fit_with_nan_epochs(tmp_path / "c", data, {1, 2, 3, 4, 5}, [es], max_epochs=6)
    assert len(cb.history) == 3 and es.stopped_epoch == 2


EMPTY = TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))


def test_empty_validation_loaders(tmp_path, data):
    train, val = data
    # only an empty loader: Lightning skips validation; the callback says so at fit start
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R)
    t = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.warns(UserWarning, match=r"dataloader\(s\) \[0\] are empty: Lightning skips"):
        t.fit(MLP(), loader(train), loader(EMPTY))
    assert cb.history == [] and "nac_me" not in t.callback_metrics
    # an empty in-domain loader next to a non-empty OOD one: NaN, OOD accuracy still tracked
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, ood_dataloader_idx=[1])
    t = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.warns(UserWarning, match=r"are empty: nac_me will be NaN at every validation"):
        t.fit(MLP(), loader(train), [loader(EMPTY), loader(val)])
    h = cb.history[-1]
    assert math.isnan(h["nac_me"]) and h["val_acc"] is None and 0 < h["ood_acc"] <= 1
    assert math.isnan(t.callback_metrics["nac_me"].item())
    # trainer.validate() with an empty in-domain loader warns at the end of the run
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, ood_dataloader_idx=[1])
    with pytest.warns(UserWarning, match=r"no in-domain validation data reached the callback"):
        make_trainer(tmp_path, [cb]).validate(MLP(), [loader(EMPTY), loader(val)], verbose=False)
    assert math.isnan(cb.history[-1]["nac_me"])


def test_no_correctly_classified_sample_is_nan_not_zero(tmp_path, data):
    _, val = data
    x, _ = val.tensors
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10  # labels the model always gets wrong
    ds = TensorDataset(x, wrong)
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R)
    t = make_trainer(tmp_path, [cb])
    with pytest.warns(
        UserWarning,
        match=r"none of the 300 .* classified correctly.*NaN for this validation, not 0",
    ):
        t.validate(model, loader(ds, BATCH), verbose=False)
    h = cb.history[-1]
    assert math.isnan(h["nac_me"]) and h["val_acc"] == 0.0 and h["n_samples"] == 0
    assert math.isnan(t.callback_metrics["nac_me"].item())
    # correct_only=False scores every sample: finite
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, correct_only=False)
    make_trainer(tmp_path, [cb]).validate(model, loader(ds, BATCH), verbose=False)
    assert 0 < cb.history[-1]["nac_me"] <= 1 and cb.history[-1]["n_samples"] == N_VAL


class Resized(MLP):
    """Its validation set has a different size at every epoch (reloaded each epoch)."""

    SIZES = (300, 37, 180)

    def __init__(self, train, val):
        super().__init__(lr=2e-2)
        self.train_ds, self.val_ds = train, val
        self.refs = []

    def train_dataloader(self):
        return loader(self.train_ds, 64, shuffle=True)

    def val_dataloader(self):
        n = self.SIZES[self.current_epoch % len(self.SIZES)]
        x, y = self.val_ds.tensors
        return loader(TensorDataset(x[:n], y[:n]), BATCH)

    def on_validation_epoch_end(self):
        # NAC-ME computed independently on this epoch's data with this epoch's weights
        n = self.SIZES[self.current_epoch % len(self.SIZES)]
        x, y = self.val_ds.tensors
        self.refs.append(reference(self, x[:n], y[:n]))


def test_validation_set_changing_size_between_epochs(tmp_path, data):
    train, val = data
    torch.manual_seed(0)
    model = Resized(train, val)
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R)
    t = make_trainer(tmp_path, [cb], max_epochs=3, reload_dataloaders_every_n_epochs=1)
    t.fit(model)
    assert len(model.refs) == len(cb.history) == 3
    for h, ref in zip(cb.history, model.refs, strict=True):
        # histograms are reset per validation: each entry describes that epoch's data only
        assert h["n_samples"] == ref["n_samples"]
        assert h["nac_me"] == pytest.approx(ref["nac_me"], abs=1e-6)
        assert h["val_acc"] == pytest.approx(ref["val_acc"])
    assert cb.history[1]["n_samples"] <= 37 < cb.history[2]["n_samples"]
