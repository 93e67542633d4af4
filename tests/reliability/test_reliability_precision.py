"""bf16-mixed precision on CPU gives the fp32 NAC-ME within a stated tolerance.

Under ``Trainer(precision="bf16-mixed")`` the validation forward runs under CPU autocast, so
the head's input and the logits are bfloat16 (8 significant bits); the states are computed
from them in float32. A state near a bin edge can then land in the neighbouring bin, and a
sample near the decision boundary can flip between correct and incorrect.

Measured on this MLP / digits setup (700 validation samples, trained 0-3 epochs, alpha 10-50,
bins 20-50, r 5-20, fast and general path): |NAC-ME(bf16) - NAC-ME(fp32)| was at most
2.2e-3 (median ~3e-4, on values 0.02-0.72), and at most 1 of 700 samples changed its
classification. The test asserts ``BF16_TOL = 5e-3`` absolute, and prints the difference.
"""

import pytest
import torch
from reliability_helpers import BINS, MLP, R, loader, make_trainer, split

from nac_lightning import NACMECallback

BF16_TOL = 5e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An MLP trained 3 epochs in fp32, and the validation set."""
    train, val = split(1000, 700)
    torch.manual_seed(0)
    model = MLP(lr=1e-2)
    make_trainer(tmp_path_factory.mktemp("fit"), [], max_epochs=3).fit(
        model, loader(train, 64, shuffle=True)
    )
    return model.state_dict(), val


@pytest.mark.parametrize("alpha,layer", [(50.0, None), (10.0, None), (50.0, "body")])
def test_bf16_mixed_matches_fp32_within_tolerance(tmp_path, trained, alpha, layer):
    state, val = trained
    model = MLP()
    model.load_state_dict(state)
    dtypes = []
    model.head.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        dtypes.clear()
        cb = NACMECallback(alpha=alpha, bins=BINS, r=R, layer=layer)
        t = make_trainer(tmp_path, [cb], precision=precision)
        t.validate(model, loader(val, 100), verbose=False)
        results[precision] = (cb.history[-1], set(dtypes))
    (fp32, fp32_dtypes), (bf16, bf16_dtypes) = results["32-true"], results["bf16-mixed"]
    assert fp32_dtypes == {torch.float32} and bf16_dtypes == {torch.bfloat16}  # really bf16
    diff = abs(bf16["nac_me"] - fp32["nac_me"])
    print(
        f"alpha={alpha} layer={layer}: fp32 {fp32['nac_me']:.5f} bf16 {bf16['nac_me']:.5f} "
        f"|diff| {diff:.2e}; n_samples {fp32['n_samples']:.0f} vs {bf16['n_samples']:.0f}"
    )
    assert 0.1 < fp32["nac_me"] < 1
    assert diff <= BF16_TOL
    assert abs(bf16["val_acc"] - fp32["val_acc"]) <= 2 / 700
    assert abs(bf16["n_samples"] - fp32["n_samples"]) <= 2
