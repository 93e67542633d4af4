"""Check NACMECallback on a CUDA GPU: same score as on the CPU, no host sync in the hot path.

    python benchmarks/cuda_check.py              # needs a CUDA GPU (device cuda)
    python benchmarks/cuda_check.py --device cpu # the same checks on the CPU (smoke test)

1. NeuronCoverage.update / neuron_states / kl_uniform_grad run with
   torch.cuda.set_sync_debug_mode("error"): any host-device synchronization raises.
2. trainer.validate with the callback (fast and general path) on the GPU gives the NAC-ME of
   the same model and data on the CPU (float32; tolerance printed).
3. bf16-mixed on the GPU vs fp32 (difference printed).
Exit code 1 on any failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from nac_lightning import NACMECallback, NeuronCoverage, kl_uniform_grad, neuron_states

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from callback_overhead import ResNetClassifier  # noqa: E402


def nac(model, loader, accelerator, layer=None, precision="32-true"):
    cb = NACMECallback(alpha=100.0, r=5, layer=layer)
    pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=[cb],
        precision=precision,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tempfile.mkdtemp(),  # the callback writes its history there
    ).validate(model, loader, verbose=False)
    return cb.history[-1]["nac_me"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    dev = torch.device(args.device)
    ok = True

    # 1. no host sync in the hot path
    logits = torch.randn(256, 10, device=dev)
    weight = torch.randn(10, 512, device=dev)
    z = torch.randn(256, 512, device=dev)
    metric = NeuronCoverage(512).to(dev)
    mask = logits.argmax(1) == 0
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            metric.update(neuron_states(z, kl_uniform_grad(logits, weight), 0.1), mask=mask)
        print("hot path without host sync: OK")
    except RuntimeError as e:
        print(f"hot path synchronizes with the host: FAIL ({e})")
        ok = False
    finally:
        if dev.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)

    # 2./3. the callback on the device vs on the CPU
    torch.manual_seed(0)
    x, y = torch.randn(512, 3, 64, 64), torch.randint(0, 10, (512,))
    loader = DataLoader(TensorDataset(x, y), batch_size=128)
    model = ResNetClassifier()
    accel = "gpu" if dev.type == "cuda" else "cpu"
    for layer in (None, "net.avgpool"):
        cpu = nac(model, loader, "cpu", layer)
        here = nac(model, loader, accel, layer)
        model.cpu()
        diff = abs(cpu - here)
        status = "OK" if diff < 2e-3 else "FAIL"
        ok &= status == "OK"
        print(
            f"layer={layer}: nac_me cpu={cpu:.6f} {args.device}={here:.6f} |diff|={diff:.2e} "
            f"(tolerance 2e-3: a state on a bin edge may move by float rounding) {status}"
        )
    bf16 = nac(model, loader, accel, None, precision="bf16-mixed")
    model.cpu()
    fp32 = nac(model, loader, "cpu", None)
    print(
        f"bf16-mixed {args.device}={bf16:.6f} vs fp32 cpu={fp32:.6f}: |diff|={abs(bf16 - fp32):.2e}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
