"""Resume through train.py: a crashed run resumed from last.ckpt ends as if never interrupted."""

import json

import pytest

from nac_lightning.results import read_results

COMMON = [
    "logger=none",
    "~callbacks.rich_progress_bar",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "callbacks.nac_me.alpha=10",
    "callbacks.nac_me.r=5",
    "test=false",
    # validations (and last.ckpt) at epoch ends, so the resumed epochs draw the same batches
    "dataset.steps_per_epoch=4",
    "trainer.val_check_interval=4",
    "trainer.max_steps=16",
]


def test_resumed_run_equals_uninterrupted_run(compose_cfg, train_script, tmp_path):
    full = tmp_path / "full"
    train_script.run(compose_cfg(COMMON, output_dir=full))

    part = tmp_path / "part"
    crash = ["+callbacks.crash._target_=crash_callback.CrashAt", "+callbacks.crash.step=10"]
    with pytest.raises(RuntimeError, match="simulated crash at step 10"):
        train_script.run(compose_cfg([*COMMON, *crash], output_dir=part))
    assert [r["step"] for r in read_results(part / "results.jsonl")] == [4, 8]
    resume = [*COMMON, f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}"]
    train_script.run(compose_cfg(resume, output_dir=part))

    a, b = read_results(full / "results.jsonl"), read_results(part / "results.jsonl")
    assert [r["step"] for r in b] == [r["step"] for r in a] == [4, 8, 12, 16]  # no dup, no gap
    for ra, rb in zip(a, b):
        for key in ("nac_me", "val_acc", "ood_acc", "oracle_acc"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-6), (ra["step"], key)
    # the callback's own history (kept in the checkpoint) continues too
    hist_a = json.loads((full / "nac_me_history.json").read_text())
    hist_b = json.loads((part / "nac_me_history.json").read_text())
    assert [h["global_step"] for h in hist_b] == [4, 8, 12, 16]
    assert [h["nac_me"] for h in hist_b] == pytest.approx([h["nac_me"] for h in hist_a], abs=1e-6)
    # and the same checkpoint is selected
    sel_a = json.loads((full / "summary.json").read_text())["selection"]
    sel_b = json.loads((part / "summary.json").read_text())["selection"]
    assert sel_a["nac_me"]["step"] == sel_b["nac_me"]["step"]
    assert sel_a["val_acc"]["step"] == sel_b["val_acc"]["step"]
    ckpts = lambda d: sorted(p.name for p in (d / "checkpoints").glob("*.ckpt"))  # noqa: E731
    assert ckpts(full) == ckpts(part)
