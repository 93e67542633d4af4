"""NACMECallback with a real Trainer on CPU."""

import json
import math

import pytest
import torch
from callback_helpers import MLP, ConvNet, loader, reference_nac_me, trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from scipy import stats

from nac_lightning import NACMECallback

ALPHA, BINS, R = 50.0, 20, 5


def fit(tmp_path, data, cb, extra=(), max_epochs=3, model=None, val=None, **kw):
    train, val_ds, ood = data
    model = model or MLP()
    t = trainer(tmp_path, [cb, *extra], max_epochs=max_epochs, **kw)
    t.fit(model, loader(train, shuffle=True), val or [loader(val_ds), loader(ood)])
    return t, model


def test_checkpoint_selects_highest_logged_nac_me_and_value_matches_reference(tmp_path, data):
    torch.manual_seed(1)
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, ood_dataloader_idx=[1])
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ck", monitor="nac_me", mode="max", filename="{epoch}"
    )
    t, model = fit(tmp_path, data, cb, [ckpt], max_epochs=4)
    assert len(cb.history) == 4
    values = [h["nac_me"] for h in cb.history]
    best = max(range(4), key=lambda i: values[i])
    assert ckpt.best_model_score.item() == pytest.approx(values[best])
    assert ckpt.best_model_path.endswith(f"epoch={cb.history[best]['epoch']}.ckpt")
    # the last logged value equals NAC-ME computed independently on the final model
    ref, acc = reference_nac_me(model, data[1], ALPHA, BINS, R)
    assert t.callback_metrics["nac_me"].item() == pytest.approx(ref, abs=1e-6)
    assert values[-1] == pytest.approx(ref, abs=1e-6)
    assert cb.history[-1]["val_acc"] == pytest.approx(acc)
    assert 0 < ref < 1 and len(set(values)) > 1
    assert cb.fast is True and cb.head_name == "head"


def test_early_stopping_on_nac_me(tmp_path, data):
    torch.manual_seed(0)
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=40)
    es = EarlyStopping(monitor="nac_me", mode="max", patience=1)
    fit(tmp_path, data, cb, [es], max_epochs=12, model=MLP(lr=3e-2))
    values = [h["nac_me"] for h in cb.history]
    # replay EarlyStopping's rule on the logged history: stop after `patience` non-improvements
    best, wait, expected = -math.inf, 0, len(values)
    for i, v in enumerate(values):
        if v > best:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= 1:
                expected = i + 1
                break
    assert len(values) == expected
    assert es.best_score.item() == pytest.approx(max(values))


def test_fast_and_general_path_agree_on_same_layer(tmp_path, data):
    torch.manual_seed(0)
    fast = NACMECallback(alpha=ALPHA, bins=BINS, r=R, name="fast")
    general = NACMECallback(alpha=ALPHA, bins=BINS, r=R, layer="body", name="general")
    named_head = NACMECallback(alpha=ALPHA, bins=BINS, r=R, layer="head", name="named")
    t, _ = fit(tmp_path, data, fast, [general, named_head], max_epochs=2)
    assert fast.fast and named_head.fast and general.fast is False
    for a, b, c in zip(fast.history, general.history, named_head.history):
        assert a["nac_me"] == pytest.approx(b["nac_me"], abs=1e-6)
        assert a["nac_me"] == c["nac_me"]
        assert a["val_acc"] == b["val_acc"]
    assert {"fast", "general", "named"} <= set(t.callback_metrics)


def test_conv_layer_general_path_and_validate_in_inference_mode(tmp_path, data):
    torch.manual_seed(0)
    model = ConvNet()
    cb = NACMECallback(alpha=50.0, bins=BINS, r=R, layer="features.2")
    t = trainer(tmp_path, [cb], max_epochs=1)
    t.fit(model, loader(data[0], shuffle=True), loader(data[1]))

    def conv_act(m, x):
        with torch.enable_grad():
            act = m.features[:3](x.view(-1, 1, 8, 8))
            act.retain_grad()
            return act, m.head(m.pool(m.features[3](act)))

    conv_act.n = 16
    ref, _ = reference_nac_me(model, data[1], 50.0, BINS, R, layer_fn=conv_act)
    assert cb.history[-1]["nac_me"] == pytest.approx(ref, abs=1e-6)
    # trainer.validate() with Lightning's default inference_mode=True works too
    t2 = trainer(tmp_path, [cb])  # Trainer(inference_mode=True) is the default
    out = t2.validate(model, loader(data[1]), verbose=False)
    assert out[0]["nac_me"] == pytest.approx(ref, abs=1e-6)
    assert len(cb.history) == 2  # one from fit, one from validate


def test_several_val_dataloaders_with_ood_tags(tmp_path, data):
    torch.manual_seed(0)
    train, val, ood = data
    tagged = NACMECallback(
        alpha=ALPHA, bins=BINS, r=R, dataloader_idx=0, ood_dataloader_idx=[1, 2], name="tagged"
    )
    t, model = fit(
        tmp_path, data, tagged, max_epochs=2, val=[loader(val), loader(ood), loader(val)]
    )
    ref, val_acc = reference_nac_me(model, val, ALPHA, BINS, R)
    h = tagged.history[-1]
    assert h["nac_me"] == pytest.approx(ref, abs=1e-6)  # OOD loaders never used for NAC
    model.eval()
    with torch.no_grad():
        ood_acc = (model(ood.tensors[0]).argmax(1) == ood.tensors[1]).float().mean().item()
    assert h["ood_acc/1"] == pytest.approx(ood_acc)
    assert h["ood_acc/2"] == pytest.approx(val_acc)
    assert h["ood_acc"] == pytest.approx((ood_acc + val_acc) / 2)
    assert h["val_acc"] == pytest.approx(val_acc)
    assert t.callback_metrics["tagged/ood_acc"].item() == pytest.approx((ood_acc + val_acc) / 2)
    assert 0 < ood_acc < val_acc


def test_report_on_constructed_history(tmp_path):
    cb = NACMECallback(ood_dataloader_idx=[1])
    nac = [0.1, 0.3, 0.2, 0.5, 0.4, 0.4]
    val = [0.5, 0.9, 0.8, 0.7, 0.9, 0.6]
    ood = [0.2, 0.4, 0.3, 0.7, 0.6, 0.5]
    cb.history = [
        {"epoch": i, "global_step": 10 * (i + 1), "nac_me": n, "val_acc": v, "ood_acc": o}
        for i, (n, v, o) in enumerate(zip(nac, val, ood))
    ]
    rep = cb.compute_report()
    sel = rep["selection"]
    assert sel["nac_me"]["step"] == 40 and sel["nac_me"]["ood_acc"] == 0.7
    assert sel["val_acc"]["step"] == 20 and sel["val_acc"]["ood_acc"] == 0.4  # tie -> earliest
    assert sel["oracle"]["ood_acc"] == 0.7 and sel["last"]["ood_acc"] == 0.5
    corr = rep["correlation"]
    assert corr["nac_me"]["spearman"] == pytest.approx(stats.spearmanr(nac, ood)[0])
    assert corr["val_acc"]["spearman"] == pytest.approx(stats.spearmanr(val, ood)[0])
    assert corr["nac_me"]["pearson"] == pytest.approx(stats.pearsonr(nac, ood)[0])
    assert corr["nac_me"]["kendall"] == pytest.approx(stats.kendalltau(nac, ood)[0])


def test_resume_keeps_history_and_writes_files(tmp_path, data):
    torch.manual_seed(0)
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, ood_dataloader_idx=[1])
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    fit(tmp_path, data, cb, [ckpt], max_epochs=2)
    first = [dict(h) for h in cb.history]
    saved = json.loads((tmp_path / "nac_me_history.json").read_text())
    assert [h["global_step"] for h in saved] == [h["global_step"] for h in first]
    report = json.loads((tmp_path / "nac_me_report.json").read_text())
    assert report["n_validations"] == 2 and "spearman" in report["correlation"]["nac_me"]

    resumed = NACMECallback(alpha=ALPHA, bins=BINS, r=R, ood_dataloader_idx=[1])
    train, val, ood = data
    t = trainer(tmp_path, [resumed, ModelCheckpoint(dirpath=tmp_path / "ck2")], max_epochs=4)
    t.fit(
        MLP(),
        loader(train, shuffle=True),
        [loader(val), loader(ood)],
        ckpt_path=str(tmp_path / "ck" / "last.ckpt"),
    )
    assert len(resumed.history) == 4
    assert resumed.history[:2] == first
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]


class GradProbe(MLP):
    """Sets every .grad at the start of validation and checks them at its end (Lightning
    itself clears .grad before validate(); the callback's work happens in between)."""

    def on_validation_epoch_start(self):
        for p in self.parameters():
            p.grad = torch.full_like(p, 0.25)

    def on_validation_epoch_end(self):
        self.grads_kept = all(
            torch.equal(p.grad, torch.full_like(p, 0.25)) for p in self.parameters()
        )


def test_train_mode_and_grads_untouched(tmp_path, data):
    torch.manual_seed(0)
    model = GradProbe()
    model.body[1].eval()  # a submodule deliberately in another mode
    before = {n: m.training for n, m in model.named_modules()}
    for layer in (None, "body.2"):
        cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, layer=layer)
        model.grads_kept = None
        trainer(tmp_path, [cb]).validate(model, loader(data[1]), verbose=False)
        assert {n: m.training for n, m in model.named_modules()} == before
        assert model.grads_kept is True
        assert len(cb.history) == 1 and cb.history[0]["nac_me"] > 0
    # inside fit too (validation between training steps)
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, layer="body.2")
    model.grads_kept = None
    fit(tmp_path, data, cb, max_epochs=1, model=model)
    assert model.grads_kept is True and model.training


def test_sanity_check_is_skipped(tmp_path, data):
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R)
    fit(tmp_path, data, cb, max_epochs=1, num_sanity_val_steps=2)
    assert len(cb.history) == 1 and cb.history[0]["global_step"] > 0
    assert cb.history[0]["n_samples"] > 0


def test_degenerate_configuration_warns_once(tmp_path, data):
    cb = NACMECallback()  # official alpha=0.1, r=500 on an untrained MLP and 300 samples
    model = MLP()
    with pytest.warns(UserWarning, match="alpha is too small") as rec:
        for _ in range(2):
            trainer(tmp_path, [cb]).validate(model, loader(data[1]), verbose=False)
    assert sum("NACMECallback('nac_me')" in str(w.message) for w in rec) == 1
    assert any("no bin reached r=500" in str(w.message) for w in rec)
    assert cb.history[-1]["saturated"] == 0.0 and cb.history[-1]["occupied_bins"] <= 2


def test_dict_batches_custom_unpacker_and_forward_fn(tmp_path, data):
    from torch.utils.data import Dataset

    class DictDS(Dataset):
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            x, y = self.ds[i]
            return {"image": x, "label": y}

    class DictMLP(MLP):
        def forward(self, x):
            return {"logits": super().forward(x), "aux": 1}

        def validation_step(self, batch, batch_idx):
            pass  # does not run the model: the callback runs the forward itself

    model = DictMLP()
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R)
    trainer(tmp_path, [cb]).validate(model, loader(DictDS(data[1])), verbose=False)
    ref, acc = reference_nac_me(model, data[1], ALPHA, BINS, R)
    assert cb.history[0]["nac_me"] == pytest.approx(ref, abs=1e-6)
    assert cb.history[0]["val_acc"] == pytest.approx(acc)
    # a custom unpacker for an unusual batch layout; forward_fn for a model returning features
    cb2 = NACMECallback(
        alpha=ALPHA,
        bins=BINS,
        r=R,
        batch_unpacker=lambda b: (b["image"], b["label"]),
        forward_fn=lambda m, x: m(x)["logits"],
    )
    trainer(tmp_path, [cb2]).validate(model, loader(DictDS(data[1])), verbose=False)
    assert cb2.history[0]["nac_me"] == pytest.approx(ref, abs=1e-6)


def test_correct_only_false_counts_every_sample(tmp_path, data):
    model = MLP()
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, correct_only=False)
    trainer(tmp_path, [cb]).validate(model, loader(data[1]), verbose=False)
    ref, _ = reference_nac_me(model, data[1], ALPHA, BINS, R, correct_only=False)
    assert cb.history[0]["nac_me"] == pytest.approx(ref, abs=1e-6)
    assert cb.history[0]["n_samples"] == 300


class CountingMLP(MLP):
    """Counts full-batch forward passes (the callback's 4-sample detection pass excluded)."""

    calls = 0

    def forward(self, x):
        if x.shape[0] > 4:
            CountingMLP.calls += 1
        return super().forward(x)


def test_fast_path_adds_no_forward_pass(tmp_path, data):
    model = CountingMLP()
    cb = NACMECallback(alpha=ALPHA, bins=BINS, r=R, ood_dataloader_idx=[1])
    t = trainer(tmp_path, [cb])
    CountingMLP.calls = 0
    t.validate(model, [loader(data[1]), loader(data[2])], verbose=False)
    assert CountingMLP.calls == 10  # 5 batches x 2 loaders, the validation steps' own forwards
    CountingMLP.calls = 0
    t.validate(model, [loader(data[1]), loader(data[2])], verbose=False)
    assert CountingMLP.calls == 10
