"""Datasets: layout validation, environment order, class mapping, transforms, embedded digits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nac_lightning.data import (
    DATASETS,
    PACS,
    CorruptImageError,
    DatasetLayoutError,
    OfficeHome,
    RotatedDigits,
    TerraIncognita,
    eval_transform,
    get_dataset_class,
    train_transform,
)

IMAGE_DATASETS = ["pacs", "vlcs", "office_home", "terra_incognita"]


def test_registry_names():
    assert set(DATASETS) == {"pacs", "vlcs", "office_home", "terra_incognita", "rotated_digits"}
    assert get_dataset_class("OfficeHome") is OfficeHome
    assert get_dataset_class("terra-incognita") is TerraIncognita
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*pacs"):
        get_dataset_class("mnist")


@pytest.mark.parametrize("name", IMAGE_DATASETS)
def test_environment_order_and_classes(make_tree, name):
    root = make_tree(name, images_per_class=1)
    data = get_dataset_class(name)(root)
    assert data.environments == sorted(data.environments) == list(data.ENVIRONMENTS)
    assert len(data) == 4
    assert data.num_classes == len(data.classes)
    assert data.input_shape == (3, 224, 224)
    for env_name, env in zip(data.environments, data.datasets):
        assert len(env) == data.num_classes
        # every sample's label is the index of its class folder, and it lives in its env folder
        for path, label in env.samples:
            p = Path(path)
            assert p.parent.parent.name == env_name
            assert data.classes[label] == p.parent.name


def test_expected_environment_names():
    assert PACS.ENVIRONMENTS == ("art_painting", "cartoon", "photo", "sketch")
    assert get_dataset_class("vlcs").ENVIRONMENTS == ("Caltech101", "LabelMe", "SUN09", "VOC2007")
    assert OfficeHome.ENVIRONMENTS == ("Art", "Clipart", "Product", "Real World")
    assert TerraIncognita.ENVIRONMENTS == (
        "location_100",
        "location_38",
        "location_43",
        "location_46",
    )


def test_class_mapping_consistent_when_an_environment_lacks_a_class(make_tree):
    root = make_tree("pacs", images_per_class=1)
    shutil.rmtree(root / "PACS" / "cartoon" / "dog")  # "dog" is class 0 elsewhere
    with pytest.warns(UserWarning, match=r"'cartoon'.*lacks class folders \['dog'\]"):
        data = PACS(root)
    cartoon = data.datasets[1]
    assert cartoon.class_to_idx == data.datasets[0].class_to_idx
    assert {label for _, label in cartoon.samples} == set(range(1, 7))
    elephant = [label for path, label in cartoon.samples if "elephant" in path]
    assert elephant == [1]


def test_getitem_returns_pil_and_label(make_tree):
    data = PACS(make_tree("pacs", images_per_class=1))
    image, label = data[2][3]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert label == 3


# ----------------------------------------------------------------------------- errors
def test_missing_root_names_layout_and_download_command(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"root=None") as info:
        PACS(None)
    assert "PACS/{art_painting,cartoon,photo,sketch}/<class>/<image>" in str(info.value)
    assert "nac-download pacs --root" in str(info.value)
    with pytest.raises(DatasetLayoutError, match=r"does not exist") as info:
        PACS(tmp_path / "nowhere")
    assert "nac-download pacs" in str(info.value)


def test_missing_dataset_folder(tmp_path):
    (tmp_path / "VLCS").mkdir()
    with pytest.raises(DatasetLayoutError) as info:
        OfficeHome(tmp_path)
    msg = str(info.value)
    assert "office_home" in msg and "not found" in msg and "['VLCS']" in msg
    assert "{Art,Clipart,Product,Real World}" in msg
    assert f"nac-download office_home --root {tmp_path}" in msg


def test_wrong_environment_folders_found_vs_expected(make_tree):
    root = make_tree("pacs", images_per_class=1)
    (root / "PACS" / "photo").rename(root / "PACS" / "photos")
    with pytest.raises(DatasetLayoutError) as info:
        PACS(root)
    msg = str(info.value)
    assert "found ['art_painting', 'cartoon', 'photos', 'sketch']" in msg
    assert "expected ['art_painting', 'cartoon', 'photo', 'sketch']" in msg
    assert "missing ['photo'], unexpected ['photos']" in msg


def test_hidden_folders_are_ignored(make_tree):
    root = make_tree("vlcs", images_per_class=1)
    (root / "VLCS" / ".ipynb_checkpoints").mkdir()
    assert get_dataset_class("vlcs")(root).environments[0] == "Caltech101"


def test_wrong_classes(make_tree):
    root = make_tree("terra_incognita", images_per_class=1)
    for env in TerraIncognita.ENVIRONMENTS:
        (root / "terra_incognita" / env / "cat").rename(root / "terra_incognita" / env / "cats")
    with pytest.raises(DatasetLayoutError, match=r"class folders .* do not match.*'cats'"):
        TerraIncognita(root)
    root2 = make_tree("office_home", images_per_class=1, classes=["a", "b"])
    with pytest.raises(DatasetLayoutError, match=r"found 2 classes.*expected 65 classes"):
        OfficeHome(root2)


def test_environment_without_images(make_tree):
    root = make_tree("pacs", images_per_class=1)
    for f in (root / "PACS" / "sketch").rglob("*.*"):
        f.unlink()
    with pytest.raises(DatasetLayoutError, match=r"sketch' of 'pacs' holds no images"):
        PACS(root)


def test_corrupt_image_error_names_the_file(make_tree):
    root = make_tree("pacs", images_per_class=1)
    bad = root / "PACS" / "photo" / "horse" / "img_0.png"
    bad.write_bytes(b"this is not a png")
    truncated = root / "PACS" / "photo" / "house" / "img_0.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    data = PACS(root)
    photo = data.datasets[2]
    for path in (bad, truncated):
        index = [i for i, (p, _) in enumerate(photo.samples) if p == str(path)][0]
        with pytest.raises(CorruptImageError, match=str(path)):
            photo[index]


# ------------------------------------------------------------------------- transforms
def test_eval_and_train_transforms():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), np.uint8))
    x = eval_transform()(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # ImageNet normalization: a white image maps to (1 - mean) / std
    white = eval_transform(32)(Image.new("RGB", (5, 7), (255, 255, 255)))
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(white[:, 0, 0], expected)
    torch.testing.assert_close(eval_transform()(image), x)  # deterministic
    aug = train_transform()
    a, b = aug(image), aug(image)
    assert a.shape == b.shape == (3, 224, 224)
    assert not torch.equal(a, b)  # random augmentation


def test_image_size_option(make_tree):
    data = PACS(make_tree("pacs", images_per_class=1), image_size=32)
    assert data.input_shape == (3, 32, 32)
    assert data.eval_transform()(data[0][0][0]).shape == (3, 32, 32)
    assert data.train_transform(augment=True)(data[0][0][0]).shape == (3, 32, 32)


# ---------------------------------------------------------------------- rotated digits
def test_rotated_digits_embedded():
    from sklearn.datasets import load_digits

    data = RotatedDigits()
    assert data.environments == ["0", "15", "30", "45", "60", "75"]
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    sizes = [len(env) for env in data.datasets]
    assert sizes == [300, 300, 300, 299, 299, 299]
    # disjoint partition of the 1,797 bundled digits: per-class counts add up exactly
    labels = torch.cat([env.tensors[1] for env in data.datasets])
    assert torch.equal(
        torch.bincount(labels, minlength=10),
        torch.from_numpy(np.bincount(load_digits().target, minlength=10)),
    )
    for env in data.datasets:
        x, y = env.tensors
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.5
    # unrotated digits stay inside MNIST's central 20x20 box; rotated ones leave it
    x0, x45 = data.datasets[0].tensors[0], data.datasets[3].tensors[0]
    box = torch.zeros(28, 28, dtype=torch.bool)
    box[4:24, 4:24] = True
    assert x0[:, 0, ~box].abs().max() == 0
    assert x45[:, 0, ~box].abs().max() > 0.2
    # fixed shuffle: deterministic, and the seed changes it
    torch.testing.assert_close(RotatedDigits().datasets[2].tensors[0], data.datasets[2].tensors[0])
    assert not torch.equal(
        RotatedDigits(shuffle_seed=1).datasets[0].tensors[1], data.datasets[0].tensors[1]
    )


def test_rotated_digits_shift_grows_with_angle():
    """Labels match images, and the domain shift grows with the rotation angle."""
    data = RotatedDigits()
    x0, y0 = data.datasets[0].tensors
    centroids = torch.stack([x0[y0 == k].flatten(1).mean(0) for k in range(10)])

    def accuracy(env: int) -> float:
        x, y = data.datasets[env].tensors
        return (torch.cdist(x.flatten(1), centroids).argmin(1) == y).float().mean().item()

    acc = [accuracy(e) for e in range(6)]
    assert acc[0] > 0.85
    assert acc[0] > acc[1] > acc[3] > acc[5]
    assert acc[5] < 0.4
