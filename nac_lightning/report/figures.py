"""PNG figures (matplotlib, Agg backend): NAC-ME vs OOD accuracy, and per-checkpoint curves."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from nac_lightning.report.methods import TARGET
from nac_lightning.report.records import Run, domain_label, environment_names
from nac_lightning.report.summary import DatasetSummary
from nac_lightning.selection import as_float

__all__ = ["safe_name", "scatter_figure", "curves_figure", "write_figures"]

LINESTYLES = ("-", "--", ":", "-.")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _series(run: Run, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for record in run.records:
        value = as_float(record.get(key))
        if value is not None:
            steps.append(record["step"])
            values.append(value)
    return steps, values


def _seed_colors(runs: Sequence[Run]):
    plt = _pyplot()
    seeds = sorted({run.trial_seed for run in runs})
    cmap = plt.get_cmap("tab10")
    return {seed: cmap(i % 10) for i, seed in enumerate(seeds)}


def scatter_figure(runs: Sequence[Run], title: str, path: Path, key: str = "nac_me") -> bool:
    """Scatter of ``key`` vs OOD accuracy over all checkpoints of ``runs``, colored by trial
    seed. Returns False (writes nothing) when no checkpoint has both values."""
    plt = _pyplot()
    colors = _seed_colors(runs)
    points: dict[int, tuple[list[float], list[float]]] = {}
    for run in runs:
        xs, ys = points.setdefault(run.trial_seed, ([], []))
        for record in run.records:
            x, y = as_float(record.get(key)), as_float(record.get(TARGET))
            if x is not None and y is not None:
                xs.append(x)
                ys.append(100.0 * y)
    if not any(xs for xs, _ in points.values()):
        return False
    fig, ax = plt.subplots(figsize=(5, 4))
    for seed, (xs, ys) in sorted(points.items()):
        if xs:
            ax.scatter(xs, ys, s=18, alpha=0.8, color=colors[seed], label=f"seed {seed}")
    ax.set_xlabel(key)
    ax.set_ylabel("OOD accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def curves_figure(runs: Sequence[Run], title: str, path: Path, key: str = "nac_me") -> bool:
    """Per-checkpoint curves of ``key``, validation accuracy and OOD accuracy vs step, one line
    per run (color: trial seed, line style: hparams). Returns False when there is nothing."""
    plt = _pyplot()
    colors = _seed_colors(runs)
    hparams = sorted({run.hparams_id for run in runs})
    panels = [
        (key, key, 1.0),
        ("val_acc", "validation accuracy (%)", 100.0),
        (TARGET, "OOD accuracy (%)", 100.0),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 7), sharex=True)
    drawn = False
    for ax, (name, label, scale) in zip(axes, panels):
        for run in runs:
            steps, values = _series(run, name)
            if not steps:
                continue
            drawn = True
            style = LINESTYLES[hparams.index(run.hparams_id) % len(LINESTYLES)]
            ax.plot(
                steps,
                [scale * v for v in values],
                style,
                marker=".",
                color=colors[run.trial_seed],
                label=f"seed {run.trial_seed}"
                + (f", hparams {run.hparams_id}" if len(hparams) > 1 else ""),
            )
        ax.set_ylabel(label)
    axes[-1].set_xlabel("step")
    axes[0].set_title(title)
    handles, labels = axes[-1].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        axes[-1].legend(unique.values(), unique.keys(), fontsize="small")
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def write_figures(
    summaries: Sequence[DatasetSummary], out_dir: Path, key: str = "nac_me"
) -> list[Path]:
    """Write a scatter and a curves PNG per dataset and test domain; return the paths.

    ``key`` is the NAC-ME criterion plotted (e.g. a tuned grid entry such as ``nac_me_a10_r20``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for summary in summaries:
        names = environment_names(summary.runs)
        for envs in sorted({run.test_envs for run in summary.runs}):
            runs = [run for run in summary.runs if run.test_envs == envs]
            domain = domain_label(envs, names)
            stem = f"{safe_name(summary.dataset)}_{safe_name(domain)}"
            title = f"{summary.dataset}, test domain {domain}"
            scatter = out_dir / f"{stem}_{safe_name(key)}_vs_ood.png"
            if scatter_figure(runs, title, scatter, key=key):
                written.append(scatter)
            curves = out_dir / f"{stem}_curves.png"
            if curves_figure(runs, title, curves, key=key):
                written.append(curves)
    return written
