"""NACMECallback under DDP (2 CPU processes, gloo, ``ddp_spawn``) equals a single process.

Setup: the same initial MLP and data; the training set size is divisible by
``world size x per-rank batch`` and the single process uses the global batch
(``2 x 64 = 128``). Under DDP Lightning always shuffles the training data
(``DistributedSampler(shuffle=True, seed=PL_GLOBAL_SEED)``, reseeded per epoch); the single
process uses ``DistributedSampler(num_replicas=1)`` with the same seed, so each of its
batches is the union of the ranks' batches and DDP's averaged gradients are the single
process's up to float rounding. ``use_distributed_sampler=True`` (Lightning's default) splits
every dataloader between the ranks; each rank sees half the validation batches.

Validation dataloader 0 has 256 samples (divisible by ``2 x 64``): every rank logs the same
NAC-ME, equal to the single process's, and ``ModelCheckpoint(monitor="nac_me")`` keeps the
same epoch. Dataloader 1 has 251 samples (odd): ``DistributedSampler`` pads it to 252 by
repeating its first ``252 - 251 = 1`` sample, and that duplicate is counted like any other
sample: in the histograms (``n_samples`` one higher when it is classified correctly), in
the accuracy (over 252 samples) and hence in NAC-ME. The test quantifies this exactly.
"""

import json
import time
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from reliability_helpers import (
    BINS,
    MLP,
    R,
    RankRecorder,
    loader,
    make_trainer,
    reference,
    split,
)
from torch.multiprocessing.spawn import ProcessExitedException
from torch.utils.data import DataLoader, DistributedSampler, Subset

from nac_lightning import NACMECallback

WORLD, BATCH, N_TRAIN, N_VAL, N_ODD, EPOCHS = 2, 64, 1024, 256, 251, 4
ALPHA = 10.0  # with R=5: NAC-ME peaks at epoch 1 here, so the selection is not trivial
KEYS = (
    "nac_me",
    "nac_me/n_samples",
    "nac_me/val_acc",
    "nac_me/occupied_bins",
    "nac_me/saturated",
    "nac_me/state_std",
    "nac_pad",
    "nac_pad/n_samples",
    "nac_pad/val_acc",
)


def _run(root, devices):
    """Fit the same model on the same data with 1 process or 2 DDP processes."""
    train, val = split(N_TRAIN, N_VAL)
    odd = Subset(val, range(N_ODD))
    torch.manual_seed(0)
    model = MLP(lr=2e-2)
    callbacks = [
        NACMECallback(alpha=ALPHA, bins=BINS, r=R, dataloader_idx=0, name="nac_me"),
        NACMECallback(alpha=ALPHA, bins=BINS, r=R, dataloader_idx=1, name="nac_pad"),
        ModelCheckpoint(dirpath=root / "ck", monitor="nac_me", mode="max", filename="{epoch}"),
        RankRecorder(root, KEYS),
    ]
    ddp = devices > 1
    t = make_trainer(
        root,
        callbacks,
        max_epochs=EPOCHS,
        devices=devices,
        strategy="ddp_spawn" if ddp else "auto",
        use_distributed_sampler=True,
    )
    # per-rank batch 64 under DDP = global batch 128 in the single process
    if ddp:
        train_loader = loader(train, BATCH)  # Lightning adds the shuffling DistributedSampler
    else:
        sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=0)
        train_loader = DataLoader(train, batch_size=BATCH * WORLD, sampler=sampler)
    try:
        t.fit(model, train_loader, [loader(val, BATCH), loader(odd, BATCH)])
    except ProcessExitedException as err:
        # a worker killed by a signal while exiting, after it finished fitting and wrote its
        # results (seen once under heavy load), is a torch/gloo teardown race, not a result
        if not all((root / f"rank{k}.json").exists() for k in range(devices)):
            raise
        warnings.warn(f"DDP worker died at exit after completing fit: {err}", stacklevel=1)
    ranks = [json.loads((root / f"rank{k}.json").read_text()) for k in range(devices)]
    return t, model, callbacks[2], ranks


def test_ddp_matches_single_process_and_padding_is_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # the DDP workers' sampler seed (inherited)
    start = time.perf_counter()
    _, single_model, single_ck, (single,) = _run(tmp_path / "single", 1)
    t_single = time.perf_counter() - start
    _, ddp_model, ddp_ck, ranks = _run(tmp_path / "ddp", WORLD)
    t_ddp = time.perf_counter() - start - t_single
    print(f"single {t_single:.1f}s, ddp_spawn x{WORLD} {t_ddp:.1f}s")

    # the ranks really split the data: half the validation batches each
    assert all(row["world_size"] == WORLD for r in ranks for row in r["rows"])
    assert [r["rows"][0]["num_val_batches"] for r in ranks] == [[2, 2], [2, 2]]
    assert single["rows"][0]["num_val_batches"] == [4, 4]
    # every rank logged the same values and holds the same history
    assert ranks[0]["rows"] == ranks[1]["rows"]
    assert ranks[0]["histories"] == ranks[1]["histories"]

    # divisible loader: DDP logs what one process logs, epoch by epoch
    for d, s in zip(ranks[0]["rows"], single["rows"], strict=True):
        for key in ("nac_me", "nac_me/val_acc", "nac_me/n_samples", "nac_me/saturated"):
            assert d[key] == pytest.approx(s[key], abs=1e-6), (d["epoch"], key)
        assert d["nac_me/occupied_bins"] == pytest.approx(s["nac_me/occupied_bins"], abs=1e-4)
        assert d["nac_me/state_std"] == pytest.approx(s["nac_me/state_std"], rel=1e-4)
    hist_d, hist_s = ranks[0]["histories"]["nac_me"], single["histories"]["nac_me"]
    for d, s in zip(hist_d, hist_s, strict=True):  # the callback's history, entry by entry
        assert d.keys() == s.keys()
        assert (d["epoch"], d["global_step"]) == (s["epoch"], s["global_step"])
        for key in ("nac_me", "val_acc", "n_samples", "saturated", "nonfinite"):
            assert d[key] == pytest.approx(s[key], abs=1e-6), (d["epoch"], key)
    assert len({round(h["nac_me"], 6) for h in hist_s}) == EPOCHS  # no ties: selection is unique

    # ModelCheckpoint(monitor="nac_me") keeps the same epoch, with the same weights and score
    best = max(hist_s, key=lambda h: h["nac_me"])
    assert 0 < best["epoch"] < EPOCHS - 1
    assert single_ck.best_model_path.endswith(f"epoch={best['epoch']}.ckpt")
    assert ddp_ck.best_model_path.endswith(f"epoch={best['epoch']}.ckpt")
    ck_s = torch.load(single_ck.best_model_path, weights_only=False)
    ck_d = torch.load(ddp_ck.best_model_path, weights_only=False)
    for k, v in ck_s["state_dict"].items():
        torch.testing.assert_close(ck_d["state_dict"][k], v, atol=1e-5, rtol=1e-4)
    score = {
        name: next(v for kk, v in ck["callbacks"].items() if kk.startswith("ModelCheckpoint"))
        for name, ck in (("s", ck_s), ("d", ck_d))
    }
    assert score["d"]["best_model_score"].item() == pytest.approx(best["nac_me"], abs=1e-6)
    assert score["s"]["best_model_score"].item() == pytest.approx(best["nac_me"], abs=1e-6)

    # odd-sized loader: DistributedSampler pads 251 -> 252 by repeating sample 0, counted twice
    train, val = split(N_TRAIN, N_VAL)
    x, y = val.tensors[0][:N_ODD], val.tensors[1][:N_ODD]
    shards = [list(DistributedSampler(range(N_ODD), WORLD, k, shuffle=False)) for k in range(2)]
    padded = sorted(shards[0] + shards[1])
    assert len(padded) == 252 and padded.count(0) == 2 and set(padded) == set(range(N_ODD))
    exact = reference(ddp_model, x, y, alpha=ALPHA)
    with_pad = reference(ddp_model, x[padded], y[padded], alpha=ALPHA)
    last = ranks[0]["rows"][-1]
    assert last["nac_pad"] == pytest.approx(with_pad["nac_me"], abs=1e-6)
    assert last["nac_pad/n_samples"] == with_pad["n_samples"]
    assert last["nac_pad/val_acc"] == pytest.approx(with_pad["val_acc"], abs=1e-6)
    first_correct = int(with_pad["n_samples"] - exact["n_samples"])
    assert first_correct == 1  # sample 0 is classified correctly, so it is counted twice
    assert last["nac_pad/val_acc"] == pytest.approx((exact["n_samples"] + 1) / 252, abs=1e-6)
    # the single process counts each sample once
    assert (
        single["rows"][-1]["nac_pad/n_samples"]
        == reference(single_model, x, y, alpha=ALPHA)["n_samples"]
    )
    print(
        f"padding: n_samples {exact['n_samples']} -> {with_pad['n_samples']}, "
        f"val_acc {exact['val_acc']:.5f} -> {with_pad['val_acc']:.5f}, "
        f"nac_me {exact['nac_me']:.6f} -> {with_pad['nac_me']:.6f}"
    )
