"""DomainBedDataModule: contract attributes, loader order/sizes, balanced batches, errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from nac_lightning.data import (
    BalancedDomainSampler,
    CorruptImageError,
    DatasetLayoutError,
    DomainBedDataModule,
    eval_transform,
    split_indices,
)

PACS_COUNTS = [5, 6, 7, 8]  # images per class in art_painting, cartoon, photo, sketch


def _n_out(n: int) -> int:
    return int(n * 0.2)


@pytest.fixture
def pacs_root(make_tree) -> Path:
    return make_tree("pacs", images_per_class=PACS_COUNTS)


def _env_of(subset) -> str:
    """The environment folder of every sample of a TransformedSubset over an ImageFolder."""
    return {Path(subset.dataset.samples[i][0]).parent.parent.name for i in subset.indices}


# ------------------------------------------------------------------ contract attributes
def test_attributes_right_after_init_one_test_env():
    dm = DomainBedDataModule("pacs", root="unused", test_envs=[2])
    assert dm.dataset_name == "pacs"
    assert dm.environments == ["art_painting", "cartoon", "photo", "sketch"]
    assert dm.num_classes == 7 and dm.input_shape == (3, 224, 224)
    assert dm.val_dataloader_names == ["val", "env2_in", "env2_out"]
    assert (dm.val_idx, dm.ood_idx, dm.oracle_idx, dm.nac_idx) == (0, [1], [2], 0)
    assert dm.source_envs == [0, 1, 3]
    assert dm.test_dataloader_names == ["env2"]


def test_attributes_two_test_envs_and_nac_on_train():
    dm = DomainBedDataModule("rotated_digits", test_envs=(4, 1), nac_on_train=True)
    assert dm.test_envs == [1, 4]
    assert dm.val_dataloader_names == ["val", "env1_in", "env4_in", "env1_out", "env4_out", "train"]
    assert (dm.val_idx, dm.ood_idx, dm.oracle_idx, dm.nac_idx) == (0, [1, 2], [3, 4], 5)
    assert dm.num_classes == 10 and dm.input_shape == (1, 28, 28)
    assert DomainBedDataModule("rotated_digits", test_envs=3).test_envs == [3]


# ------------------------------------------------------------- loader order and sizes
def test_val_loader_order_and_sizes(pacs_root):
    dm = DomainBedDataModule("pacs", pacs_root, test_envs=[1], trial_seed=3, nac_on_train=True)
    dm.setup("fit")
    n = [7 * c for c in PACS_COUNTS]  # 35, 42, 49, 56
    sources = [0, 2, 3]
    loaders = dm.val_dataloader()
    assert len(loaders) == len(dm.val_dataloader_names) == 4
    sizes = [len(loader.dataset) for loader in loaders]
    assert sizes == [
        sum(_n_out(n[e]) for e in sources),
        n[1] - _n_out(n[1]),
        _n_out(n[1]),
        sum(n[e] - _n_out(n[e]) for e in sources),
    ]
    val, ood, oracle, train = (loader.dataset for loader in loaders)
    assert [_env_of(d) for d in val.datasets] == [{"art_painting"}, {"photo"}, {"sketch"}]
    assert _env_of(ood) == _env_of(oracle) == {"cartoon"}
    # the exact DomainBed split of the test environment
    out_idx, in_idx = split_indices(n[1], 3, 1)
    assert ood.indices == in_idx and oracle.indices == out_idx
    assert [d.indices for d in train.datasets] == [split_indices(n[e], 3, e)[1] for e in sources]
    # the in-domain validation and the training data never overlap
    for v, t in zip(val.datasets, dm.train_dataset.datasets):
        assert not set(v.indices) & set(t.indices)
    tests = dm.test_dataloader()
    assert [len(t.dataset) for t in tests] == [n[1]]
    assert dm.split_sizes["env1"] == n[1] and dm.split_sizes["val"] == sizes[0]


def test_eval_batches_are_unaugmented_and_labelled(pacs_root):
    dm = DomainBedDataModule("pacs", pacs_root, test_envs=[0], eval_batch_size=16)
    dm.setup()
    ood = dm.val_dataloader()[dm.ood_idx[0]]
    x, y = next(iter(ood))
    assert x.shape == (16, 3, 224, 224) and y.dtype == torch.int64
    subset = ood.dataset
    path, label = subset.dataset.samples[subset.indices[0]]
    torch.testing.assert_close(x[0], eval_transform()(subset.dataset.loader(path)))
    assert y[0].item() == label == dm.classes.index(Path(path).parent.name)
    x2, _ = next(iter(ood))  # not shuffled, deterministic
    torch.testing.assert_close(x, x2)


# ------------------------------------------------------------------- balanced batches
def test_train_batches_hold_batch_size_per_source_domain(pacs_root):
    dm = DomainBedDataModule("pacs", pacs_root, test_envs=[3], batch_size=4, augment=False)
    dm.setup()
    loader = dm.train_dataloader()
    sources = dm.source_envs
    in_sizes = [len(dm.splits[e]["in"]) for e in sources]
    assert dm.steps_per_epoch == -(-max(in_sizes) // 4) == len(loader)
    x, y = next(iter(loader))
    assert x.shape == (4 * len(sources), 3, 224, 224) and y.shape == (12,)
    # domain-major: rows [4d, 4d+4) come from source domain d
    offsets = [0, in_sizes[0], in_sizes[0] + in_sizes[1], sum(in_sizes)]
    indices = list(iter(loader.sampler))
    assert len(indices) == len(loader) * 12
    for step in range(len(loader)):
        chunk = indices[step * 12 : (step + 1) * 12]
        for d in range(3):
            assert all(offsets[d] <= i < offsets[d + 1] for i in chunk[4 * d : 4 * d + 4])
    # without augmentation a training sample equals its eval transform
    first = dm.train_dataset[0][0]
    env0 = dm.data[sources[0]]
    path = env0.samples[dm.splits[sources[0]]["in"][0]][0]
    torch.testing.assert_close(first, eval_transform()(env0.loader(path)))


def test_train_augmentation_is_applied(pacs_root):
    dm = DomainBedDataModule("pacs", pacs_root, test_envs=[0], augment=True)
    dm.setup()
    a, b = dm.train_dataset[0][0], dm.train_dataset[0][0]
    assert a.shape == (3, 224, 224) and not torch.equal(a, b)
    assert torch.equal(dm.val_datasets[0][0][0], dm.val_datasets[0][0][0])


def test_nac_train_loader_augmentation_is_optional(pacs_root):
    """nac_on_train: eval transform by default; the official code's augmentation on request."""
    plain = DomainBedDataModule("pacs", pacs_root, test_envs=[0], nac_on_train=True)
    plain.setup()
    nac = plain.val_datasets[plain.nac_idx]
    assert torch.equal(nac[0][0], nac[0][0])
    aug = DomainBedDataModule(
        "pacs", pacs_root, test_envs=[0], nac_on_train=True, nac_train_augment=True
    )
    aug.setup()
    nac = aug.val_datasets[aug.nac_idx]
    a, b = nac[0][0], nac[0][0]
    assert a.shape == (3, 224, 224) and not torch.equal(a, b)
    assert torch.equal(aug.val_datasets[0][0][0], aug.val_datasets[0][0][0])  # val untouched


def test_sampler_epochs_are_fresh_and_reproducible():
    sampler = BalancedDomainSampler([10, 3, 7], batch_size=2, seed=5)
    assert sampler.num_steps == 5 and len(sampler) == 30
    sampler.set_epoch(0)
    e0 = list(sampler)
    sampler.set_epoch(1)
    e1 = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == e0 and e0 != e1
    assert list(sampler) == e1  # a plain loop without set_epoch advances the epoch itself
    other = BalancedDomainSampler([10, 3, 7], batch_size=2, seed=6)
    assert list(other) != e0
    counts = Counter(i for i in e0 if 10 <= i < 13)
    assert sum(counts.values()) == 10  # 2 per step x 5 steps from the 3-sample domain
    perm = BalancedDomainSampler([4, 4], batch_size=2, num_steps=2, replacement=False)
    chunk = list(perm)
    assert sorted(chunk[0:2] + chunk[4:6]) == [0, 1, 2, 3]  # a permutation of domain 0


def test_sampler_bad_input():
    with pytest.raises(ValueError, match="at least one training sample"):
        BalancedDomainSampler([3, 0], batch_size=2)
    with pytest.raises(ValueError, match="at least one domain"):
        BalancedDomainSampler([], batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BalancedDomainSampler([3], batch_size=0)


def test_deterministic_given_seeds():
    def first_batches(**kwargs):
        dm = DomainBedDataModule("rotated_digits", test_envs=[0], batch_size=8, **kwargs)
        dm.setup()
        return [y for _, y in dm.train_dataloader()][:3]

    a, b, c = first_batches(trial_seed=0), first_batches(trial_seed=0), first_batches(trial_seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


# ------------------------------------------------------- embedded digits in a Trainer
class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(28 * 28, 10)
        self.val_runs: list[dict] = []
        self.train_shapes: set = set()
        self.sampler_epochs: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.train_shapes.add(tuple(x.shape))
        self.sampler_epochs.append(self.trainer.train_dataloader.sampler.epoch)
        return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

    def on_validation_epoch_start(self):
        self.val_runs.append(Counter())

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.val_runs[-1][dataloader_idx] += len(batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_by_steps_across_epochs():
    dm = DomainBedDataModule("rotated_digits", test_envs=[5], batch_size=16, nac_on_train=True)
    model = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=20,
        val_check_interval=7,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert dm.steps_per_epoch == 15  # ceil(240 / 16)
    assert trainer.global_step == 20
    assert model.train_shapes == {(5 * 16, 1, 28, 28)}
    assert model.sampler_epochs[:15] == [0] * 15 and model.sampler_epochs[15:] == [1] * 5
    assert len(model.val_runs) == 2  # steps 7 and 14
    expected = {i: n for i, n in enumerate(dm.split_sizes[k] for k in dm.val_dataloader_names)}
    assert all(dict(run) == expected for run in model.val_runs)
    assert expected[dm.ood_idx[0]] == 299 - int(299 * 0.2)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("test_envs", "match"),
    [
        ([], "test_envs is empty"),
        (None, "test_envs is empty"),
        ([4], r"out of range: 'pacs' has 4 environments \(0=art_painting.*use indices 0..3"),
        (-1, "out of range"),
        ([0, 1, 2, 3], "leaves no source environment"),
        ([1, 1], "duplicates"),
        (["photo"], "must hold environment indices"),
    ],
)
def test_bad_test_envs(test_envs, match):
    with pytest.raises(ValueError, match=match):
        DomainBedDataModule("pacs", root="unused", test_envs=test_envs)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset"):
        DomainBedDataModule("imagenet", test_envs=[0])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DomainBedDataModule("rotated_digits", test_envs=[0], batch_size=0)
    with pytest.raises(ValueError, match="holdout_fraction"):
        DomainBedDataModule("rotated_digits", test_envs=[0], holdout_fraction=1.5)
    dm = DomainBedDataModule("rotated_digits", test_envs=[0])
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()


def test_missing_data_error_at_setup(tmp_path):
    dm = DomainBedDataModule("vlcs", tmp_path, test_envs=[0])
    with pytest.raises(DatasetLayoutError, match=r"VLCS.*nac-download vlcs --root"):
        dm.setup()


def test_corrupt_image_error_through_worker(make_tree):
    root = make_tree("pacs", images_per_class=2)
    bad = root / "PACS" / "sketch" / "dog" / "img_1.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    dm = DomainBedDataModule("pacs", root, test_envs=[3], num_workers=1, eval_batch_size=64)
    dm.setup()
    with pytest.raises(CorruptImageError, match=str(bad)):
        next(iter(dm.test_dataloader()[0]))


def test_data_parallel_ranks_draw_their_own_balanced_batches():
    from lightning.pytorch.trainer.connectors.data_connector import _DataConnector
    from torch.utils.data import DistributedSampler

    from nac_lightning.data.samplers import DistributedBalancedDomainSampler

    ranks = [
        list(DistributedBalancedDomainSampler([9, 5], 3, seed=1, rank=r, num_replicas=2))
        for r in range(2)
    ]
    assert ranks[0] != ranks[1] and len(ranks[0]) == len(ranks[1]) == 3 * 2 * 3
    for indices in ranks:  # still domain-major balanced chunks
        for step in range(3):
            chunk = indices[6 * step : 6 * step + 6]
            assert all(i < 9 for i in chunk[:3]) and all(9 <= i < 14 for i in chunk[3:])
    with pytest.raises(ValueError, match="rank < num_replicas"):
        BalancedDomainSampler([3], 1, rank=2, num_replicas=2)

    # attached to a (not yet launched) 2-process Trainer, the DataModule picks the rank-aware
    # sampler and Lightning leaves it in place instead of wrapping it
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    dm = DomainBedDataModule("rotated_digits", test_envs=[0], batch_size=4)
    dm.trainer = trainer
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)
    assert loader.sampler.num_replicas == 2
    assert not _DataConnector(trainer)._requires_distributed_sampler(loader)
