"""train.py end to end: smoke runs per dataset, the default embedded run, resume, multirun, errors."""

import json
from pathlib import Path

import pytest
import torch
from train_helpers import image_tree, run_train

from nac_lightning.results import read_results

SHORT = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.num_sanity_val_steps=0",
    "callbacks.nac_me.r=5",
    "trainer.enable_model_summary=false",
]


def _checkpoints(run_dir):
    return sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("*.ckpt"))


def _assert_run_outputs(run_dir, steps, dataset, test_envs):
    records = read_results(Path(run_dir) / "results.jsonl")
    assert [r["step"] for r in records] == steps
    for r in records:
        assert r["dataset"] == dataset and r["test_envs"] == test_envs
        assert isinstance(r["nac_me"], float) and 0.0 <= r["nac_me"] <= 1.0
        for key in ("val_acc", "ood_acc", "oracle_acc", f"env{test_envs[0]}_in_acc"):
            assert 0.0 <= r[key] <= 1.0
        assert len(r["hparams_id"]) == 32 and r["args"]["dataset"]["dataset"] == dataset
        assert len(r["args"]["environments"]) >= 4  # names for the report's columns
    names = _checkpoints(run_dir)
    assert "last.ckpt" in names
    assert any(n.startswith("nac_me-step") for n in names)
    assert any(n.startswith("val_acc-step") for n in names)
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert set(summary["tests"]) == {"nac_me", "val_acc"}
    for test in summary["tests"].values():
        assert 0.0 <= test["test_acc"] <= 1.0 and test["step"] in steps
    return records, summary


@pytest.mark.parametrize(
    ("dataset", "per_class", "model"),
    [
        # the small CNN keeps these fast on a shared CPU; configs/instantiation of the ResNets
        # are tested in test_train_configs.py, one full ResNet-50 run is marked slow
        ("pacs", 3, "resnet18"),
        ("vlcs", 3, "mnist_cnn"),
        ("office_home", 1, "mnist_cnn"),
        ("terra_incognita", 2, "mnist_cnn"),
        pytest.param("pacs", 3, "resnet50", marks=pytest.mark.slow),  # the reference network
    ],
)
def test_smoke_run_per_dataset(compose_cfg, train_script, tmp_path, dataset, per_class, model):
    root = image_tree(tmp_path / "data", dataset, per_class=per_class)
    run_dir = tmp_path / "run"
    cfg = compose_cfg(
        [
            f"dataset={dataset}",
            f"dataset.root={root}",
            "dataset.test_envs=[2]",
            "dataset.image_size=32",
            "dataset.batch_size=2",
            "dataset.num_workers=0",
            f"model={model}",
            "model.pretrained=false",
            "logger=csv",
            "~callbacks.rich_progress_bar",
            "callbacks.nac_me.correct_only=false",  # random images: keep every sample
            *SHORT,
        ],
        output_dir=run_dir,
    )
    summary = train_script.run(cfg)
    _assert_run_outputs(run_dir, [2, 4], dataset, [2])
    assert summary["dataset"] == dataset and summary["n_checkpoints"] == 2
    assert (run_dir / "csv" / "metrics.csv").exists()
    # the NAC-ME-selected checkpoint is the one with the highest logged nac_me
    records = read_results(run_dir / "results.jsonl")
    best = max(records, key=lambda r: (r["nac_me"], -r["step"]))
    assert summary["selection"]["nac_me"]["step"] == best["step"]
    assert summary["tests"]["nac_me"]["step"] == best["step"]


def test_resume_continues_results_without_duplicates(compose_cfg, train_script, tmp_path):
    run_dir = tmp_path / "run"
    base = ["logger=none", "~callbacks.rich_progress_bar", *SHORT]
    train_script.run(compose_cfg(base, output_dir=run_dir))
    first = read_results(run_dir / "results.jsonl")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resumed = [*base, "trainer.max_steps=8", f"ckpt_path={ckpt}", "test=false"]
    train_script.run(compose_cfg(resumed, output_dir=run_dir))
    records = read_results(run_dir / "results.jsonl")
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert records[:2] == first  # kept as written, not re-validated
    names = _checkpoints(run_dir)
    assert len(names) == 3 and "last.ckpt" in names  # one per monitor, no stale files
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 8


def test_bad_input_raises_one_line_before_writing(compose_cfg, train_script, tmp_path):
    run_dir = tmp_path / "run"
    cases = {
        "out of range": (["dataset.test_envs=[6]"], "out of range"),
        "unknown name": (["dataset.dataset=imagenet"], "unknown dataset 'imagenet'"),
        "bad alpha": (["callbacks.nac_me.alpha=-1"], "alpha must be a positive number"),
        "bad arch": (["model.arch=vgg"], "unknown model arch 'vgg'"),
        "no checkpoint": ([f"ckpt_path={tmp_path}/nope.ckpt"], "no checkpoint at"),
        "no validation": (["trainer.max_steps=3", "trainer.val_check_interval=5"], "no validation"),
    }
    for overrides, message in cases.values():
        with pytest.raises(train_script.UserError, match=message) as info:
            train_script.run(compose_cfg(overrides, output_dir=run_dir))
        assert "\n" not in str(info.value)
    assert not run_dir.exists() or not list(run_dir.rglob("results.jsonl"))


def test_default_embedded_run(tmp_path):
    """`python train.py`, shortened: results, both checkpoints, the table, a W&B offline run."""
    run_dir = tmp_path / "run"
    proc = run_train(
        [*SHORT, "nac_grid.alpha=[1,10]", "trial_seed=1", f"hydra.run.dir={run_dir}"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records, summary = _assert_run_outputs(run_dir, [2, 4], "rotated_digits", [0])
    assert {"nac_me_a1_r5", "nac_me_a10_r5"} <= set(records[0])
    assert records[0]["trial_seed"] == 1 and records[0]["args"]["trainer"]["max_steps"] == 4
    assert records[0]["args"]["callbacks"]["nac_me"]["r"] == 5
    # the final table on stdout, also saved
    assert "| NAC-ME (nac_me) |" in proc.stdout and "| validation (val_acc) |" in proc.stdout
    assert "Rank correlation with OOD accuracy" in proc.stdout
    assert (run_dir / "summary.md").read_text().strip() in proc.stdout
    # W&B offline run inside the run directory, with its data file; CSV alongside
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1 and list(wandb_runs[0].glob("*.wandb"))
    assert (run_dir / "csv" / "metrics.csv").exists()
    assert (run_dir / "nac_me_report.json").exists()
    assert not (tmp_path / "outputs").exists()  # nothing outside the run dir


def test_multirun_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_train(
        [
            "-m",
            "dataset.test_envs=[1],[3]",
            "logger=csv",
            "~callbacks.rich_progress_bar",
            "trainer.max_steps=2",
            "trainer.val_check_interval=1",
            "trainer.num_sanity_val_steps=0",
            "callbacks.nac_me.r=5",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, env in (("0", 1), ("1", 3)):
        records = read_results(sweep / job / "results.jsonl")
        assert [r["step"] for r in records] == [1, 2]
        assert all(r["test_envs"] == [env] for r in records)
        assert f"env{env}_in_acc" in records[0]
    ids = {read_results(sweep / j / "results.jsonl")[0]["hparams_id"] for j in ("0", "1")}
    assert len(ids) == 1  # same hyperparameters across held-out domains


def test_missing_dataset_and_unknown_option_exit_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_train(
        ["dataset=pacs", f"dataset.root={tmp_path / 'nodata'}", f"hydra.run.dir={run_dir}"],
        tmp_path,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: dataset 'pacs'")
    assert "python -m nac_lightning.data.download pacs --root" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(tmp_path.rglob("results.jsonl")) and not list(tmp_path.rglob("*.ckpt"))

    run_dir = tmp_path / "run2"
    proc = run_train(["dataset=imagenet", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: unknown dataset 'imagenet'; choose one of: office_home, pacs, rotated_digits, "
        "terra_incognita, vlcs"
    )
    assert not run_dir.exists()  # refused before Hydra creates the run directory
