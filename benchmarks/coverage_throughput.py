"""Histogram update throughput: NeuronCoverage (scatter, O(B*N)) vs the dense comparison.

The official code builds a (B, bins, N) boolean comparison of every state against every bin
edge; NeuronCoverage computes each state's bin and scatter-adds it. Both run side by side in
one process, on the same states, and the script prints states/s, the ratio and peak memory.

    python benchmarks/coverage_throughput.py                  # CPU, N=2048, B=256, bins 50 and 500
    python benchmarks/coverage_throughput.py --device cuda    # on a GPU

Peak memory: on CUDA, torch.cuda.max_memory_allocated; on CPU, the peak resident set size
increase of a fresh child process running one update alone (Linux: VmHWM after
resetting it through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from nac_lightning import NeuronCoverage


def dense_update(t_act: torch.Tensor, states: torch.Tensor, thresh: torch.Tensor) -> None:
    """The official estimator's update: compare against all bin edges at once."""
    hit = (states.unsqueeze(1) >= thresh[:-1].view(1, -1, 1)) & (
        states.unsqueeze(1) < thresh[1:].view(1, -1, 1)
    )
    t_act += hit.sum(dim=0)


def make_runner(method: str, n: int, bins: int, device: str):
    if method == "scatter":
        metric = NeuronCoverage(n, bins=bins, r=500).to(device)
        return metric.update, lambda: metric.counts
    thresh = torch.linspace(0, 1, bins + 1, device=device)
    t_act = torch.zeros(bins, n, dtype=torch.long, device=device)
    return (lambda s: dense_update(t_act, s, thresh)), lambda: t_act


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_method(method, n, b, bins, device, seconds, batches):
    update, _ = make_runner(method, n, bins, device)
    for s in batches[:2]:  # warm-up
        update(s)
    sync(device)
    iters, start = 0, time.perf_counter()
    while True:
        update(batches[iters % len(batches)])
        iters += 1
        if iters % 5 == 0:
            sync(device)
            if time.perf_counter() - start > seconds:
                break
    sync(device)
    return iters * b * n / (time.perf_counter() - start)  # states = samples x neurons


def peak_memory_mib(method, n, b, bins, device) -> float:
    if device.startswith("cuda"):
        states = torch.rand(b, n, device=device)
        update, _ = make_runner(method, n, bins, device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        update(states)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    out = subprocess.run(
        [sys.executable, __file__, "--child", method, str(n), str(b), str(bins)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(method: str, n: int, b: int, bins: int) -> None:
    """Peak RSS increase (MiB) of one update, measured in a fresh process (CPU, Linux)."""
    states = torch.rand(b, n)
    update, _ = make_runner(method, n, bins, "cpu")
    update(states[:2])  # load kernels / allocator pools
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the RSS high-water mark (VmHWM) to the current RSS
    base = _status_kib("VmRSS")
    update(states)
    print((_status_kib("VmHWM") - base) / 1024)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--neurons", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--bins", type=int, nargs="+", default=[50, 500])
    p.add_argument("--seconds", type=float, default=3.0, help="timing budget per method")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        m, n, b, bins = args.child
        child(m, int(n), int(b), int(bins))
        return

    torch.manual_seed(0)
    n, b = args.neurons, args.batch
    # States spread like a well-chosen alpha gives; equal for both methods.
    batches = [torch.rand(b, n, device=args.device) for _ in range(8)]
    # Both methods produce the same histogram up to float32 rounding of the dense bin edges
    # (checked here, so the race is fair).
    for bins in args.bins:
        up_s, get_s = make_runner("scatter", n, bins, args.device)
        up_d, get_d = make_runner("dense", n, bins, args.device)
        up_s(batches[0] * 0.999)
        up_d(batches[0] * 0.999)
        cs, cd = get_s().cpu(), get_d().cpu()
        assert cs.sum() == cd.sum() and (cs - cd).abs().sum() <= 1e-4 * cs.sum(), (
            "histograms differ"
        )

    print(
        f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"N={n} B={b}"
    )
    header = (
        f"{'bins':>5} {'scatter states/s':>17} {'dense states/s':>15} {'ratio':>7} "
        f"{'scatter peak MiB':>17} {'dense peak MiB':>15}"
    )
    print(header)
    rows = []
    for bins in args.bins:
        s = time_method("scatter", n, b, bins, args.device, args.seconds, batches)
        d = time_method("dense", n, b, bins, args.device, args.seconds, batches)
        ms = peak_memory_mib("scatter", n, b, bins, args.device)
        md = peak_memory_mib("dense", n, b, bins, args.device)
        rows.append(
            {
                "bins": bins,
                "scatter_states_per_s": s,
                "dense_states_per_s": d,
                "ratio": s / d,
                "scatter_peak_mib": ms,
                "dense_peak_mib": md,
            }
        )
        print(f"{bins:>5} {s:>17,.0f} {d:>15,.0f} {s / d:>6.1f}x {ms:>17.1f} {md:>15.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "neurons": n, "batch": b, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
