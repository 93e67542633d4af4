"""Every config in conf/ composes and instantiates; CLI-style overrides land where documented."""

import hydra
import lightning.pytorch as pl
import pytest
from hydra.errors import MissingConfigException
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from train_helpers import CONF

from nac_lightning import NACMECallback
from nac_lightning.data import DomainBedDataModule
from nac_lightning.models import ERMModule
from nac_lightning.results import ResultsWriter

DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))
MODELS = ["mnist_cnn", "resnet18", "resnet50"]
REFERENCE = {  # NAC.md section 6: lr, dropout, weight decay
    "pacs": (1e-5, 0.1, 1e-4),
    "vlcs": (1e-5, 0.1, 1e-4),
    "office_home": (1e-5, 0.5, 1e-6),
    "terra_incognita": (3e-5, 0.0, 1e-4),
}


def test_groups_hold_the_documented_options():
    assert DATASETS == ["office_home", "pacs", "rotated_digits", "terra_incognita", "vlcs"]
    options = {
        g: {p.stem for p in (CONF / g).glob("*.yaml")} for g in ("model", "trainer", "logger")
    }
    assert set(MODELS) <= options["model"]
    assert {"cpu", "gpu", "ddp"} <= options["trainer"]
    assert {"wandb", "csv", "none", "many"} <= options["logger"]
    assert set(DATASETS) <= {p.stem for p in (CONF / "experiment").glob("*.yaml")}


def test_default_config_is_the_embedded_cpu_run(compose_cfg):
    cfg = compose_cfg()
    assert cfg.dataset.dataset == "rotated_digits" and cfg.dataset.root is None
    assert cfg.model.arch == "mnist_cnn" and cfg.model.pretrained is False
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.trainer.check_val_every_n_epoch is None
    assert 0 < cfg.trainer.val_check_interval < cfg.trainer.max_steps <= 1000
    assert cfg.logger.wandb.offline is True and "csv" in cfg.logger
    # the study-tuned values for this data size (docs/study); official ones elsewhere
    assert cfg.callbacks.nac_me.alpha == 10.0 and cfg.callbacks.nac_me.r == 20
    pacs = compose_cfg(["dataset=pacs"])
    assert pacs.callbacks.nac_me.alpha == 0.1 and pacs.callbacks.nac_me.r == 500
    assert cfg.callbacks.model_checkpoint_nac.monitor == "nac_me"
    assert cfg.callbacks.model_checkpoint_val.monitor == "val_acc"
    assert cfg.callbacks.model_checkpoint_last.filename == "last"


@pytest.mark.parametrize("dataset", sorted(REFERENCE))
def test_dataset_selects_reference_protocol(compose_cfg, dataset):
    cfg = compose_cfg([f"dataset={dataset}"])
    lr, dropout, wd = REFERENCE[dataset]
    assert cfg.dataset.dataset == dataset
    assert cfg.model.arch == "resnet50" and cfg.model.pretrained and cfg.model.freeze_bn
    assert (cfg.model.lr, cfg.model.dropout, cfg.model.weight_decay) == (lr, dropout, wd)
    assert cfg.dataset.batch_size == 32 and cfg.dataset.image_size == 224
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval) == (5001, 300)
    # the command line still wins over the experiment and the dataset's model
    cfg = compose_cfg(
        [f"dataset={dataset}", "model=resnet18", "trainer.max_steps=7", "model.lr=0.1"]
    )
    assert cfg.model.arch == "resnet18" and cfg.trainer.max_steps == 7 and cfg.model.lr == 0.1


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_config_instantiates(compose_cfg, train_script, dataset):
    cfg = compose_cfg([f"dataset={dataset}", "dataset.root=/nonexistent", "model.pretrained=false"])
    dm = hydra.utils.instantiate(cfg.dataset)
    assert isinstance(dm, DomainBedDataModule) and dm.dataset_name == dataset
    assert dm.test_envs == [0] and dm.trial_seed == cfg.trial_seed
    model = train_script.build_model(cfg, dm)
    assert isinstance(model, ERMModule)
    assert model.classifier.out_features == dm.num_classes


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_instantiates(compose_cfg, model):
    cfg = compose_cfg([f"model={model}", "model.pretrained=false"])
    module = hydra.utils.instantiate(cfg.model, num_classes=3, input_shape=[3, 32, 32])
    assert module.hparams.arch == model
    assert module(__import__("torch").randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_every_trainer_config_instantiates(compose_cfg, trainer, tmp_path):
    overrides = [f"trainer={trainer}"]
    if trainer != "cpu":  # no GPU here: keep every other setting of the config
        overrides.append("trainer.accelerator=cpu")
    cfg = compose_cfg(overrides)
    t = hydra.utils.instantiate(cfg.trainer, logger=False)
    assert isinstance(t, pl.Trainer)
    assert t.max_steps == cfg.trainer.max_steps
    assert t.default_root_dir == str(tmp_path / "run")
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp" and t.num_devices == cfg.trainer.devices


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("logger=many", {WandbLogger, CSVLogger}),
        ("logger=wandb", {WandbLogger}),
        ("logger=csv", {CSVLogger}),
        ("logger=none", set()),
        ("logger=[csv,wandb]", {CSVLogger, WandbLogger}),
    ],
)
def test_logger_choices(compose_cfg, train_script, choice, expected, tmp_path):
    cfg = compose_cfg([choice, "dataset.test_envs=[1,3]", "trial_seed=2"])
    loggers = train_script.build_loggers(cfg)
    assert {type(lg) for lg in loggers} == expected
    for lg in loggers:
        assert str(tmp_path / "run") in str(lg.save_dir)
        if isinstance(lg, WandbLogger):  # grouped by dataset / test envs / network, offline
            assert lg._wandb_init["group"] == "rotated_digits_te1-3_mnist_cnn"
            assert lg._wandb_init["name"] == "rotated_digits_te1-3_seed2"
            assert lg._offline is True
            assert "te1-3" in lg._wandb_init["tags"]


def test_callbacks_are_wired_from_the_datamodule(compose_cfg, train_script):
    cfg = compose_cfg(
        [
            "dataset.test_envs=[1,4]",
            "dataset.nac_on_train=true",
            "callbacks.nac_me.alpha=10",
            "callbacks.nac_me.bins=20",
            "callbacks.nac_me.r=5",
            "nac_grid.alpha=[1,100]",
            "nac_grid.r=[50]",
            "+extra_nac.nac_me_a3={alpha: 3.0}",
        ]
    )
    dm = hydra.utils.instantiate(cfg.dataset)
    callbacks = train_script.build_callbacks(cfg, dm)
    nacs = {c.name: c for c in callbacks if isinstance(c, NACMECallback)}
    assert list(nacs) == ["nac_me", "nac_me_a1_r50", "nac_me_a100_r50", "nac_me_a3"]
    main = nacs["nac_me"]
    assert (main.alpha, main.bins, main.r) == (10.0, 20, 5)
    assert (nacs["nac_me_a3"].alpha, nacs["nac_me_a3"].r) == (3.0, 5)  # rest from nac_me
    assert (nacs["nac_me_a100_r50"].alpha, nacs["nac_me_a100_r50"].r) == (100.0, 50)
    for cb in nacs.values():  # wired from the datamodule, here not the defaults
        assert list(cb.dataloader_idx) == [dm.nac_idx] == [5]
        assert list(cb.ood_dataloader_idx) == dm.ood_idx == [1, 2]
        assert list(cb.val_dataloader_idx) == [dm.val_idx]
    ckpts = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    assert [(c.monitor, c.mode) for c in ckpts][:2] == [("nac_me", "max"), ("val_acc", "max")]
    assert ckpts[2].monitor is None and ckpts[2].filename == "last"
    writer = next(c for c in callbacks if isinstance(c, ResultsWriter))
    assert writer.test_envs == [1, 4] and writer.dataset == "rotated_digits"
    assert writer.args["callbacks"]["nac_me"]["alpha"] == 10
    assert writer.hparams["lr"] == cfg.model.lr
    assert any(isinstance(c, RichProgressBar) for c in callbacks)


def test_duplicate_nac_names_are_refused(compose_cfg, train_script):
    cfg = compose_cfg(["+extra_nac.nac_me={alpha: 3.0}"])
    dm = hydra.utils.instantiate(cfg.dataset)
    with pytest.raises(train_script.UserError, match="two NAC-ME callbacks are named 'nac_me'"):
        train_script.build_callbacks(cfg, dm)


def test_unknown_group_option_is_a_hydra_error(compose_cfg):
    with pytest.raises(MissingConfigException, match="dataset/imagenet"):
        compose_cfg(["dataset=imagenet"])


def test_hparams_follow_overrides(compose_cfg):
    cfg = compose_cfg(["model.lr=0.5", "dataset.batch_size=3"])
    assert cfg.hparams.lr == 0.5 and cfg.hparams.batch_size == 3
    assert cfg.hparams.arch == "mnist_cnn"


def test_unknown_group_option_is_one_line(train_script):
    def check(argv):
        return train_script.check_group_choices(argv, str(CONF))

    assert check(["dataset=pacs", "model=resnet18", "trainer.max_steps=3"]) is None
    assert (
        check(["-m", "dataset=pacs,vlcs", "logger=[csv,wandb]", "+extra_nac.x={alpha: 1}"]) is None
    )
    assert check(["hydra/launcher=submitit_slurm", "experiment=none"]) is None
    assert check(["trainer=tpu"]) == "unknown trainer 'tpu'; choose one of: cpu, ddp, default, gpu"
    assert check(["-m", "dataset=pacs,imagenet"]).startswith("unknown dataset 'imagenet'")


@pytest.mark.parametrize("dataset", ["pacs", "vlcs", "office_home", "terra_incognita"])
def test_data_root_alias(compose_cfg, dataset):
    """`data.root=DIR` (the README's spelling) and `dataset.root=DIR` both set the data root."""
    assert compose_cfg([f"dataset={dataset}", "data.root=/data/x"]).dataset.root == "/data/x"
    assert compose_cfg([f"dataset={dataset}", "dataset.root=/data/y"]).dataset.root == "/data/y"


def test_grid_scores_stay_off_the_progress_bar(compose_cfg, train_script):
    from nac_lightning import NACMECallback

    cfg = compose_cfg(["nac_grid.alpha=[1,10]", "nac_grid.r=[5]"])
    dm = train_script.build_datamodule(cfg)
    nac = [c for c in train_script.build_callbacks(cfg, dm) if isinstance(c, NACMECallback)]
    assert [(c.name, c.prog_bar) for c in nac] == [
        ("nac_me", True),
        ("nac_me_a1_r5", False),
        ("nac_me_a10_r5", False),
    ]
