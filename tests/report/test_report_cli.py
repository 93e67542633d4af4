"""The report command line: files written, flagged partial runs, and user errors."""

import json
import subprocess
import sys

from report_helpers import A0_H0, A1_H0, make_records, write_jsonl

from nac_lightning.report.__main__ import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_cli_writes_tables_json_latex_and_figures(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--latex"]) == 0
    stdout = capsys.readouterr().out
    assert "## Dataset: Toy" in stdout
    assert "| training-domain validation | 45.0 ± 7.1 | 20.0 | 27.5 |" in stdout
    assert "DomainBed's oracle instead takes the last checkpoint" in stdout
    assert (out / "report.md").read_text() in stdout
    tex = (out / "report.tex").read_text()
    assert "\\begin{tabular}{lccc}" in tex and "45.0 $\\pm$ 7.1" in tex
    summary = json.loads((out / "report.json").read_text())
    (dataset,) = summary["datasets"]
    assert dataset["columns"] == ["A", "B"]
    val = next(r for r in dataset["rows"] if r["key"] == "val_acc")
    assert val["cells"]["A"]["mean"] == 45.0 or abs(val["cells"]["A"]["mean"] - 45.0) < 1e-9
    assert val["cells"]["A"]["values"] == {"0": 0.35, "1": 0.55}
    assert len(summary["runs"]) == 4
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == [
        "Toy_A_curves.png",
        "Toy_A_nac_me_vs_ood.png",
        "Toy_B_curves.png",
        "Toy_B_nac_me_vs_ood.png",
    ]
    for name in figures:
        assert (out / "figures" / name).read_bytes()[:8] == PNG_MAGIC


def test_cli_uses_and_flags_partial_runs(tmp_path, capsys):
    write_jsonl(tmp_path / "s0", make_records(A0_H0, trial_seed=0))
    # seed 1 crashed: two complete lines then half a line
    write_jsonl(tmp_path / "s1", make_records(A1_H0[:2], trial_seed=1), tail='{"step": 20,')
    out = tmp_path / "out"
    assert main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    # seed 0 picks step 20 (ood 0.45); seed 1 is used up to its last line: step 10 -> 0.55
    assert "| training-domain validation | 50.0 ± 3.5† | 50.0 ± 3.5† |" in captured.out
    assert "## Flagged runs" in captured.out
    assert "truncated last line 3 ignored" in captured.out
    assert "stopped early: 2 of 3 validations (last step 10)" in captured.out
    assert "warning" in captured.err and "s1" in captured.err
    flags = {
        r["trial_seed"]: r["flags"] for r in json.loads((out / "report.json").read_text())["runs"]
    }
    assert flags[0] == [] and len(flags[1]) == 2


def test_cli_extra_criteria(sweep, capsys):
    for path in sweep.rglob("results.jsonl"):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        write_jsonl(path, [dict(r, nac_me_a1_r50=r["step"] / 100) for r in records])
    assert main([str(sweep), "--criteria", "nac_me_a1_r50", "--no-figures"]) == 0
    stdout = capsys.readouterr().out
    # the latest step wins; the tie of h0 and h1 (same step) goes to the first hparams_id (h0),
    # unlike "last", which picks h1 by its last validation accuracy
    assert "| nac_me_a1_r50 | 52.5 ± 5.3 | 40.0 | 42.5 |" in stdout
    assert "| last | 60.0 ± 0.0 | 40.0 | 50.0 |" in stdout
    assert "| nac_me_a1_r50 rank corr. |" in stdout


def test_cli_user_errors_exit_nonzero_without_traceback(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    write_jsonl(bad, make_records(A0_H0), tail="garbage\n")
    cases = [
        ([str(tmp_path / "missing")], "no such file or folder"),
        ([str(tmp_path / "empty")], "no results.jsonl found"),
        ([str(bad)], "results.jsonl:4: malformed JSON"),
        ([str(bad / "results.jsonl"), "--criteria", "nope"], None),
    ]
    write_jsonl(tmp_path / "ok", make_records(A0_H0))
    cases[3] = ([str(tmp_path / "ok"), "--criteria", "nope"], "criterion 'nope'")
    for argv, message in cases:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.err.startswith("nac-report: error: ")
        assert message in captured.err
        assert "Traceback" not in captured.err
        assert captured.out == ""


def test_python_dash_m_entry_point(tmp_path):
    # the module entry point exits with the code main() returns
    cmd = [sys.executable, "-m", "nac_lightning.report", str(tmp_path / "nope")]
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2
    assert "no such file or folder" in failed.stderr and "Traceback" not in failed.stderr


def test_cli_figure_key_plots_another_criterion(tmp_path):
    records = [{**r, "nac_me_a1_r5": r["nac_me"] * 2} for r in make_records(A0_H0, trial_seed=0)]
    write_jsonl(tmp_path / "s0", records)
    out = tmp_path / "report"
    assert main([str(tmp_path / "s0"), "--out", str(out), "--figure-key", "nac_me_a1_r5"]) == 0
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert any(n.endswith("_nac_me_a1_r5_vs_ood.png") for n in names)
    assert not any(n.endswith("_nac_me_vs_ood.png") for n in names)
