"""Loading results.jsonl: folders, validation errors, truncated and early-stopped runs."""

import json

import pytest
from report_helpers import A0_H0, make_records, write_jsonl

from nac_lightning.report.records import (
    ReportError,
    domain_label,
    environment_names,
    find_results,
    load_run,
    load_runs,
)


def test_find_results_recurses_and_deduplicates(sweep):
    files = find_results([sweep])
    assert len(files) == 4
    assert all(f.name == "results.jsonl" for f in files)
    # a file reached twice (directly and through its folder) is loaded once
    assert len(find_results([sweep, files[0]])) == 4


def test_missing_path_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(ReportError, match="no such file or folder"):
        find_results([tmp_path / "nope"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ReportError, match="no results.jsonl found"):
        find_results([tmp_path / "empty"])
    empty_file = tmp_path / "run" / "results.jsonl"
    empty_file.parent.mkdir()
    empty_file.write_text("\n")
    with pytest.raises(ReportError, match="empty file"):
        load_run(empty_file)


def test_load_run_sorts_by_step_and_keeps_identity(tmp_path):
    records = make_records(A0_H0, trial_seed=3, hparams_id="abc")
    path = write_jsonl(tmp_path, list(reversed(records)))
    run = load_run(path)
    assert [r["step"] for r in run.records] == [0, 10, 20]
    assert run.identity == ("Toy", (0,), 3, "abc")
    assert run.group == ("Toy", (0,), 3)
    assert run.records[0]["_line"] == 3
    assert not run.flagged


def test_hparams_id_defaults_to_a_stable_hash_of_hparams(tmp_path):
    records = make_records(A0_H0)
    for r in records:
        del r["hparams_id"]
    a = load_run(write_jsonl(tmp_path / "a", records))
    b = load_run(write_jsonl(tmp_path / "b", records))
    assert a.hparams_id == b.hparams_id != "default"
    for r in records:
        del r["hparams"]
    assert load_run(write_jsonl(tmp_path / "c", records)).hparams_id == "default"


def test_truncated_last_line_is_tolerated_and_flagged(tmp_path):
    path = write_jsonl(tmp_path, make_records(A0_H0), tail='{"step": 30, "epo')
    run = load_run(path)
    assert run.truncated
    assert len(run.records) == 3
    assert any("truncated last line 4" in f for f in run.flags)


def test_malformed_line_names_file_and_line(tmp_path):
    lines = [json.dumps(r) for r in make_records(A0_H0)]
    lines.insert(1, "{not json")
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=r"results\.jsonl:2: malformed JSON"):
        load_run(path)
    # a malformed final line that is complete (ends with a newline) is not a crash: error
    path.write_text("\n".join([*lines[:1], *lines[2:], "{oops}"]) + "\n")
    with pytest.raises(ReportError, match=r"results\.jsonl:4: malformed JSON"):
        load_run(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("ood_acc"), r":2: missing required key\(s\) ood_acc"),
        (lambda r: (r.pop("dataset"), r.pop("trial_seed")), "dataset, trial_seed"),
        (lambda r: r.update(step="10"), "'step' must be an integer"),
        (lambda r: r.update(test_envs=[]), "'test_envs' must be a non-empty list"),
        (lambda r: r.update(val_acc="high"), "'val_acc' must be a number or null"),
        (lambda r: r.update(trial_seed=7), r":2: trial_seed 0 -> 7 within one file"),
    ],
)
def test_invalid_records_are_errors(tmp_path, change, message):
    records = make_records(A0_H0)
    change(records[1])
    with pytest.raises(ReportError, match=message):
        load_run(write_jsonl(tmp_path, records))


def test_null_values_are_accepted(tmp_path):
    records = make_records(A0_H0)
    records[0]["nac_me"] = None
    records[1]["oracle_acc"] = None
    assert load_run(write_jsonl(tmp_path, records)).records[0]["nac_me"] is None


def test_duplicate_steps_keep_the_later_line_and_are_flagged(tmp_path):
    records = make_records(A0_H0)
    again = dict(records[1], ood_acc=0.99)
    run = load_run(write_jsonl(tmp_path, [*records, again]))
    assert [r["step"] for r in run.records] == [0, 10, 20]
    assert run.records[1]["ood_acc"] == 0.99
    assert any("duplicate step" in f for f in run.flags)


def test_stopped_early_runs_are_flagged_and_used(tmp_path):
    write_jsonl(tmp_path / "full", make_records(A0_H0, trial_seed=0))
    write_jsonl(tmp_path / "short", make_records(A0_H0[:2], trial_seed=1))
    # another hparams setting with fewer validations is its own group: not flagged
    write_jsonl(tmp_path / "other", make_records(A0_H0[:1], trial_seed=0, hparams_id="h9"))
    runs = {(r.trial_seed, r.hparams_id): r for r in load_runs([tmp_path])}
    assert not runs[(0, "h0")].flagged
    assert not runs[(0, "h9")].flagged
    short = runs[(1, "h0")]
    assert len(short.records) == 2
    assert short.flags == [
        "stopped early: 2 of 3 validations (last step 10); used up to its last line"
    ]


def test_the_same_run_twice_is_an_error(tmp_path):
    write_jsonl(tmp_path / "a", make_records(A0_H0))
    write_jsonl(tmp_path / "copy" / "a", make_records(A0_H0))
    with pytest.raises(ReportError, match="the same run .* is in both"):
        load_runs([tmp_path])


def test_environment_names_and_labels(tmp_path):
    run = load_run(write_jsonl(tmp_path / "a", make_records(A0_H0)))
    assert environment_names([run]) == ["A", "B"]
    assert domain_label((1,), ["A", "B"]) == "B"
    assert domain_label((0, 1), ["A", "B"]) == "A+B"
    assert domain_label((2,), None) == "env2"
    bare = make_records(A0_H0)
    for r in bare:
        del r["args"]
    assert environment_names([load_run(write_jsonl(tmp_path / "b", bare))]) is None
