"""Featurizers and the ERM LightningModule, on real tensors and a real Trainer."""

import lightning.pytorch as pl
import pytest
import torch
import torchvision
from torch import nn

from nac_lightning.models import MNISTCNN, ERMModule, ResNetFeaturizer, build_featurizer


def _trainer(**kwargs):
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def test_mnist_cnn_matches_domainbed_layout():
    net = MNISTCNN((1, 28, 28))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 128, 128]
    assert [c.stride for c in convs] == [(1, 1), (2, 2), (1, 1), (1, 1)]
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert [n.num_groups for n in norms] == [8, 8, 8, 8]
    out = net(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 128) and net.n_outputs == 128
    # three-channel inputs of another size work too (adaptive pooling)
    assert MNISTCNN((3, 16, 16))(torch.randn(2, 3, 16, 16)).shape == (2, 128)


@pytest.mark.parametrize(("arch", "n"), [("resnet18", 512), ("resnet50", 2048)])
def test_resnet_featurizer_drops_fc(arch, n):
    net = ResNetFeaturizer(arch, (3, 32, 32), freeze_bn=False)
    assert isinstance(net.network.fc, nn.Identity)
    assert net.n_outputs == n
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, n)


def test_resnet_featurizer_other_channel_count_copies_rgb_weights():
    torch.manual_seed(0)
    rgb = ResNetFeaturizer("resnet18", (3, 32, 32))
    torch.manual_seed(0)
    gray = ResNetFeaturizer("resnet18", (1, 32, 32))
    five = ResNetFeaturizer("resnet18", (5, 32, 32))
    assert gray.network.conv1.in_channels == 1
    torch.testing.assert_close(gray.network.conv1.weight[:, 0], rgb.network.conv1.weight[:, 0])
    w = five.network.conv1.weight
    torch.testing.assert_close(w[:, 3], w[:, 0])
    torch.testing.assert_close(w[:, 4], w[:, 1])
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 512)


def test_frozen_batchnorm_keeps_running_stats():
    frozen = ResNetFeaturizer("resnet18", (3, 32, 32), freeze_bn=True).train()
    free = ResNetFeaturizer("resnet18", (3, 32, 32), freeze_bn=False).train()
    bns = [m for m in frozen.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert frozen.network.conv1.training  # everything else trains
    before = bns[0].running_mean.clone()
    free_before = free.network.bn1.running_mean.clone()
    x = torch.randn(4, 3, 32, 32) * 3 + 1
    frozen(x)
    free(x)
    torch.testing.assert_close(bns[0].running_mean, before)
    assert not torch.allclose(free.network.bn1.running_mean, free_before)
    # BatchNorm parameters still learn (DomainBed freezes statistics, not affine weights)
    assert all(p.requires_grad for p in bns[0].parameters())


def test_weights_path_loads_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(123)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(7)  # a different init, overwritten by the file
    net = ResNetFeaturizer("resnet18", (3, 32, 32), weights_path=path)
    torch.testing.assert_close(net.network.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(
        net.network.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var
    )
    # a checkpoint-style {"state_dict": ...} with DDP "module." prefixes works as well
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    net2 = ResNetFeaturizer("resnet18", (3, 32, 32), weights_path=wrapped)
    torch.testing.assert_close(net2.network.conv1.weight, source.conv1.weight)


def test_weights_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights_path"):
        ResNetFeaturizer("resnet18", weights_path=tmp_path / "nope.pth")
    wrong = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), wrong)
    with pytest.raises(ValueError, match="does not match the ResNet: missing keys"):
        ResNetFeaturizer("resnet18", weights_path=wrong)


def test_build_featurizer_errors():
    with pytest.raises(ValueError, match="unknown model arch 'vgg'.*resnet18"):
        build_featurizer("vgg", (3, 32, 32))
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_featurizer("mnist_cnn", (1, 28, 28), pretrained=True)
    with pytest.raises(ValueError, match="unknown ResNet arch"):
        ResNetFeaturizer("resnet34")


def test_erm_module_structure_and_optimizer():
    model = ERMModule(
        num_classes=7,
        input_shape=(3, 32, 32),
        arch="resnet18",
        dropout=0.3,
        lr=3e-5,
        weight_decay=1e-4,
    )
    assert isinstance(model.classifier, nn.Linear)
    assert (model.classifier.in_features, model.classifier.out_features) == (512, 7)
    assert model.dropout.p == pytest.approx(0.3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-5)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1e-4)
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n_params
    with pytest.raises(ValueError, match="dropout"):
        ERMModule(num_classes=3, arch="mnist_cnn", input_shape=(1, 8, 8), dropout=1.0)


def test_erm_logs_named_accuracies_that_match_the_model(digits, make_loader):
    x, y = digits
    model = ERMModule(
        num_classes=10,
        input_shape=(1, 8, 8),
        arch="mnist_cnn",
        lr=1e-3,
        val_dataloader_names=["val", "env0_in", "env0_out", "env1_in"],
        ood_idx=[1, 3],
        oracle_idx=[2],
    )
    train = make_loader(x[:1200], y[:1200], shuffle=True)
    vals = [
        make_loader(x[a:b], y[a:b], batch_size=50)
        for a, b in [(1200, 1400), (1400, 1600), (1600, 1700), (1700, 1797)]
    ]
    trainer = _trainer(
        max_steps=40, val_check_interval=20, check_val_every_n_epoch=None, num_sanity_val_steps=0
    )
    trainer.fit(model, train, vals)
    metrics = trainer.callback_metrics
    model.eval()
    with torch.no_grad():
        expected = [
            (model(x[a:b]).argmax(1) == y[a:b]).float().mean().item()
            for a, b in [(1200, 1400), (1400, 1600), (1600, 1700), (1700, 1797)]
        ]
    for name, acc in zip(["val", "env0_in", "env0_out", "env1_in"], expected):
        assert metrics[f"{name}_acc"].item() == pytest.approx(acc, abs=1e-6)
    assert metrics["ood_acc"].item() == pytest.approx((expected[1] + expected[3]) / 2, abs=1e-6)
    assert metrics["oracle_acc"].item() == pytest.approx(expected[2], abs=1e-6)
    assert "train_loss" in metrics and "train_acc" in metrics
    assert metrics["val_acc"].item() > 0.5  # ERM learns the digits in 40 steps

    model.test_prefix = "test_sel/"
    model.hparams.test_dataloader_names = ["env0_in", "env1_in"]
    out = trainer.test(model, [vals[1], vals[3]], verbose=False)[0]
    assert out["test_sel/env0_in_acc"] == pytest.approx(expected[1], abs=1e-6)
    assert out["test_sel/acc"] == pytest.approx((expected[1] + expected[3]) / 2, abs=1e-6)


def test_erm_default_names_without_a_datamodule(digits, make_loader):
    x, y = digits
    model = ERMModule(num_classes=10, input_shape=(1, 8, 8), arch="mnist_cnn")
    trainer = _trainer(max_steps=1, num_sanity_val_steps=0, limit_train_batches=1)
    trainer.fit(
        model,
        make_loader(x[:64], y[:64]),
        [make_loader(x[:64], y[:64]), make_loader(x[64:128], y[64:128])],
    )
    assert {"val_acc", "val_1_acc"} <= set(trainer.callback_metrics)
    assert "ood_acc" not in trainer.callback_metrics
    bad = ERMModule(
        num_classes=10, input_shape=(1, 8, 8), arch="mnist_cnn", val_dataloader_names=["val"]
    )
    with pytest.raises(ValueError, match="1 names"):
        _trainer(max_steps=1, num_sanity_val_steps=0).fit(
            bad,
            make_loader(x[:64], y[:64]),
            [make_loader(x[:64], y[:64]), make_loader(x[:64], y[:64])],
        )


def test_erm_checkpoint_roundtrip(tmp_path, digits):
    model = ERMModule(num_classes=10, input_shape=(1, 8, 8), arch="mnist_cnn", dropout=0.2)
    trainer = _trainer(max_steps=0)
    trainer.strategy.connect(model)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = ERMModule.load_from_checkpoint(path)
    x = digits[0][:4]
    model.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.hparams.dropout == pytest.approx(0.2)
