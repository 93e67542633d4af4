"""What NACMECallback adds to a validation epoch, measured side by side in one run.

Variants, each timed as a full ``trainer.validate`` on the same model and data:

* ``none``:      validation without the callback (the baseline);
* ``fast``:      NACMECallback(layer=None): hooks the head, closed-form gradient, no extra pass;
* ``general``:   NACMECallback(layer="net.avgpool"): own forward + autograd per batch;
* ``separate``:  the official design: validation, then a separate pass over the same data with
  forward + autograd on the penultimate layer (timed as validation + that pass).

    python benchmarks/callback_overhead.py                    # CPU: ResNet-18, 64x64, 512 images
    python benchmarks/callback_overhead.py --accelerator gpu --images 8192 --size 224

Prints the median time of each variant over ``--repeats`` interleaved rounds and the ratio to
the baseline. Target: ``fast`` adds at most 5% to a validation epoch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings

import lightning.pytorch as pl
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from nac_lightning import NACMECallback, NeuronCoverage, kl_uniform_grad_autograd, neuron_states


class ResNetClassifier(pl.LightningModule):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None, num_classes=num_classes)

    def forward(self, x):
        return self.net(x)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        acc = (self(x).argmax(1) == y).float().mean()
        self.log("val_acc", acc, batch_size=len(y))


def separate_pass(model: ResNetClassifier, loader: DataLoader, device: torch.device) -> float:
    """The official design: a second pass with forward + autograd on the avgpool output."""
    model.eval()
    acts = {}
    handle = model.net.avgpool.register_forward_hook(lambda m, i, o: acts.__setitem__("z", o))
    metric = None
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            z = acts["z"]
            g = kl_uniform_grad_autograd(logits, z)
            s = neuron_states(z, g, 0.1)
            if metric is None:
                metric = NeuronCoverage(s.shape[1], bins=50, r=500).to(device)
            metric.update(s, mask=logits.argmax(1) == y)
        return float(metric.compute())
    finally:
        handle.remove()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    x = torch.randn(args.images, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.images,))
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch)
    model = ResNetClassifier()

    def trainer(callbacks):
        return pl.Trainer(
            accelerator=args.accelerator,
            devices=1,
            logger=False,
            callbacks=callbacks,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tempfile.mkdtemp(),  # the callback writes its history there
            precision=args.precision,
        )

    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # One callback per variant, reused across rounds as across the validations of a training run
    # (its first validation also detects the head: a one-off cost left to the warm-up round).
    # r=5 keeps the score meaningful on this small random set; the cost does not depend on r.
    callbacks = {
        "none": [],
        "separate": [],
        "fast": [NACMECallback(alpha=100.0, r=5)],
        "general": [NACMECallback(alpha=100.0, r=5, layer="net.avgpool")],
    }

    def run(variant: str) -> float:
        t = trainer(callbacks[variant])
        sync()
        start = time.perf_counter()
        t.validate(model, loader, verbose=False)
        if variant == "separate":
            with t.precision_plugin.forward_context():
                separate_pass(model, loader, device)
        sync()
        return time.perf_counter() - start

    variants = ["none", "fast", "general", "separate"]
    for v in variants:  # warm-up (allocator, cudnn autotune, first-call overheads)
        run(v)
    times = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:  # interleaved, so drift in machine load hits every variant alike
            times[v].append(run(v))
    med = {v: statistics.median(ts) for v, ts in times.items()}
    print(
        f"accelerator={args.accelerator} torch={torch.__version__} threads={torch.get_num_threads()}"
        f" ResNet-18 {args.size}x{args.size}, {args.images} images, batch {args.batch}, "
        f"precision {args.precision}, median of {args.repeats}"
    )
    print(f"{'variant':<10} {'seconds':>8} {'vs none':>8}")
    for v in variants:
        print(f"{v:<10} {med[v]:>8.3f} {med[v] / med['none']:>7.3f}x")
    overhead = med["fast"] / med["none"] - 1
    print(f"fast path overhead: {100 * overhead:+.1f}% (target <= +5%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "median_s": med, "times_s": times}, f, indent=1)


if __name__ == "__main__":
    main()
